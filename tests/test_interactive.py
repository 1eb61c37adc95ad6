"""`gpt2-onnx generate` on a terminal, driven through a pseudo-terminal: line editing and
history (readline), Ctrl-C cancelling the running answer, Ctrl-C twice or Ctrl-D quitting."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import sys
import time

import pytest
from slow_cli import cli_code

from gpt2_onnx import Generator

pytest.importorskip("readline")

ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")  # readline's cursor moves and bracketed-paste mode


def spawn(*args: str, slow: bool = False) -> tuple[int, int]:
    """The CLI as the session leader of a new pseudo-terminal: (pid, the terminal's master fd).
    It gets SIGINT's default, as a program started from a terminal does: a suite run as a
    background job (`pytest &` in a script) inherits SIGINT ignored, and Python keeps a signal
    ignored at start ignored (the convention that keeps a terminal's Ctrl-C from background jobs)."""
    code = cli_code(slow)
    pid, fd = pty.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.execve(sys.executable, [sys.executable, "-c", code, "generate", *args], {**os.environ, "TERM": "xterm"})
    return pid, fd


def read_until(fd: int, *markers: bytes, timeout: float = 120) -> bytes:
    """Terminal output (escape sequences removed) until each marker has appeared, in order;
    no markers: up to the end. One call for consecutive markers: a read returns whatever the
    terminal holds, so a later marker may arrive in the same chunk as an earlier one."""
    out, deadline = b"", time.monotonic() + timeout
    while not markers or not _in_order(ESCAPES.sub(b"", out), markers):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {markers!r} within {timeout} s; the terminal showed {out!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child has exited and closed the terminal
            chunk = b""
        if not chunk:
            if not markers:
                break
            raise AssertionError(f"the CLI ended before {markers!r}; the terminal showed {out!r}")
        out += chunk
    return ESCAPES.sub(b"", out)


def _in_order(text: bytes, markers: tuple[bytes, ...]) -> bool:
    position = 0
    for marker in markers:
        found = text.find(marker, position)
        if found < 0:
            return False
        position = found + len(marker)
    return True


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_ctrl_c_cancels_the_answer_and_returns_to_the_prompt(tiny_model):
    options = dict(max_new_tokens=60, min_new_tokens=60, do_sample=False)
    pid, fd = spawn(
        "--model", str(tiny_model), "--max-new-tokens", "60", "--min-new-tokens", "60", "--no-do-sample", slow=True
    )
    shown = read_until(fd, b"> ")
    os.write(fd, "这是\r".encode())
    echoed = read_until(fd, "这是\r\n".encode())  # may hold the first streamed piece(s) already
    shown += echoed
    answer = echoed.split("这是\r\n".encode(), 1)[1] or os.read(fd, 4096)  # the first streamed piece(s)
    os.write(fd, b"\x03")
    answer = ESCAPES.sub(b"", answer + read_until(fd, b"> ")).decode()
    shown += answer.encode()
    cancelled = answer.split("\r\n")[0].replace("^C", "")
    generator = Generator.load(tiny_model)
    full = generator.generate("这是", **options).text
    assert cancelled and full.startswith(cancelled) and len(cancelled) < len(full), (cancelled, full)

    os.write(fd, "今天\r".encode())
    second = read_until(fd, b"> ").decode()
    shown += second.encode()
    assert generator.generate("今天", **options).text + "\r\n" in second
    os.write(fd, b"\x04")  # Ctrl-D: quit
    shown += read_until(fd)
    assert exit_code(pid) == 0
    assert b"Traceback" not in shown


def test_line_editing_history_and_ctrl_c_twice(tiny_model):
    """Also when the suite runs as a background job: SIGINT ignored here, as a shell ignores it for `pytest &`."""
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pid, fd = spawn("--model", str(tiny_model), "--max-new-tokens", "3", "--json")
    finally:
        signal.signal(signal.SIGINT, ignored)
    shown = read_until(fd, b"> ")

    def prompt_of_answer(keys: bytes) -> str:
        nonlocal shown
        os.write(fd, keys)
        out = read_until(fd, b'"prompt"', b"> ")
        shown += out
        line = next(line for line in out.decode().split("\r\n") if '"prompt"' in line)
        return json.loads(line[line.index("{") :])["prompt"]

    assert prompt_of_answer(b"ab\x1b[Dc\r") == "acb"  # left arrow moves the cursor, inserts no ^[[D
    assert prompt_of_answer(b"\x1b[A\r") == "acb"  # up arrow recalls the previous prompt
    os.write(fd, b" \r")  # a blank line is no prompt: the prompt comes back with no answer
    blank = read_until(fd, b"> ")
    shown += blank
    assert b'"prompt"' not in blank
    # readline shows the prompt before it waits for keys: a Ctrl-C in between would wait for
    # the next key, as no typist is fast enough to notice, so the test pauses as a person would
    time.sleep(1)
    os.write(fd, b"\x03")
    shown += read_until(fd, b"Ctrl-C again", b"> ")
    time.sleep(1)
    os.write(fd, b"\x03")
    shown += read_until(fd)
    assert exit_code(pid) == 0
    assert b"Traceback" not in shown
