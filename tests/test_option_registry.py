"""The option table: every GenerationConfig option has one row, from which validation, the command
line's flags, the README's table and the errors' option names follow (issue 21 items 2, 3)."""

from __future__ import annotations

import ast
import pickle
from dataclasses import fields
from pathlib import Path

import pytest

from gpt2_onnx import ContextLengthError, GenerationOptionError
from gpt2_onnx.apps.cli import build_parser
from gpt2_onnx.apps.option_flags import options_given
from gpt2_onnx.option_registry import BY_NAME, OPTIONS, body_field, flag_of, markdown_table
from gpt2_onnx.options import GenerationConfig

ROOT = Path(__file__).resolve().parent.parent


def test_the_table_has_one_row_per_config_field_and_holds_no_defaults():
    assert [o.name for o in OPTIONS] == [f.name for f in fields(GenerationConfig)]
    assert not any(hasattr(o, "default") for o in OPTIONS)  # defaults live once: GenerationConfig's fields


def test_the_readme_holds_the_rendered_option_table():
    readme = (ROOT / "README.md").read_text()
    table = markdown_table()
    assert table in readme, "README.md's option table is stale: paste option_registry.markdown_table() into it"
    python_use = readme[readme.index("### Python") : readme.index("### Command line")]
    assert table in python_use and all(f"| `{o.name}` |" in table for o in OPTIONS)


# one bad value per row: each error names the option it concerns, whatever its message says
BAD = {
    "max_new_tokens": -1,
    "min_new_tokens": "2",
    "do_sample": 1.5,
    "temperature": -0.5,
    "top_k": 2.5,
    "top_p": 0,
    "min_p": 1.5,
    "repetition_penalty": 0,
    "no_repeat_ngram_size": -2,
    "presence_penalty": 3,
    "frequency_penalty": -3,
    "num_return_sequences": 0,
    "num_beams": 65,
    "length_penalty": "x",
    "early_stopping": "always",
    "stop": [""],
    "stop_token_ids": [-1],
    "bad_words": [[]],
    "logit_bias": {"5": 101},
    "constraint": "[0-9]+",  # a map of one form to its value, not a bare regex
    "seed": -1,
    "logprobs": -1,
    "truncate": "right",
    "context_overflow": "wrap",
    "context_keep": -1,
    "prompt_lookup_num_tokens": -1,
    "max_matching_ngram_size": 0,
}


@pytest.mark.parametrize("name", [o.name for o in OPTIONS])
def test_a_bad_value_is_refused_naming_its_option(name):
    with pytest.raises(GenerationOptionError) as info:
        GenerationConfig.from_options({}, {name: BAD[name]})
    assert info.value.option == name and str(info.value).startswith(name)
    copy = pickle.loads(pickle.dumps(info.value))  # errors cross process boundaries (Ray) whole
    assert (type(copy), copy.option, str(copy)) == (type(info.value), name, str(info.value))


def test_every_option_error_raised_in_the_runtime_passes_its_option():
    """The server names a body field from `error.option`, so every raise must give one (not a message to parse)."""
    missing = []
    for path in sorted((ROOT / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("GenerationOptionError", "ContextLengthError")
                and "option" not in {k.arg for k in node.keywords}
            ):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, missing
    assert issubclass(ContextLengthError, GenerationOptionError)


def test_front_doors_spell_options_by_the_table():
    assert (body_field("max_new_tokens"), body_field("num_return_sequences"), body_field("top_k")) == (
        "max_tokens",
        "n",
        "top_k",
    )
    assert body_field("num_beams") is None and body_field("prompt") == "prompt" and body_field("threads") is None
    assert (flag_of("bad_words"), flag_of("truncate"), flag_of("threads")) == ("--bad-word", "--truncate", "--threads")
    assert BY_NAME["early_stopping"].flag is None and BY_NAME["stop_token_ids"].body is None


def test_generate_and_batch_take_the_same_option_flags_with_the_same_help():
    flags = [
        "--max-new-tokens",
        "7",
        "--no-do-sample",
        "--temperature",
        "0.5",
        "--top-p",
        "0.9",
        "--stop",
        "。",
        "--stop",
        "！",
        "--bad-word",
        "坏",
        "--truncate",
        "left",
        "--context-overflow",
        "slide",
        "--seed",
        "3",
        "--regex",
        "[0-9]+",
    ]
    parser = build_parser()
    generate = parser.parse_args(["generate", "x", *flags])
    batch = parser.parse_args(["batch", "in.jsonl", "out.jsonl", *flags])
    expected = {
        "max_new_tokens": 7,
        "do_sample": False,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["。", "！"],
        "bad_words": ["坏"],
        "truncate": "left",
        "context_overflow": "slide",
        "seed": 3,
        "constraint": {"regex": "[0-9]+"},
    }
    assert options_given(generate) == options_given(batch) == expected
    GenerationConfig.from_options({}, expected)  # what the flags give, the runtime takes

    def option_help(command: str) -> dict[str, str]:
        sub = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == command)[1]
        return {a.dest: a.help.rsplit(" (", 1)[0] for a in sub._actions if a.dest in BY_NAME}

    on_command_line = {o.name for o in OPTIONS if o.flag is not None}
    assert option_help("generate") == option_help("batch") and set(option_help("generate")) == on_command_line


def test_the_readme_quickstart_and_the_precision_flag_say_which_variant_to_pick(capsys):
    from gpt2_onnx.precisions import PRECISIONS, guide

    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart") : readme.index("## Use")]
    assert guide() in quickstart, "README.md's quickstart lacks precisions.guide(): paste it in"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(p.pick_for and " ".join(p.pick_for.split()) in shown for p in PRECISIONS)
