"""Where the programs' time goes: py-spy profiles of producer.py and the exactly-once consumer.py, summed by function.

    python -m bench.profile [--orders N] [--base REF]      (a running broker; py-spy from bench/requirements.txt)

Each program runs as in the throughput rounds of bench/run.py: the producer sends N
orders at full speed to a fresh topic; the consumer reads N orders that this checkout's
producer wrote beforehand (untimed) and exits once idle. py-spy samples the whole run
(start-up included) 250 times a second, keeping the samples of threads that hold the
GIL (Python running, or a C call made without releasing it; not a wait for the
broker), and the samples are summed per function: the share in which the function was
on the stack ("inclusive"), and the share in which it was the one running ("own").
With --base, the same runs of another commit
(checked out once under .cache/bench/, as bench/compare.py does) come first, so that a
change is shown beside what it changed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from bench.compare import env, worktree
from bench.run import ROOT

RATE_HZ = 250
TOP = 16
# A py-spy frame: "function (path/to/file.py:line)"; the line is left out when summing.
FRAME = re.compile(r"^(?P<function>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
# Frames that only start the program: the scripts', runpy's and the import system's.
WRAPPERS = ("<", "runpy.")


def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        sys.exit("py-spy is not installed: .venv/bin/pip install -r bench/requirements.txt")
    return found


def profile(root: Path, argv: list[str], environment: dict[str, str]) -> list[str]:
    """The collapsed stacks of one run of `argv` from checkout `root` (one line per distinct stack)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        cmd = [
            py_spy(),
            "record",
            "--gil",
            "--rate",
            str(RATE_HZ),
            "--format",
            "raw",
            "--output",
            str(out),
            "--",
            *argv,
        ]
        subprocess.run(cmd, cwd=root, env={**os.environ, **environment}, check=True, capture_output=True)
        return out.read_text().splitlines()


def label(frame: str) -> str:
    """`module.function` for a frame of ours, `library: function` for one of a library."""
    match = FRAME.match(frame)
    if match is None:
        return frame
    function, path = match["function"], match["path"]
    if "site-packages/" in path:
        return f"{path.split('site-packages/')[1].split('/')[0]}: {function}"
    name = Path(path).stem
    return f"{name}.{function}" if name else function


def summed(stacks: Iterable[str]) -> tuple[int, Counter[str], Counter[str]]:
    """Samples in all, and per function those with it anywhere on the stack and those with it on top."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in stacks:
        frames, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        # Frames run from the outermost to the innermost.
        labels = [label(frame) for frame in frames.split(";") if frame]
        total += count
        if not labels:
            labels = ["(no Python frame: librdkafka's or the interpreter's own)"]
        for name in set(labels):
            inclusive[name] += count
        if labels:
            own[labels[-1]] += count
    return total, inclusive, own


def table(title: str, stacks: list[str]) -> str:
    total, inclusive, own = summed(stacks)
    if not total:
        return f"**{title}**: no samples\n"
    rows = [
        f"| {name} | {100 * count / total:.1f}% | {100 * own[name] / total:.1f}% |"
        for name, count in inclusive.most_common()
        if not name.startswith(WRAPPERS) and not name.endswith(".<module>")
    ][:TOP]
    head = f"**{title}** ({total:,} samples)\n\n| function | inclusive | own |\n|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def fill(prefix: str, orders: int) -> None:
    argv = [sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"]
    subprocess.run(argv, cwd=ROOT, env={**os.environ, **env(prefix)}, check=True, capture_output=True)


def profiles(root: Path, ref: str, orders: int) -> str:
    producer = [sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"]
    produced = profile(root, producer, env(f"prof-{uuid.uuid4().hex[:8]}"))
    prefix = f"prof-{uuid.uuid4().hex[:8]}"
    fill(prefix, orders)
    consumer = [sys.executable, "consumer.py", "--quiet", "--idle-exit", "2"]
    consumed = profile(root, consumer, env(prefix))
    return "\n".join(
        (
            table(f"producer.py, {orders:,} orders, {ref}", produced),
            table(f"consumer.py (exactly-once), {orders:,} orders, {ref}", consumed),
        )
    )


def report(orders: int, base: str | None) -> str:
    """The profiles as markdown: the base commit's first when there is one, then this checkout's."""
    parts = []
    if base is not None:
        parts.append(profiles(worktree(base), base, orders))
    parts.append(profiles(ROOT, "this checkout", orders))
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orders", type=int, default=1_000_000)
    parser.add_argument("--base", help="also profile this commit, first")
    args = parser.parse_args()
    command = "python -m bench.profile --orders " + str(args.orders) + (f" --base {args.base}" if args.base else "")
    print(report(args.orders, args.base))
    print(f"Command: {command}")


if __name__ == "__main__":
    main()
