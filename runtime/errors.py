"""Exceptions raised by gpt2-onnx. Every message names the problem and the fix."""


class Gpt2OnnxError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ModelDirectoryError(Gpt2OnnxError):
    """A model directory is missing, incomplete, corrupt or of an unknown format."""


class GenerationOptionError(Gpt2OnnxError, ValueError):
    """A generation option has the wrong name, type or range."""


class ContextLengthError(GenerationOptionError):
    """Prompt plus new tokens exceed the model's learned positions."""


class SourceError(Gpt2OnnxError):
    """A checkpoint source (local directory or hub id) cannot be used for export."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM, SIGINT or SIGHUP arrived during an export. A KeyboardInterrupt, so that it
    unwinds through every cleanup as Ctrl-C does; the CLI exits with 128 + `signum`."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
