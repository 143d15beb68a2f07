"""A watchdog of our own over the consumer's blocking Kafka calls and over its shutdown.

librdkafka does not always keep to the timeout a call is given: while the broker
of a group or transaction coordinator is gone, `send_offsets_to_transaction` was
seen blocking for minutes past it (librdkafka issues 5456 and 5511), and Python
cannot interrupt a thread that is inside C. So the consumer's edge runs every
blocking call inside `Watchdog.guard(what, limit_s)`, and a thread of ours
(`watching`) looks at the calls in progress: one still running past its limit ends
the process with exit code EXIT_STUCK and a sentence naming the call. A supervisor
(systemd's Restart=on-failure, a Kubernetes pod) starts the consumer again; its
transactional id fences the stuck instance and aborts the transaction it left open,
and the new instance goes on from the last commit.

Ctrl-C and SIGTERM reach Python's handlers only when the main thread runs Python
code, so a stuck call would hold them back too. The interpreter's C-level handler
also writes each signal to the wake-up fd (`signal.set_wakeup_fd`) at once, and the
watchdog thread listens there: from the first signal, the consumer has the shutdown
limit (its transaction timeout) to finish its batch and close, or the watchdog ends
it with EXIT_STUCK.

`Watchdog` itself is plain bookkeeping with the time passed in; only `watching`
has a thread, a socket and the power to end the process.
"""

from __future__ import annotations

import itertools
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["EXIT_STUCK", "UNTIMED_CALL_LIMIT_S", "WATCHDOG", "WATCHDOG_GRACE_S", "Watchdog", "watching"]

# The exit code of a process the watchdog ended: distinct from 1 (a runtime failure)
# and 2 (a configuration problem), so a supervisor or a person can tell it apart.
EXIT_STUCK = 3
# How often the watchdog thread looks at the calls in progress.
TICK_S = 0.25
# How much longer than its own timeout a call may block before the watchdog ends the process.
WATCHDOG_GRACE_S = 5.0
# The limit of calls without a timeout of their own (assign, pause, seek, a synchronous
# offset commit, close): they return quickly unless librdkafka is stuck.
UNTIMED_CALL_LIMIT_S = 30.0


class Watchdog:
    """The blocking calls in progress with their deadlines, and the shutdown's deadline once a stop was asked for.

    Thread-safe: calls are guarded on the main thread (or any other) and checked
    from the watchdog thread.
    """

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self._calls: dict[int, tuple[str, float, float]] = {}  # id: (what, started, limit)
        self._shutdown: tuple[float, float] | None = None  # (asked at, limit)

    @contextmanager
    def guard(self, what: str, limit_s: float) -> Iterator[None]:
        """Marks a call in progress for the block: `what` (e.g. "send the offsets") may take `limit_s` at most."""
        with self._lock:
            call = next(self._ids)
            self._calls[call] = (what, self._monotonic(), limit_s)
        try:
            yield
        finally:
            with self._lock:
                del self._calls[call]

    def forget_stop(self) -> None:
        """Forgets a stop signal: a new run (main(argv) called again in one process) starts without one."""
        with self._lock:
            self._shutdown = None

    def stop_asked(self, limit_s: float) -> None:
        """A stop signal arrived: the process has `limit_s` from now (the first signal counts) to end."""
        with self._lock:
            if self._shutdown is None:
                self._shutdown = (self._monotonic(), limit_s)

    def overdue(self) -> str | None:
        """Why the process must end now, as a sentence; None while every call and the shutdown are within limits."""
        now = self._monotonic()
        with self._lock:
            calls = list(self._calls.values())
            shutdown = self._shutdown
        for what, started, limit in calls:
            if now - started > limit:
                return (
                    f"the Kafka call to {what} has been stuck for {now - started:.0f}s, past its {limit:g}s limit; "
                    f"exiting with code {EXIT_STUCK} so that a supervisor starts the consumer again (the restart "
                    "fences this instance's transactional id, aborts its open transaction and goes on from the last "
                    "commit)"
                )
        if shutdown is not None and now - shutdown[0] > shutdown[1]:
            doing = f" (still trying to {calls[-1][0]})" if calls else ""
            return (
                f"the consumer did not finish shutting down within {shutdown[1]:g}s of the stop signal{doing}; "
                f"exiting with code {EXIT_STUCK}: a transaction it left open is aborted when it starts again with "
                "the same transactional id, or by Kafka once transaction.timeout.ms runs out"
            )
        return None


# The consumer's watchdog: its Kafka edge guards every blocking call here. Without
# `watching`, guarding is only bookkeeping and nothing is ever ended.
WATCHDOG = Watchdog()

_STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def watching(
    watchdog: Watchdog,
    shutdown_limit_s: float,
    *,
    end: Callable[[int], object] = os._exit,
    tick_s: float = TICK_S,
) -> Iterator[None]:
    """Runs the watchdog thread for the block: an overdue call or shutdown prints its sentence and `end`s the process.

    Stop signals are read from the signal wake-up fd when the block is entered on
    the main thread (the only one Python lets set it); the handlers themselves stay
    whatever the caller installed.
    """
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False) if main else -1
    done = threading.Event()
    watchdog.forget_stop()

    def watch() -> None:
        while not done.is_set():
            ready, _, _ = select.select([reader], [], [], tick_s)
            if ready and _stop_signal_in(reader):
                watchdog.stop_asked(shutdown_limit_s)
            reason = watchdog.overdue()
            if reason is not None and not done.is_set():
                print(f"error: {reason}", file=sys.stderr, flush=True)
                end(EXIT_STUCK)
                return

    thread = threading.Thread(target=watch, name="orderpipe-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        if main:
            signal.set_wakeup_fd(previous)
        thread.join()
        watchdog.forget_stop()
        reader.close()
        writer.close()


def _stop_signal_in(reader: socket.socket) -> bool:
    """Whether the signal numbers waiting on the wake-up socket include a stop signal (reads them all)."""
    try:
        numbers = reader.recv(512)
    except BlockingIOError:
        return False
    return any(number in _STOP_SIGNALS for number in numbers)
