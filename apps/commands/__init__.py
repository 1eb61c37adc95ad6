"""The `gpt2-onnx` sub-commands, one module each: a docstring, `HELP` (its line in `gpt2-onnx --help`),
`add_arguments(parser)` and `run(args) -> int`. `apps/cli.py` holds the table of them. A module
imports what is heavy (onnxruntime, fastapi, ray, torch) inside `run`, never at its top.
"""
