"""Structured output (the `constraint` option, llguidance): every output satisfies its constraint, judged on the
text the user receives by a checker that knows nothing of our vocabulary (llguidance over single bytes), and by
json / jsonschema / re; cut outputs are valid prefixes; batches, streams, n and speculation agree with a row alone;
bad constraints are one-line errors (the server: tests/test_server.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from gpt2_onnx import GenerationOptionError
from gpt2_onnx.apps.cli import main
from gpt2_onnx.constraints import Constraint

llg = pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

PROMPT = "这是很久之前的事情了"
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "tags": {"type": "array", "items": {"enum": ["a", "bb", "中文"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
REGEX = "[0-9]{2,4}-[a-z]+( [a-z]+){0,2}"
CHOICES = ["yes", "no way", "也许", "hello world"]
LARK = 'start: "hello" " " WORD | "abc" NUM\nWORD: /[a-z]+/\nNUM: /[0-9]+/'
CONSTRAINTS = {
    "json_schema": ({"json_schema": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA) is None),
    "json_object": ({"json_object": True}, lambda t: isinstance(json.loads(t), dict)),
    "regex": ({"regex": REGEX}, lambda t: re.fullmatch(REGEX, t) is not None),
    "choice": ({"choice": CHOICES}, lambda t: t in CHOICES),
    "grammar": ({"grammar": LARK}, lambda t: re.fullmatch("hello [a-z]+|abc[0-9]+", t) is not None),
}


class _Bytes:
    """A tokenizer of one token per byte (and an EOS): the checker reads the text, not our tokens."""

    tokens = [bytes([b]) for b in range(256)] + [b"<eos>"]
    special_token_ids = [256]
    eos_token_id, bos_token_id = 256, None

    def __call__(self, text):
        return list(text if isinstance(text, bytes) else text.encode())


BYTES = llg.LLTokenizer(llg.TokenizerWrapper(_Bytes()), n_vocab=257, eos_token=256)


def verdict(constraint: dict, text: str) -> str:
    """'complete' (the text satisfies the constraint), 'prefix' (some text could follow it to one that does) or
    'invalid', by llguidance reading the text's bytes."""
    matcher = llg.LLMatcher(BYTES, Constraint.of(constraint).grammar(), log_level=0)
    for byte in text.encode():
        if not matcher.consume_token(byte):
            return "invalid"
    return "complete" if matcher.is_accepting() else "prefix"


def check(kind: str, text: str, reason: str) -> None:
    """A finished text satisfies its constraint (and json / jsonschema / re agree); a cut one is a valid prefix."""
    constraint, satisfied = CONSTRAINTS[kind]
    found = verdict(constraint, text)
    if reason == "stop":
        assert found == "complete" and satisfied(text), (kind, text)
    else:
        assert reason == "length" and found in ("complete", "prefix"), (kind, text, reason)


def run_seeds(gen, kind: str, seeds: range, max_new_tokens) -> list[tuple[str, str, tuple[int, ...]]]:
    """(text, finish reason, ids) of one sampled sequence per seed (temperature 1, every token a candidate),
    decoded together as one batch: each request its own seed and max_new_tokens."""
    out: dict[int, list] = {s: ["", None, []] for s in seeds}

    def on_event(seed):
        def record(event):
            out[seed][0] += event.text
            out[seed][1] = event.finish_reason or out[seed][1]
            out[seed][2] += event.tokens

        return record

    requests = [
        gen.request(
            gen.encode(PROMPT),
            gen.config(
                constraint=CONSTRAINTS[kind][0],
                do_sample=True,
                temperature=1.0,
                top_k=0,
                seed=s,
                max_new_tokens=max_new_tokens(s),
            ),
            on_event(s),
        )
        for s in seeds
    ]
    gen.run(requests)
    return [(text, reason, tuple(ids)) for text, reason, ids in out.values()]


@pytest.fixture(scope="module")
def gen(tiny_model, generators):
    return generators(tiny_model, "fp32")


