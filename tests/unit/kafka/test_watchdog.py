"""Unit tests of the watchdog: its bookkeeping in virtual time, its thread, and a real process it ends.

The last test runs a small Python program whose "Kafka call" is a sleep far past its
limit, and one that is sent SIGTERM while stuck: both must end with EXIT_STUCK and
the watchdog's sentence, because os._exit is the only way out of a thread stuck in C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from orderpipe.kafka.watchdog import EXIT_STUCK, Watchdog, watching

ROOT = Path(__file__).resolve().parents[3]


class FakeTime:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_call_within_its_limit_is_not_overdue_and_one_past_it_is_named() -> None:
    clock = FakeTime()
    watchdog = Watchdog(clock)
    with watchdog.guard("send the offsets", 15):
        clock.now += 15
        assert watchdog.overdue() is None
        clock.now += 1
        reason = watchdog.overdue()
    assert reason is not None
    assert "send the offsets" in reason
    assert "16s" in reason
    assert "15s limit" in reason
    assert f"code {EXIT_STUCK}" in reason
    assert watchdog.overdue() is None  # the call returned: nothing is in progress


def test_nested_calls_are_each_held_to_their_own_limit() -> None:
    clock = FakeTime()
    watchdog = Watchdog(clock)
    with watchdog.guard("close the consumer", 30):
        clock.now += 5
        with watchdog.guard("poll", 1):
            clock.now += 2
            reason = watchdog.overdue()
        assert reason is not None
        assert "poll" in reason
        assert watchdog.overdue() is None


def test_the_shutdown_limit_counts_from_the_first_stop_signal() -> None:
    clock = FakeTime()
    watchdog = Watchdog(clock)
    watchdog.stop_asked(10)
    clock.now += 8
    watchdog.stop_asked(10)  # a second SIGTERM does not give it more time
    clock.now += 2.5
    with watchdog.guard("commit the transaction", 10):
        reason = watchdog.overdue()
    assert reason is not None
    assert "within 10s of the stop signal" in reason
    assert "commit the transaction" in reason


def test_the_thread_ends_the_process_once_a_call_overruns(capsys: pytest.CaptureFixture[str]) -> None:
    watchdog, codes, called = Watchdog(), list[int](), threading.Event()

    def end(code: int) -> None:
        codes.append(code)
        called.set()

    with watching(watchdog, 10, end=end, tick_s=0.01), watchdog.guard("flush the producer", 0.05):
        assert called.wait(5.0)
    assert codes == [EXIT_STUCK]
    assert "error: the Kafka call to flush the producer has been stuck" in capsys.readouterr().err


def test_the_thread_hears_sigterm_while_the_main_thread_is_busy() -> None:
    watchdog, called = Watchdog(), threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        with watching(watchdog, 0.05, end=lambda _code: called.set(), tick_s=0.01):
            os.kill(os.getpid(), signal.SIGTERM)
            assert called.wait(5.0)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_other_signals_do_not_start_the_shutdown_and_the_wakeup_fd_is_restored() -> None:
    watchdog, called = Watchdog(), threading.Event()

    def ignore(_signum: int, _frame: FrameType | None) -> None:
        pass

    previous = signal.signal(signal.SIGUSR1, ignore)
    try:
        with watching(watchdog, 0.01, end=lambda _code: called.set(), tick_s=0.01):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert not called.wait(0.3)
        assert signal.set_wakeup_fd(-1) == -1  # nothing left behind
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_off_the_main_thread_it_watches_calls_without_touching_signals() -> None:
    watchdog, called = Watchdog(), threading.Event()

    def run() -> None:
        with watching(watchdog, 10, end=lambda _code: called.set(), tick_s=0.01), watchdog.guard("poll", 0.01):
            called.wait(5)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert called.is_set()


STUCK_PROGRAM = """
import signal, sys, time
sys.path.insert(0, {root!r})
from orderpipe.kafka.watchdog import WATCHDOG, watching
signal.signal(signal.SIGTERM, lambda *_: None)
with watching(WATCHDOG, {shutdown}):
    with WATCHDOG.guard("send the offsets", {limit}):
        print("stuck", flush=True)
        time.sleep(60)  # stands for a librdkafka call that ignores its timeout
"""


def _stuck_process(limit: float, shutdown: float) -> subprocess.Popen[str]:
    program = textwrap.dedent(STUCK_PROGRAM).format(root=str(ROOT), limit=limit, shutdown=shutdown)
    process = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "stuck"
    return process


def test_a_real_process_stuck_in_a_call_exits_with_the_distinct_code() -> None:
    started = time.monotonic()
    process = _stuck_process(limit=0.5, shutdown=30)
    _, err = process.communicate(timeout=20)
    assert process.returncode == EXIT_STUCK
    assert "the Kafka call to send the offsets has been stuck" in err
    assert time.monotonic() - started < 20


def test_a_real_process_stuck_when_sigterm_arrives_ends_within_the_shutdown_limit() -> None:
    process = _stuck_process(limit=60, shutdown=1)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=20)
    assert process.returncode == EXIT_STUCK
    assert "did not finish shutting down within 1s of the stop signal (still trying to send the offsets)" in err
    assert time.monotonic() - sent < 10


def test_a_stop_signal_of_one_run_does_not_end_the_next_in_the_same_process() -> None:
    watchdog, codes = Watchdog(), list[int]()
    previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: None)
    try:
        with watching(watchdog, 30, end=codes.append, tick_s=0.01):
            os.kill(os.getpid(), signal.SIGTERM)
            assert _poll_until_true(lambda: watchdog._shutdown is not None)
        with watching(watchdog, 0.01, end=codes.append, tick_s=0.01):
            assert not threading.Event().wait(0.2)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert codes == []


def _poll_until_true(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False
