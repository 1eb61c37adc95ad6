"""`gpt2-onnx generate [PROMPT]`: text from the model, streamed; without PROMPT, one prompt per
input line (the interactive prompt on a terminal). The generation options are the option
table's flags (`apps/option_flags.py`); onnxruntime loads when it runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from ..console import add_model_arguments, model_settings, write
from ..option_flags import add_option_flags, options_given

HELP = "generate text (streams; without PROMPT, one prompt per input line)"
TIMING_DECIMALS = 4  # JSON timings: seconds to 0.1 ms


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "prompt", nargs="?", help="the prompt; omit it to read one prompt per line (interactive on a terminal)"
    )
    add_model_arguments(parser, on_ray=False, prefix_cache_mb=0)  # as Generator.load: a call opts in
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object per result instead of streaming text"
    )
    add_option_flags(parser, "the model's")


def run(args: argparse.Namespace) -> int:
    from ..interactive import interactive_loop

    generator = model_settings(args).load()
    options = options_given(args)
    config = generator.config(**options)  # rejects bad options before reading any input
    # one sequence streams; beams and several sequences print when complete (manifest defaults count)
    stream = not args.json and config.num_beams == 1 and config.num_return_sequences == 1

    def answer(prompt: str) -> None:
        _run_prompt(generator, prompt, options, args.json, stream)

    if args.prompt is not None:
        answer(args.prompt)
        return 0

    def answer_line(line: str) -> None:
        # one rule on a terminal and from a file: a blank line (or only whitespace) is no prompt
        if line.strip():
            answer(line.rstrip("\n"))

    # undecodable bytes reach the prompt check (one line naming them) instead of failing in the reader
    sys.stdin.reconfigure(errors="surrogateescape")
    if sys.stdin.isatty():
        return interactive_loop(answer_line)
    for line in sys.stdin:  # a file or pipe: the first bad prompt ends the run
        answer_line(line)
    return 0


def _run_prompt(generator, prompt: str, options: dict[str, Any], as_json: bool, stream: bool) -> None:
    if stream:
        for piece in generator.stream(prompt, **options):
            write(piece)
        write("\n")
        return
    results = generator.generate(prompt, **options)
    for result in results if isinstance(results, list) else [results]:
        if as_json:
            record = {"prompt": prompt, **asdict(result)}
            timings = {**record["timings"], "decode_tokens_per_s": result.timings.decode_tokens_per_s}
            record["timings"] = {
                k: round(v, TIMING_DECIMALS) if isinstance(v, float) else v for k, v in timings.items()
            }
            write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            write(result.text + "\n")
