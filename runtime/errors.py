"""Exceptions raised by gpt2-onnx. Every message names the problem and the fix."""

from collections.abc import Callable


class Gpt2OnnxError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ModelDirectoryError(Gpt2OnnxError):
    """A model directory is missing, incomplete, corrupt or of an unknown format."""


class GenerationOptionError(Gpt2OnnxError, ValueError):
    """A generation option has the wrong name, type or range. `option`: the option it concerns
    (a GenerationConfig field, "prompt" for the prompt itself, or a load setting such as
    "threads"), so that a front door names its own field without reading the message.
    `remedy`: the option and value that would make the call work, when one would; the message
    names it as Python passes it, and a front door with another spelling (a command-line flag)
    words it with `spelled`. `limit`: the engine setting and value the request exceeds (e.g.
    ("max_rows", 8)), for a front door to name the flag that sets it."""

    def __init__(
        self,
        problem: str,
        *,
        option: str,
        remedy: tuple[str, object] | None = None,
        limit: tuple[str, int] | None = None,
    ):
        self.problem, self.option, self.remedy, self.limit = problem, option, remedy, limit
        super().__init__(self.spelled(lambda option, value: f"{option}={value!r}"))

    def spelled(self, spell: Callable[[str, str], str]) -> str:
        """The message, its remedy written by `spell(option, value)`."""
        return self.problem if self.remedy is None else f"{self.problem}, or pass {spell(*self.remedy)}"

    def __reduce__(self):  # pickled (Ray) with its keyword arguments, which `args` does not hold
        return _option_error, (type(self), self.problem, self.option, self.remedy, self.limit)


def _option_error(cls: type, problem: str, option: str, remedy, limit) -> GenerationOptionError:
    return cls(problem, option=option, remedy=remedy, limit=limit)


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
