"""`Generator`: load a model directory, then `generate()` or `stream()` text.

A Generator holds only immutable state (session, tokenizer, manifest); every call
builds its own cache and batch, and onnxruntime sessions may be run from several
threads at once, so one Generator serves concurrent calls from many threads.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache, partial
from pathlib import Path
from typing import Any, overload

import numpy as np

from .checksums import verified_paths
from .constraints import Constraint
from .engine import Engine, Event, Request
from .errors import ContextLengthError, GenerationOptionError, ModelDirectoryError
from .grammar import Grammar, GrammarVocab, compile_constraint
from .hub import resolve_model_dir
from .logits import Processors
from .manifest import TOKENIZER_NAME, Manifest, read_manifest
from .option_registry import PROMPT
from .options import MAX_ROWS, GenerationConfig, as_sequence, require_utf8
from .precisions import BY_NAME, DEFAULT_PRECISION
from .prefix_cache import PrefixCache
from .session import Decoder, load_decoder
from .text import TextCodec

PREFIX_BLOCK_TOKENS = 16  # the prefix cache's block: vLLM's default size
# the prefix cache's size where it is on by default (prefix_cache_mb=None: a server's and a batch job's default):
# about 1,800 positions of the distil model (36 KB each), a few long shared prefixes or many short ones
DEFAULT_PREFIX_CACHE_MB = 64
COMPILED_GRAMMARS = 64  # structured-output constraints kept compiled (each a few ms to compile, small to hold)


@dataclass(frozen=True)
class Timings:
    """Wall-clock figures of one call (for the whole batch)."""

    time_to_first_token_s: float  # call start → first new token of any row
    decode_s: float  # first new token → last
    new_tokens: int  # summed over the returned sequences

    @property
    def decode_tokens_per_s(self) -> float:
        """New tokens after the first step, per second of decoding."""
        steps = self.new_tokens - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class GenerationResult:
    """One returned sequence. `token_ids` are the new ids, a final stop token included (as
    transformers returns it); `text` is their decoded text, specials and stop strings removed."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str  # "stop", "stop_string" or "length"
    prompt_tokens: int  # prompt length in tokens, the family's prefix included
    timings: Timings