@pytest.mark.parametrize("kind", list(CONSTRAINTS))
def test_fifty_seeds_satisfy_their_constraint_or_are_cut_as_valid_prefixes(gen, kind):
    results = run_seeds(gen, kind, range(50), lambda s: 1 + 3 * (s % 10))  # 1..28 tokens: some cut, most not
    for text, reason, _ in results:
        check(kind, text, reason)
    assert {r for _, r, _ in results} == {"stop", "length"}  # both cases were tested


@pytest.mark.parametrize("kind", list(CONSTRAINTS))
def test_full_size_random_weights_fifty_seeds(full_model, generators, kind):
    """The issue's guarantee, at full size (every token plausible) on the real layout's 21,128-token vocabulary:
    finished texts satisfy it, and texts max_new_tokens cuts (1..37 tokens: both happen for every form) are
    valid prefixes with finish_reason length."""
    results = run_seeds(generators(full_model, "int8"), kind, range(50), lambda s: 1 + 4 * (s % 10))
    for text, reason, _ in results:
        check(kind, text, reason)
    assert {r for _, r, _ in results} == {"stop", "length"}


@pytest.mark.parametrize("kind", ["json_schema", "regex"])
def test_a_byte_level_vocabulary_is_read_from_its_tokenizer(bpe_model, generators, kind):
    """English GPT-2: each token appends its own bytes, so llguidance reads the tokenizer itself."""
    for text, reason, _ in run_seeds(generators(bpe_model, "fp32"), kind, range(20), lambda s: 1 + 3 * (s % 10)):
        check(kind, text, reason)


def test_a_latin_word_after_a_word_gets_its_space_and_the_constraint_sees_it(gen):
    """The twins: after "hello" the grammar needs " " + a word, which only a word-starting token can write
    (TextAssembler puts the space); greedy and sampled outputs alike read "hello <word>"."""
    grammar = {"grammar": 'start: "hello" " " /[a-z]+/ " " /[a-z]+/'}
    for seed in range(10):
        r = gen.generate(PROMPT, constraint=grammar, do_sample=True, top_k=0, seed=seed, max_new_tokens=40)
        assert r.finish_reason == "length" or re.fullmatch("hello [a-z]+ [a-z]+", r.text), r.text
        assert verdict(grammar, r.text) != "invalid"


def test_a_text_only_a_spaceless_word_would_continue_ends_as_a_valid_prefix(gen):
    """After "a" (a word character) llguidance allows "A" as its own token, but that token appends " A" there and
    the tiny vocabulary has no "##A": no token continues the text, so it ends as a valid prefix (it used to leave
    every score at -inf: sampling raised, greedy wrote [PAD])."""
    constraint = {"regex": "a[A-Z]"}
    for options in (dict(do_sample=False), dict(do_sample=True, top_k=0, seed=1)):
        r = gen.generate(PROMPT, constraint=constraint, max_new_tokens=5, **options)
        assert (r.text, r.finish_reason) == ("a", "length") and verdict(constraint, r.text) == "prefix"
    with pytest.raises(GenerationOptionError, match="no text this model's vocabulary can write"):
        gen.generate(PROMPT, constraint={"regex": " a"}, max_new_tokens=2)  # only a space-led twin begins it


def test_the_text_starts_empty_whatever_the_prompt_ends_with(gen):
    """The text returned is the generated text alone (echo only prepends the prompt's), and it starts without a
    word before it: after a prompt ending in a Latin word the first word-starting token writes no space, and the
    constraint sees no space either (a regex with no leading space is met, one needing it is refused)."""
    constraint = {"regex": "[a-z]+( [a-z]+)*"}
    for seed in range(5):
        r = gen.generate("abc def", constraint=constraint, do_sample=True, top_k=0, seed=seed, max_new_tokens=12)
        assert r.text == gen.decode(r.token_ids) and verdict(constraint, r.text) != "invalid", r.text
        assert r.text[:1].isalpha() or r.text == "", r.text
    with pytest.raises(GenerationOptionError, match="no text"):
        gen.generate("abc def", constraint={"regex": " [a-z]+"}, max_new_tokens=2)


