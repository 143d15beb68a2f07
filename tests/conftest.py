"""Keeps what each failed test said in .cache/test-failures.txt, for .ci/run to show last.

A CI log shows its beginning and its end; a failure's reason is in between, under
the tests that passed after it and the brokers' logs. This file holds, per failed
test, the end of its traceback and of its captured output.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAILURES = Path(__file__).resolve().parent.parent / ".cache" / "test-failures.txt"
KEEP_CHARS = 4000  # of the traceback, and of each captured stream


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # Under pytest-xdist the controller hears of every worker's report again: it writes them.
    if not report.failed or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    parts = [f"=== {report.nodeid} ({report.when})", report.longreprtext[-KEEP_CHARS:]]
    for name, text in (("stdout", report.capstdout), ("stderr", report.capstderr)):
        if text:
            parts.append(f"--- captured {name} (its end)\n{text[-KEEP_CHARS:]}")
    FAILURES.parent.mkdir(exist_ok=True)
    with FAILURES.open("a", encoding="utf-8") as out:
        out.write("\n".join(parts) + "\n\n")