class Generator:
    """Text generation with one variant of one exported model.

    Public: `load`; `generate`, `generate_ids` and `stream` (a call on an engine of its own); `config`,
    `encode` and `request` (build an engine request; `check_ids` for ids a caller gives), `run` and `engine`
    (drive requests on an engine sized for them); `new_engine` (the engine a front door keeps: a server, a
    batch job); `token_text` and `decode` (ids as text); the
    attributes `model_dir`, `manifest`, `precision` and `prefix_cache` (None: off; its `stats()`). `decoder`
    and `codec` are the model and tokenizer underneath, for measuring the model itself (benchmarks): a front
    door gets its engine from `new_engine` and its requests from `request`, never from these parts.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        codec: TextCodec,
        decoder: Decoder,
        precision: str,
        prefix_cache: PrefixCache | None = None,
    ):
        self.model_dir = model_dir
        self.manifest = manifest
        self.codec = codec
        self.decoder = decoder
        self.precision = precision
        self.prefix_cache = prefix_cache  # shared by every call (and thread, and engine) of this Generator

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        precision: str = DEFAULT_PRECISION,
        threads: int | None = None,
        prefix_cache_mb: float | None = 0,
    ) -> Generator:
        """`model`: a model directory, or a hub id (exported into the cache on first use);
        None: the default model. `precision`: "int8", "int4" or "fp32" (what the directory holds).
        `threads`: intra-op threads, at most the machine's CPUs (default: the cores this process
        may use). `prefix_cache_mb` > 0: keep the keys and values of recent prompts in that many
        MB, so a prompt that begins like an earlier one computes only the rest; 0: no prefix
        cache; None: DEFAULT_PREFIX_CACHE_MB where the precision allows one, else none
        (`prefix_cache_size`)."""
        check_threads(threads)
        cache_mb = prefix_cache_size(precision, prefix_cache_mb)
        model_dir = resolve_model_dir(model)
        manifest = read_manifest(model_dir)
        if precision not in manifest.variants:
            raise ModelDirectoryError(
                f"{model_dir} has no {precision!r} variant (it has {', '.join(manifest.variants)}); "
                f"pick one of those or re-export with `gpt2-onnx export SOURCE {model_dir} --quantize {precision} "
                "--force`"
            )
        variant = manifest.variants[precision]
        graph = variant.graph()
        tokenizer, graph_path, _ = verified_paths(
            model_dir,
            [
                (TOKENIZER_NAME, manifest.tokenizer_sha256),
                (graph.file, graph.sha256),
                (variant.data_file, variant.data_sha256),
            ],
        )
        codec = TextCodec.from_file(tokenizer, manifest.conventions)
        min_rows = BY_NAME[precision].min_call_rows if precision in BY_NAME else 1
        decoder = load_decoder(graph_path, manifest.architecture, threads, min_rows)
        token_bytes = manifest.architecture.kv_bytes_per_token
        cache = PrefixCache(PREFIX_BLOCK_TOKENS, int(cache_mb * 2**20), token_bytes) if cache_mb else None
        return cls(model_dir, manifest, codec, decoder, precision, cache)

    def config(self, **options: Any) -> GenerationConfig:
        """The settings a call with these options would use (manifest defaults filled in; an
        option given as None takes its default)."""
        return GenerationConfig.from_options(self.manifest.generation_defaults, options)

    # the shape of the result follows the call: one prompt → a result (a list of them with
    # num_return_sequences > 1); a list of prompts → one such entry per prompt
    @overload
    def generate(self, prompt: str, **options: Any) -> GenerationResult | list[GenerationResult]: ...

    @overload
    def generate(
        self, prompt: Sequence[str], **options: Any
    ) -> list[GenerationResult] | list[list[GenerationResult]]: ...

    def generate(self, prompt, **options):
        """Generate for one prompt (→ a GenerationResult, or a list of num_return_sequences)
        or a list of prompts (→ a list with one such entry per prompt)."""
        prompts, single = as_sequence(prompt)
        return self._generate([self.encode(p) for p in prompts], single, self.config(**options))

    def generate_ids(self, prompt_ids: Sequence[int] | Sequence[Sequence[int]], **options: Any):
        """As `generate`, from token ids used exactly as given (no prefix is added)."""
        single = bool(prompt_ids) and all(isinstance(t, (int, np.integer)) for t in prompt_ids)
        id_lists = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
        if not id_lists or not all(id_lists):
            raise GenerationOptionError("prompt_ids must be a non-empty list (or list of lists) of ids", option=PROMPT)
        return self._generate([self.check_ids(p, "prompt_ids") for p in id_lists], single, self.config(**options))

    def _generate(self, id_lists: list[list[int]], single: bool, config: GenerationConfig):
        n = config.num_return_sequences
        texts, tokens, reasons = {}, {}, {}

        def collector(i: int):
            def on_event(event: Event) -> None:
                key = (i, event.slot)
                texts[key] = texts.get(key, "") + event.text
                tokens.setdefault(key, []).extend(event.tokens)
                reasons[key] = event.finish_reason or reasons.get(key, "")

            return on_event

        requests = [self.request(ids, config, collector(i)) for i, ids in enumerate(id_lists)]
        start = time.perf_counter()
        self.run(requests)
        end = time.perf_counter()
        first = min((r.clock.first_token for r in requests if r.clock.first_token), default=end)
        timings = Timings(first - start, end - first, sum(map(len, tokens.values())))
        results = [
            [
                GenerationResult(
                    texts.get((i, j), ""),
                    tuple(tokens.get((i, j), ())),
                    reasons.get((i, j), ""),
                    len(r.prompt_ids),
                    timings,
                )
                for j in range(n)
            ]
            for i, r in enumerate(requests)
        ]
        grouped = [group[0] if n == 1 else group for group in results]
        return grouped[0] if single else grouped

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """Yield the text of one prompt's continuation piece by piece as it is generated;
        the pieces join to `generate(prompt, **same_options).text`."""
        if not isinstance(prompt, str):
            raise GenerationOptionError(f"stream() takes one prompt string, got {type(prompt).__name__}", option=PROMPT)
        config = self.config(**options)
        if config.num_beams > 1 or config.num_return_sequences > 1:
            raise GenerationOptionError(
                "stream() produces one sequence: use num_beams=1 and num_return_sequences=1, or generate()",
                option="num_beams" if config.num_beams > 1 else "num_return_sequences",
            )
        pieces: list[str] = []
        request = self.request(self.encode(prompt), config, lambda event: pieces.append(event.text))
        engine = self.engine([request])
        engine.submit(request)
        for _ in engine.steps():
            yield from filter(None, pieces)
            pieces.clear()

    def new_engine(
        self,
        max_rows: int,
        capacity: int | None = None,
        kv_cache_mb: float | None = None,
        prefill_chunk: int | None = None,
    ) -> Engine:
        """An engine over this model, for a front door that keeps one (a server, a batch job): `max_rows`
        rows decode at once, each of `capacity` positions (None: the model's whole context, so a request
        of any length may join); `kv_cache_mb` bounds the keys and values reserved at once (None: every
        row may hold `capacity` positions); `prefill_chunk`: prompt tokens run per step (None: a whole
        prompt in one step). It shares this Generator's prefix cache."""
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or not 1 <= max_rows <= MAX_ROWS:
            raise GenerationOptionError(
                f"max_rows must be an integer in [1, {MAX_ROWS}] (rows an engine decodes at once), got {max_rows!r}",
                option="max_rows",
            )
        architecture = self.manifest.architecture
        capacity = architecture.n_positions if capacity is None else capacity
        budget = None if kv_cache_mb is None else int(kv_cache_mb * 2**20 // architecture.kv_bytes_per_token)
        return Engine(
            self.decoder,
            self.codec,
            max_rows=max_rows,
            capacity=capacity,
            budget_positions=budget,
            prefill_chunk=prefill_chunk,
            prefix_cache=self.prefix_cache,
        )

    def engine(self, requests: Sequence[Request]) -> Engine:
        """An engine sized for these requests (what `generate` and `stream` decode on): their rows, at
        most MAX_ROWS (more prompts wait their turn), and their longest prompt + new tokens."""
        longest = max(len(r.prompt_ids) + r.config.max_new_tokens for r in requests)
        capacity = min(longest, self.manifest.architecture.n_positions)
        return self.new_engine(min(sum(r.rows for r in requests), MAX_ROWS), capacity)

    def run(self, requests: Sequence[Request]) -> None:
        """Decode the requests to the end in this thread, on an engine of their own."""
        engine = self.engine(requests)
        for request in requests:
            engine.submit(request)
        engine.run_until_done()

    def request(self, prompt_ids: list[int], config: GenerationConfig, on_event) -> Request:
        """An engine request: the prompt fitted to the context, stop and bad-word ids resolved, every id an
        option names (stop, bad words, logit bias) checked against the vocabulary, its own random
        generator (seeded: the same tokens in any batch)."""
        conventions = self.manifest.conventions
        ids = self._fit_context(prompt_ids, config)
        stop_ids = conventions.stop_token_ids if config.stop_token_ids is None else config.stop_token_ids
        vocab = self.manifest.architecture.vocab_size
        bad = tuple(
            seq for w in config.bad_words for seq in (self.codec.token_sequences(w) if isinstance(w, str) else [w])
        )
        biased = tuple(token for token, _ in config.logit_bias)
        for name, seq in (("stop_token_ids", stop_ids), ("logit_bias", biased), *(("bad_words", b) for b in bad)):
            if any(t >= vocab for t in seq):
                raise GenerationOptionError(f"{name} holds an id ≥ the vocabulary size {vocab}: {seq}", option=name)
        processors = Processors(config, tuple(stop_ids), tuple(b for b in bad if b))
        if config.prompt_lookup_num_tokens:
            _require_shape_exact(
                self.precision,
                "prompt_lookup_num_tokens",
                "prompt_lookup_num_tokens needs a precision whose logits for one token and for several agree",
            )
        rng = np.random.default_rng(config.seed)
        grammar = self._grammar(config, processors)
        return Request(ids, config, processors, rng, on_event, prefix_len=self._prefix_len(ids), grammar=grammar)

    def _grammar(self, config: GenerationConfig, processors: Processors) -> Grammar | None:
        """The call's constraint compiled for this model (None: no constraint). A constraint needs a stop
        token: a text that may end, or that no token can continue, ends with one; and one that writes no
        text (a stop token's text is the text's last, after the constraint's)."""
        if config.constraint is None:
            return None
        if not processors.stop_token_ids:
            raise GenerationOptionError(
                "a constraint needs a stop token to end its text; leave stop_token_ids as the model's",
                option="stop_token_ids",
            )
        writing = [t for t in processors.stop_token_ids if not self.codec.is_special(t)]
        if writing:
            raise GenerationOptionError(
                f"with a constraint, stop tokens must write no text (the text would end with theirs, outside the "
                f"constraint): {writing} write {self.codec.decode(writing)!r}; leave stop_token_ids as the model's "
                "or give special tokens only",
                option="stop_token_ids",
            )
        return self._compiled(config.constraint)

    @cached_property
    def _compiled(self) -> Callable[[Constraint], Grammar]:
        """`compile_constraint` for this model, the last COMPILED_GRAMMARS kept: a server is sent the same schema
        request after request, and a compiled grammar is only ever copied (`Grammar.matcher`)."""
        return lru_cache(maxsize=COMPILED_GRAMMARS)(partial(compile_constraint, vocab=self.grammar_vocab))

    @cached_property
    def grammar_vocab(self) -> GrammarVocab:
        """The vocabulary as the constraint library sees it: built on the first constrained call (about
        0.2 s for uer's 21,128 tokens), then shared by every call and thread."""
        conventions = self.manifest.conventions
        return GrammarVocab.build(self.codec, self.manifest.architecture.vocab_size, conventions.stop_token_ids)

    def prepare_constraints(self) -> None:
        """Build `grammar_vocab` now where the constraint library is installed (a server, at load: its first
        constrained request would build it in the event loop); without the library, nothing."""
        if importlib.util.find_spec("llguidance") is not None:
            _ = self.grammar_vocab

    def _prefix_len(self, ids: Sequence[int]) -> int:
        """How many of `ids` are the family's prompt prefix ([CLS]): none for ids given without it."""
        prefix = list(self.manifest.conventions.prompt_prefix_ids)
        return len(prefix) if list(ids[: len(prefix)]) == prefix else 0

    def token_text(self, token_id: int) -> str:
        """One token's text as an API shows it beside its log-probability: a WordPiece token as
        the vocabulary spells it (`##` marks a word's continuation), any other its decoded text."""
        return self.codec.piece(token_id) if self.codec.wordpiece else self.codec.decode([token_id])

    def check_ids(self, ids: Sequence[Any], what: str, option: str = PROMPT) -> list[int]:
        """`ids` as ints if each is a token id of this model's vocabulary; else a GenerationOptionError
        about `option` naming the first that is not (and the ids as `what`)."""
        vocab = self.manifest.architecture.vocab_size
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < vocab:
                raise GenerationOptionError(
                    f"{what} holds {t!r}, which is no token id of this model: ids are integers in [0, {vocab})",
                    option=option,
                )
        return [int(t) for t in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids as generated text reads (special tokens dropped, the family's spacing)."""
        return self.codec.decode(ids)

    def encode(self, prompt: str, add_special: bool = True) -> list[int]:
        """Prompt ids as generate() runs them: the family's prefix ([CLS]) first; without
        `add_special`, the text's own ids only (an empty text: none)."""
        require_utf8(prompt, "the prompt", PROMPT)
        if not add_special:
            return self.codec.encode(prompt)[len(self.manifest.conventions.prompt_prefix_ids) :]
        ids = self.codec.encode(prompt)
        # a family without a prompt prefix (English GPT-2) starts an empty prompt from its
        # end-of-text token, as transformers does with GPT-2's bos (= eos)
        return ids or list(self.manifest.conventions.stop_token_ids[:1])

    def _fit_context(self, ids: list[int], config: GenerationConfig) -> list[int]:
        """The prompt if it leaves the positions the call needs: all of max_new_tokens, or when the
        context slides one to start from (sliding makes room for the rest, as the engine's check
        expects). Otherwise, with truncate left, its prefix and the most recent tokens that leave
        them; else refused."""
        limit = self.manifest.architecture.n_positions
        sliding = config.context_overflow == "slide"
        needed = 1 if sliding else config.max_new_tokens
        if len(ids) + needed <= limit:
            return ids
        prefix = self._prefix_len(ids)
        room = limit - needed - prefix
        if config.truncate != "left" or room < 1:
            if sliding:
                problem = (
                    f"the prompt has {len(ids)} tokens: with the context sliding it may hold {limit - 1} of "
                    f"the {limit} positions of this model (one is for the first new token); shorten the prompt"
                )
            else:
                fixes = "shorten the prompt, lower max_new_tokens" if room >= 1 else "lower max_new_tokens"
                problem = (
                    f"the prompt has {len(ids)} tokens and max_new_tokens is {config.max_new_tokens}: "
                    f"{len(ids) + config.max_new_tokens} > {limit} positions of this model; {fixes}"
                )
            raise ContextLengthError(problem, option=PROMPT, remedy=("truncate", "left") if room >= 1 else None)
        return ids[:prefix] + ids[len(ids) - room :]


def check_threads(threads: int | None) -> None:
    """Refuse a thread count outside [1, the machine's CPUs]: onnxruntime starts every thread of
    its pool at load (100,000 of them take minutes), and threads beyond the CPUs only contend.
    All the machine's CPUs, not the affinity the default takes: a container or `taskset` may
    narrow that, and a count the machine could run is never refused."""
    most = os.cpu_count() or 1
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= most):
        raise GenerationOptionError(
            f"threads must be an int in [1, {most}] (this machine's CPUs; more threads only contend for them), "
            f"got {threads!r}",
            option="threads",
        )


def prefix_cache_size(precision: str, prefix_cache_mb: float | None) -> float:
    """The one rule for a prefix cache: the MB it holds at this precision (0: none). None: the
    default, DEFAULT_PREFIX_CACHE_MB where the precision's logits do not depend on how a prompt is
    split (`Precision.shape_exact`: the cache is exact there), else none; a number as given, one
    > 0 refused for a precision that is not shape-exact (the fix is named)."""
    if prefix_cache_mb is None:
        return DEFAULT_PREFIX_CACHE_MB if _shape_exact(precision) else 0
    if isinstance(prefix_cache_mb, bool) or not isinstance(prefix_cache_mb, (int, float)) or not prefix_cache_mb >= 0:
        raise GenerationOptionError(
            f"prefix_cache_mb must be a number ≥ 0 (or None: the default), got {prefix_cache_mb!r}",
            option="prefix_cache_mb",
        )
    if prefix_cache_mb:
        _require_shape_exact(
            precision,
            "prefix_cache_mb",
            "the prefix cache needs a precision whose logits do not depend on how a prompt is split",
            remedy=("prefix_cache_mb", 0),
        )
    return prefix_cache_mb


def _shape_exact(precision: str) -> bool:
    return precision not in BY_NAME or BY_NAME[precision].shape_exact


def _require_shape_exact(precision: str, option: str, needs: str, remedy: tuple[str, Any] | None = None) -> None:
    """Refuse a feature (`option`, `needs`: what it needs, as a sentence start) for a precision whose
    logits depend on how many tokens a call carries; `remedy`: the option and value that turn it off."""
    if not _shape_exact(precision):
        exact = ", ".join(p.name for p in BY_NAME.values() if p.shape_exact)
        raise GenerationOptionError(
            f"{needs} ({exact}); {precision} is not: load one of those", option=option, remedy=remedy
        )