def test_a_sliding_context_keeps_the_constraint(gen):
    """Past the tiny model's 128 positions (the window is re-encoded; the matcher follows the text, not the cache)."""
    constraint = {"regex": "[0-9]+( [0-9]+)*"}
    r = gen.generate(
        PROMPT, constraint=constraint, context_overflow="slide", min_new_tokens=200, max_new_tokens=200, seed=0
    )
    assert len(r.token_ids) == 200 and r.finish_reason == "length"
    assert verdict(constraint, r.text) != "invalid" and re.fullmatch("[0-9]+( [0-9]+)*", r.text), r.text


def test_a_grammar_cannot_turn_forcing_back_on(gen):
    """llguidance's forced-text shortcut would allow only its own tokenization, wrong for WordPiece: a grammar's
    own `%llguidance` directive does not bring it back."""
    grammar = {"grammar": 'start: "hello world" | "hello there"\n%llguidance {"no_forcing": false}'}
    for seed in range(20):
        r = gen.generate(PROMPT, constraint=grammar, do_sample=True, top_k=0, seed=seed)
        assert r.text in ("hello world", "hello there") and r.finish_reason == "stop", r.text


def test_a_constraint_is_compiled_once_for_the_requests_that_repeat_it(gen):
    """A server is sent the same schema request after request: the second compiles nothing."""
    constraint = {"regex": "[0-9]{2,5}"}
    compiled = gen._compiled.cache_info().hits
    texts = [gen.generate("这是", max_new_tokens=6, do_sample=False, constraint=constraint).text for _ in range(2)]
    assert texts[0] == texts[1] and gen._compiled.cache_info().hits == compiled + 1


def test_a_batch_of_different_constraints_equals_each_row_alone(gen):
    kinds = list(CONSTRAINTS)
    configs = [gen.config(constraint=CONSTRAINTS[k][0], do_sample=False, max_new_tokens=12) for k in kinds]
    configs.append(gen.config(do_sample=False, max_new_tokens=12))  # and a row without one
    together: dict[int, list[int]] = {}
    requests = [
        gen.request(gen.encode(PROMPT), c, lambda e, i=i: together.setdefault(i, []).extend(e.tokens))
        for i, c in enumerate(configs)
    ]
    gen.run(requests)
    for i, c in enumerate(configs):
        alone = gen.generate(PROMPT, **{f: getattr(c, f) for f in ("constraint", "do_sample", "max_new_tokens")})
        assert tuple(together[i]) == alone.token_ids
    assert together[len(kinds)] != together[kinds.index("regex")]  # the constraint changed the output


def test_stream_pieces_join_to_the_generated_text(gen):
    options = dict(constraint={"json_schema": SCHEMA}, do_sample=True, seed=3, max_new_tokens=30)
    assert "".join(gen.stream(PROMPT, **options)) == gen.generate(PROMPT, **options).text


def test_n_sequences_each_satisfy_it_and_stop_strings_cut_to_a_prefix(gen):
    results = gen.generate(
        PROMPT, constraint=CONSTRAINTS["regex"][0], do_sample=True, seed=1, num_return_sequences=6, max_new_tokens=20
    )
    assert len({r.text for r in results}) > 1
    for r in results:
        check("regex", r.text, r.finish_reason)
    cut = gen.generate(PROMPT, constraint={"choice": ["hello world"]}, stop=["wor"], do_sample=False)
    assert cut.text == "hello " and cut.finish_reason == "stop_string"


def test_speculation_with_a_constraint_gives_the_plain_output(gen):
    options = dict(constraint={"regex": "([0-9][0-9]|[a-z] )+"}, do_sample=False, max_new_tokens=40)
    plain = gen.generate(PROMPT, **options)
    assert gen.generate(PROMPT, prompt_lookup_num_tokens=3, **options).token_ids == plain.token_ids
    sampled = gen.generate(PROMPT, prompt_lookup_num_tokens=3, **{**options, "do_sample": True, "seed": 2})
    found = verdict(options["constraint"], sampled.text)
    assert found == "complete" if sampled.finish_reason == "stop" else found in ("complete", "prefix"), sampled.text


def test_the_constraint_wins_over_a_ban_that_leaves_nothing(gen):
    """min_new_tokens bans the stop token; once the choice is complete only the stop token is allowed."""
    r = gen.generate(PROMPT, constraint={"choice": ["yes"]}, min_new_tokens=5, do_sample=False)
    assert r.text == "yes" and r.finish_reason == "stop"


