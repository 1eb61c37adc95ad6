"""`gpt2-onnx` in a child process whose engine sleeps 20 ms per step, so that a Ctrl-C lands
inside an answer and server requests surely overlap (tests time nothing with it)."""

SLOW_STEP = """
import time
from gpt2_onnx.engine import Engine
real_step = Engine.step
def slow_step(self):
    time.sleep(0.02)
    return real_step(self)
Engine.step = slow_step
"""


def cli_code(slow: bool) -> str:
    """`python -c` code that runs the CLI with the process's argv, slowed when asked."""
    return (SLOW_STEP if slow else "") + "import sys\nfrom gpt2_onnx.apps.cli import main\nsys.exit(main(sys.argv[1:]))"
