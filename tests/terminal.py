"""Programs on a pseudo-terminal, as a person runs them, and the screen they leave, drawn by pyte.

`screen` draws output on a pyte screen (a VT100 emulator) and returns its lines: what
a person would read, with redraws applied and escape codes gone. `Terminal` runs a
program on a pty of COLUMNS x LINES and collects everything it writes;
`terminal_env` is the environment a terminal emulator gives it. `FakeTerminal` is
output in memory that says it is a terminal, for programs run inside the tests.
Used by the unit tests of orderpipe.observe.terminal, the integration tests and
bench/panel_cost.py.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pyte

__all__ = ["COLUMNS", "ESC", "LINES", "FakeTerminal", "Terminal", "screen", "terminal_env"]

COLUMNS, LINES = 120, 40
ESC = b"\x1b"
# What a terminal's environment says; these decide between live redraws and plain lines.
_TERMINAL_VARIABLES = ("TERM", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


def screen(output: str | bytes, columns: int = COLUMNS, lines: int = LINES) -> list[str]:
    """The lines a terminal of that size shows once `output` was written to it, right-trimmed.

    A bare newline moves to the start of the next line, as a pty's line discipline
    makes it (output captured from a pty already has CR LF: the extra CR does nothing).
    """
    text = output.decode("utf-8", errors="replace") if isinstance(output, bytes) else output
    display = pyte.Screen(columns, lines)
    pyte.Stream(display).feed(text.replace("\n", "\r\n"))
    return [line.rstrip() for line in display.display]


class FakeTerminal(io.StringIO):
    """Output kept in memory that says it is a terminal, as a pty does."""

    def isatty(self) -> bool:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        return True


def terminal_env(env: Mapping[str, str], **terminal: str) -> dict[str, str]:
    """`env` as a terminal emulator would start a program: TERM=xterm-256color and `terminal`, nothing else of
    the caller's terminal settings (NO_COLOR, FORCE_COLOR, ...)."""
    cleaned = {k: v for k, v in env.items() if k not in _TERMINAL_VARIABLES}
    return {**cleaned, "TERM": "xterm-256color", **terminal}


class Terminal:
    """A program running on its own pseudo-terminal (stdin, stdout and stderr), its output collected."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        cwd: Path,
        columns: int = COLUMNS,
        lines: int = LINES,
    ) -> None:
        self.columns, self.lines = columns, lines
        master, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
        self.process = subprocess.Popen(
            list(argv), cwd=cwd, env=dict(env), stdin=follower, stdout=follower, stderr=follower, start_new_session=True
        )
        os.close(follower)
        self._master = master
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:  # EIO: the program and every copy of the pty's other end are gone
                break
            if not chunk:
                break
            with self._lock:
                self._output += chunk
        os.close(self._master)

    @property
    def output(self) -> bytes:
        """Everything written so far."""
        with self._lock:
            return bytes(self._output)

    def screen(self) -> list[str]:
        """The screen as it is now."""
        return screen(self.output, self.columns, self.lines)

    def wait_for(self, condition: str, timeout: float) -> list[str]:
        """Polls the screen until one of its lines holds `condition`; returns it. Fails if the program ends first."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.screen()
            if any(condition in line for line in lines):
                return lines
            ended = self.process.poll() is not None and not self._reader.is_alive()
            if ended or time.monotonic() > deadline:
                shown = "\n".join(lines)
                raise AssertionError(f"{condition!r} not on the screen ({'ended' if ended else 'timed out'}):\n{shown}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        """Waits for the program to end and for its last output; returns its exit code."""
        code = self.process.wait(timeout)
        self._reader.join(timeout)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