def test_a_complete_text_stops_at_once_and_logprobs_are_the_models(gen):
    events = []
    config = gen.config(constraint={"choice": ["hello world"]}, do_sample=False, logprobs=2, max_new_tokens=20)
    gen.run([gen.request(gen.encode(PROMPT), config, events.append)])
    assert "".join(e.text for e in events) == "hello world" and events[-1].finish_reason == "stop"
    unconstrained = []
    gen.run([gen.request(gen.encode(PROMPT), gen.config(do_sample=False, logprobs=2), unconstrained.append)])
    # the first step's top tokens are the model's own, whatever the mask allowed
    assert events[0].logprobs[0][1] == unconstrained[0].logprobs[0][1]


@pytest.mark.parametrize(
    "constraint, option, said",
    [
        ({"regex": "("}, "constraint.regex", "unclosed group"),
        ({"json_schema": {"type": "objekt"}}, "constraint.json_schema", "objekt"),
        ({"json_schema": "{not json"}, "constraint.json_schema", "not JSON"),
        ({"json_schema": {"type": "object", "x-guidance": 5}}, "constraint.json_schema", "must be an object"),
        ({"grammar": "start: foo"}, "constraint.grammar", "foo"),
        ({"regex": "Ω+"}, "constraint.regex", "no text this model's vocabulary can write"),
        ({"regex": " [a-z]+"}, "constraint.regex", "make the regex begin with text the vocabulary has"),
        ({"choice": []}, "constraint.choice", "non-empty list"),
        ({"json_object": False}, "constraint.json_object", "True"),
        ({"regex": "a", "choice": ["b"]}, "constraint", "one form"),
    ],
)
def test_bad_constraints_are_one_line_errors_naming_their_form(gen, constraint, option, said):
    with pytest.raises(GenerationOptionError) as info:
        gen.generate(PROMPT, constraint=constraint, max_new_tokens=2)
    assert info.value.option == option and said in str(info.value) and "\n" not in str(info.value)


def test_stop_tokens_that_write_text_are_refused_with_a_constraint(gen):
    """A stop token's text ends the text ("12，" for [0-9]+ with "，" a stop token): outside the constraint."""
    comma = gen.encode("，", add_special=False)[0]
    sep = gen.manifest.conventions.stop_token_ids[0]
    for stop_ids, said in (([comma, sep], "must write no text"), ([], "needs a stop token")):
        with pytest.raises(GenerationOptionError, match=said) as info:
            gen.generate(PROMPT, constraint={"regex": "[0-9]+"}, stop_token_ids=stop_ids, max_new_tokens=4)
        assert info.value.option == "stop_token_ids" and "\n" not in str(info.value)
    r = gen.generate(PROMPT, constraint={"regex": "[0-9]+"}, stop_token_ids=[sep], seed=1, max_new_tokens=10)
    check_text = verdict({"regex": "[0-9]+"}, r.text)
    assert check_text == "complete" if r.finish_reason == "stop" else check_text in ("complete", "prefix")


def test_beams_are_refused_with_a_constraint(gen):
    with pytest.raises(GenerationOptionError, match="beam search") as info:
        gen.generate(PROMPT, constraint={"regex": "a"}, num_beams=2, do_sample=False)
    assert info.value.option == "constraint.regex"


