"""producer.py and consumer.py started as a user starts them, and explained when they die.

No supervisor: every exit other than 0 and every death by a signal is the run's
failure, told in full. Each program runs with PYTHONFAULTHANDLER=1 (on a fatal
signal Python writes every thread's traceback to stderr) and with no limit on core
dumps (`ulimit -c unlimited` in the shell that execs it, so the pid is the
program's). While the cluster tests run, kernel.core_pattern sends cores to
.cache/cores/ (`core_dumps_in`, a session fixture in conftest.py). A program killed
by a signal is reported with gdb's backtrace of every thread of its core, run on the
real Python binary, and the faulthandler lines of its stderr; without gdb, with the
core's path.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.integration.helpers import Output, Pipeline

__all__ = ["CORES", "PYTHON", "Program", "core_dumps_in", "crash_report", "find_core"]

ROOT = Path(__file__).resolve().parents[2]
CORES = ROOT / ".cache" / "cores"
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
# The binary the venv's python links to: what gdb needs to read a core of it.
PYTHON = os.path.realpath(sys.executable)
GDB_TIMEOUT_S = 300
# Raise the soft limit to the hard one if unlimited is refused (not root, say); then exec the program.
UNLIMITED_CORES = 'ulimit -c unlimited 2>/dev/null || ulimit -c "$(ulimit -H -c)"; exec "$@"'


class Program:
    """One run of producer.py or consumer.py with this pipeline's settings; its output is read in the background."""

    def __init__(self, pipeline: Pipeline, script: str, *args: str) -> None:
        self.label = " ".join((script, *args))
        process = subprocess.Popen(
            ["/bin/sh", "-c", UNLIMITED_CORES, "sh", sys.executable, script, *args],
            cwd=ROOT,
            env={**os.environ, **pipeline.env, "PYTHONFAULTHANDLER": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output = Output(process)
        self.process = process
        self.killed_on_purpose = False
        self._crash: str | None = None  # the crash report, made once (gdb takes a while)

    @property
    def pid(self) -> int:
        return self.process.pid

    def errors(self, last: int = 5000) -> str:
        return "".join(self.output.errors)[-last:]

    def finish(self, timeout: float) -> int:
        """Waits for the program to end (killing it after `timeout` seconds); its return code."""
        try:
            self.output.text(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output.text(30)
            self.output.errors.append(f"\n(the test killed it: still running after {timeout:g}s)\n")
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a machine lost would: not a failure of the program (unless it had already ended)."""
        self.killed_on_purpose = self.process.poll() is None
        self.process.send_signal(signal.SIGKILL)

    def stop_if_running(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def failure(self) -> str | None:
        """None when it exited 0 (or was killed on purpose); else how it ended, a crash with its backtrace."""
        code = self.process.poll()
        if code == 0 or self.killed_on_purpose:
            return None
        if code is None:
            return f"{self.label} (pid {self.pid}) is still running"
        if code < 0:
            if self._crash is None:
                stderr = "".join(self.output.errors)
                self._crash = crash_report(self.label, self.pid, signal.Signals(-code).name, stderr)
            return self._crash
        said = self.errors().strip().splitlines() or ["(nothing on stderr)"]
        return f"{self.label} (pid {self.pid}) exited with code {code}: {said[-1]}"


def find_core(pid: int) -> Path | None:
    """The core dump of process `pid`: .cache/cores/core.<thread name>.<pid>, or the kernel's default `core` files."""
    found = sorted(CORES.glob(f"core.*.{pid}")) if CORES.is_dir() else []
    found += [path for path in (ROOT / f"core.{pid}", ROOT / "core") if path.is_file()]
    return found[0] if found else None


def _faulthandler_lines(stderr: str) -> str:
    start = stderr.find("Fatal Python error")
    return stderr[start:] if start >= 0 else ""


def crash_report(label: str, pid: int, signal_name: str, stderr: str) -> str:
    """What is known of a program killed by a signal: faulthandler's tracebacks, gdb's backtrace of its core."""
    lines = [f"{label} (pid {pid}) was killed by {signal_name}"]
    fault = _faulthandler_lines(stderr)
    if fault:
        lines += ["--- faulthandler output from its stderr:", fault.rstrip()]
    else:
        lines += ["--- no faulthandler output on its stderr; its last lines:", stderr[-3000:].rstrip()]
    core = find_core(pid)
    if core is None:
        pattern = CORE_PATTERN.read_text().strip() if CORE_PATTERN.exists() else "unknown"
        lines.append(f"--- no core dump of pid {pid} found (kernel.core_pattern is {pattern!r})")
    elif shutil.which("gdb") is None:
        lines.append(f"--- gdb is not installed, so no backtrace: the core is {core} (python: {PYTHON})")
    else:
        lines.append(f"--- gdb -batch -ex 'thread apply all bt' {PYTHON} {core}")
        lines.append(gdb_backtrace(core))
    return "\n".join(lines)


def gdb_backtrace(core: Path) -> str:
    try:
        done = subprocess.run(
            ["gdb", "-batch", "-ex", "thread apply all bt", PYTHON, str(core)],
            capture_output=True,
            text=True,
            timeout=GDB_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"(gdb did not finish within {GDB_TIMEOUT_S}s; the core is {core})"
    return (done.stdout + done.stderr).rstrip()


@contextmanager
def core_dumps_in(directory: Path = CORES) -> Iterator[str]:
    """Points kernel.core_pattern at `directory`/core.%e.%p for the block, then restores it; yields what it did.

    Needs root and a writable /proc/sys; elsewhere nothing changes and the
    sentence says where cores go instead.
    """
    try:
        previous = CORE_PATTERN.read_text()
    except OSError as exc:
        yield f"kernel.core_pattern cannot be read ({exc.strerror}): where cores go is not known"
        return
    directory.mkdir(parents=True, exist_ok=True)
    try:
        CORE_PATTERN.write_text(f"{directory}/core.%e.%p\n")
    except OSError as exc:
        changed = False
        said = f"kernel.core_pattern stays {previous.strip()!r}: it cannot be set here ({exc.strerror})"
    else:
        changed = True
        said = f"core dumps go to {directory}"
    try:
        yield said
    finally:
        if changed:
            CORE_PATTERN.write_text(previous)