def test_the_command_line_flags(tiny_model, tmp_path, capsys):
    flags = ["generate", PROMPT, "--model", str(tiny_model), "--precision", "fp32", "--max-new-tokens", "30"]
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    for extra, kind in [
        (["--json-schema", str(schema)], "json_schema"),
        (["--json-schema", json.dumps(SCHEMA)], "json_schema"),
        (["--json-object"], "json_object"),
        (["--regex", REGEX], "regex"),
        ([arg for c in CHOICES for arg in ("--choice", c)], "choice"),
        (["--grammar", LARK], "grammar"),
    ]:
        capsys.readouterr()
        assert main([*flags, *extra, "--seed", "1", "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        check(kind, record["text"], record["finish_reason"])
    for extra, code, said in [
        (["--regex", "("], 1, "unclosed group"),
        (["--regex", "Ω+"], 1, "no text"),
        (["--json-schema", "{oops"], 2, "not JSON"),
        (["--regex", "a", "--choice", "b"], 2, "not allowed with"),
        (["--regex", "a", "--num-beams", "2", "--no-do-sample"], 1, "beam search"),
    ]:
        capsys.readouterr()
        try:
            returned = main([*flags, *extra])
        except SystemExit as e:  # a usage error: argparse exits
            returned = e.code
        assert returned == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("gpt2-onnx: error:") and said in err, err


def test_batch_rows_carry_their_own_constraint(gen, tmp_path):
    from gpt2_onnx.apps.batch import run_local

    rows = [
        {"prompt": PROMPT, "constraint": {"regex": "[0-9]{3}"}, "do_sample": False},
        {"prompt": PROMPT, "constraint": {"choice": ["yes", "no"]}, "do_sample": False},
        {"prompt": PROMPT, "constraint": {"regex": "("}},
    ]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    run_local(gen, source, target, {}, max_running=4, progress=False)
    out = {row["line"]: row for row in map(json.loads, target.read_text().splitlines())}  # as rows finish
    assert re.fullmatch("[0-9]{3}", out[1]["text"]) and out[2]["text"] in ("yes", "no")
    assert "regex" in out[3]["error"]


def test_the_runtime_imports_without_llguidance_and_says_how_to_install_it():
    code = (
        "import sys; sys.modules['llguidance'] = None\n"
        "from gpt2_onnx import Generator, GenerationConfig\n"
        "from gpt2_onnx.constraints import Constraint\n"
        "try:\n    Constraint.of({'regex': 'a'}).grammar()\n"
        "except Exception as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "constraints (structured output) need llguidance: pip install 'gpt2-onnx[structured]'"


@pytest.mark.parametrize("model", ["tiny_model", pytest.param("full_model", marks=pytest.mark.slow)])
def test_llguidance_sees_what_the_text_assembler_appends(request, generators, model):
    """Every token of the vocabulary (uer's layout at full size), after a word character and after punctuation:
    the bytes llguidance holds for it (or for its twin) are the text TextAssembler shows, specials write nothing,
    and the row's W after it is whether the next word-starting piece gets a space."""
    gen = generators(request.getfixturevalue(model), "fp32" if model == "tiny_model" else "int8")
    vocab, codec = gen.grammar_vocab, gen.codec
    word, mark = gen.encode("a", add_special=False)[0], gen.encode("，", add_special=False)[0]
    for token in range(vocab.size):
        if codec.is_special(token):
            assert vocab.tokenizer.is_special_token(token) and vocab.ends_word[token] == -1
            continue
        for before, after_word in ((word, True), (mark, False)):
            assembler = codec.assembler()
            assembler.push(before)
            shown = assembler.push(token)
            twin = int(vocab.twin_of[token])
            assert vocab.tokenizer.decode_str([twin if after_word and twin >= 0 else token]) == shown, token
            assert assembler.push(word).startswith(" ") == bool(vocab.ends_word[token]), token
    assert len(vocab.twins) > 0 and vocab.n_ids == vocab.size + len(vocab.twins)


def test_openai_batch_lines_take_the_servers_structured_output_fields(gen, tmp_path):
    from gpt2_onnx.apps.batch import run_local

    bodies = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}},
        {"guided_choice": CHOICES},
        {"guided_regex": "("},
    ]
    lines = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "tiny", "prompt": PROMPT, "max_tokens": 40, "temperature": 0, **body},
        }
        for i, body in enumerate(bodies)
    ]
    source, target = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    run_local(gen, source, target, {}, max_running=4, progress=False)
    out = {row["custom_id"]: row["response"] for row in map(json.loads, target.read_text().splitlines())}
    for custom_id, kind in (("r0", "json_schema"), ("r1", "choice")):
        choice = out[custom_id]["body"]["choices"][0]
        check(kind, choice["text"], choice["finish_reason"])
    assert out["r2"]["status_code"] == 400 and out["r2"]["body"]["error"]["param"] == "guided_regex"
