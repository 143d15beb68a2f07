"""The programs on a terminal, drawn with rich: the producer's progress, the consumer's panel, the DLQ table.

Only for a terminal: `terminal_screen` says whether stdout is one that takes live
redraws (not a pipe or a file, not TERM=dumb, no NO_COLOR, no --plain); everywhere
else the programs print orderpipe.observe.console's plain lines, unchanged. What is drawn is
computed by orderpipe.core.status; this module only lays it out. It is drawn from the
programs' main loops (rich's own refresh thread is off), so nothing here reads state
another thread changes.

Lines printed while a view is live (per-event lines, warnings) are held and printed
above it with its next redraw, at most every status.VIEW_EVERY_S, so that printing
costs one redraw, not one per line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Generic, Protocol, TextIO, TypeVar, cast

from rich import box
from rich.console import Console as RichConsole
from rich.console import Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orderpipe.core.dead_letters import DlqEntry
from orderpipe.core.status import ConsumerStatus, ProducerStatus, duration
from orderpipe.observe.console import Console

__all__ = [
    "DeadLetterTable",
    "LiveConsole",
    "LiveView",
    "consumer_panel",
    "producer_progress",
    "terminal_screen",
]

R = TypeVar("R")
S = TypeVar("S")
R_contra = TypeVar("R_contra", contravariant=True)
S_co = TypeVar("S_co", covariant=True)
# Rows of the DLQ table drawn at a time: a long listing streams instead of waiting for its end.
TABLE_CHUNK = 200
_LINE_STYLES = {"✓": "green", "⚠": "yellow", "✗": "red"}


def terminal_screen(stream: TextIO, plain: bool, environ: Mapping[str, str] | None = None) -> RichConsole | None:
    """A rich console drawing on `stream` when it is a terminal that takes live redraws, else None.

    rich reads TERM and NO_COLOR (from `environ`, default the process's). Whether
    `stream` is a terminal is asked of the stream itself, never of FORCE_COLOR or
    TTY_COMPATIBLE, which would have rich draw into a pipe.
    """
    if plain or not _isatty(stream):
        return None
    screen = RichConsole(file=stream, force_terminal=True, _environ=environ)
    if screen.is_dumb_terminal or screen.no_color:
        return None
    return screen


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


class LiveConsole(Console):
    """The console on a terminal: lines as orderpipe.observe.console prints them, scrolling above a live view.

    Before the first drawing and after `close`, lines are printed as they come, exactly
    as the plain console prints them (to the screen's stream, and stderr).

    Args:
        screen: from `terminal_screen`.
        err_is_terminal: stderr is the same terminal, so warnings logged there are held
            and printed above the view too (else they go where stderr goes, as ever).
    """

    def __init__(self, verbosity: int, screen: RichConsole, *, err_is_terminal: bool) -> None:
        super().__init__(verbosity, out=cast(TextIO, screen.file))  # the stream given to terminal_screen
        self._screen = screen
        self._err_is_terminal = err_is_terminal
        self._live: Live | None = None
        self._held: list[Text] = []
        self._log_streams: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def info(self, text: str) -> None:
        if self._live is None:
            super().info(text)
        else:
            self._held.append(Text(text, style=_LINE_STYLES.get(text[:1], "")))

    def error(self, text: str) -> None:
        if self._live is None or not self._err_is_terminal:
            super().error(text)
        else:
            self._held.append(Text(text, style="red"))

    def draw(self, renderable: RenderableType) -> None:
        """Prints the lines held since the last drawing, then draws `renderable` in place of the last one."""
        live = self._live
        if live is None:
            live = self._live = Live(
                renderable,
                console=self._screen,
                auto_refresh=False,
                redirect_stdout=True,
                redirect_stderr=self._err_is_terminal,
            )
            stderr = sys.stderr
            live.start()
            # rich hides the cursor while live; a program ended without closing (the watchdog's
            # exit, kill -9) would leave the person's shell without one.
            self._screen.show_cursor(True)
            self._hold_logging(stderr)
        live.update(renderable)
        if self._held:
            # One print: rich draws the view again below the lines it prints.
            held, self._held = self._held, []
            self._screen.print(Text("\n").join(held))
        else:
            live.refresh()

    def close(self) -> None:
        """Prints the held lines and leaves the last drawing on the terminal; later lines go below it."""
        live, self._live = self._live, None
        if live is None:
            return
        if self._held:
            held, self._held = self._held, []
            self._screen.print(Text("\n").join(held))
        live.stop()
        for handler, stream in self._log_streams:
            handler.setStream(stream)
        self._log_streams.clear()

    def _hold_logging(self, stderr: TextIO) -> None:
        """Log handlers writing to the terminal's stderr write through the view while it is live.

        rich has replaced sys.stderr with a proxy that prints above the view; a handler
        keeps the stream it was made with, so it is pointed at the proxy until `close`.
        """
        if not self._err_is_terminal:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is stderr:
                self._log_streams.append((handler, handler.setStream(sys.stderr) or stderr))


class Tracker(Protocol[R_contra, S_co]):
    """orderpipe.core.status's ProducerTracker and ConsumerTracker."""

    def due(self, now_s: float) -> bool: ...

    def status(self, reading: R_contra) -> S_co: ...


class LiveView(Generic[R, S]):
    """A status.View: a tracker's status of each reading, laid out by `render` and drawn on a LiveConsole."""

    def __init__(self, console: LiveConsole, tracker: Tracker[R, S], render: Callable[[S], RenderableType]) -> None:
        self._console, self._tracker, self._render = console, tracker, render

    def due(self, now_s: float) -> bool:
        return self._tracker.due(now_s)

    def show(self, reading: R) -> None:
        self._console.draw(self._render(self._tracker.status(reading)))

    def close(self) -> None:
        self._console.close()


def producer_progress(status: ProducerStatus) -> RenderableType:
    """With --count: a progress bar of the orders acknowledged, then the figures; without: one live line."""
    figures = Text.assemble(
        f"sent {status.sent:,} · acknowledged {status.delivered:,}",
        f" of {status.count:,}" if status.count is not None else "",
        " · failed ",
        (f"{status.failed:,}", "red" if status.failed else ""),
        f" · {status.per_s:,.0f} orders/s",
    )
    if status.count is None or status.percent is None:
        figures.append(f" · last order {status.last_order or '-'}")
        return Text.assemble(("● ", "green"), figures)
    figures.append(f" · {duration(status.left_s)} left")
    line = Table.grid(padding=(0, 1))
    line.add_column(width=40)
    line.add_column(justify="right", width=4)
    line.add_row(
        ProgressBar(total=max(status.count, 1), completed=status.delivered, width=40),
        Text(f"{status.percent}%", style="bold"),
    )
    return Group(line, figures)


def consumer_panel(status: ConsumerStatus) -> RenderableType:
    """The consumer's panel: rates, counts, the running average, retries, commits, then lag per partition."""
    reasons = ", ".join(f"{reason} {count:,}" for reason, count in status.dead_lettered)
    figures = Table.grid(padding=(0, 2))
    figures.add_column(style="bold", no_wrap=True)
    figures.add_column()
    arriving = "-" if status.in_per_s is None else f"{status.in_per_s:,.0f}"
    figures.add_row("records/s", f"in {arriving} · committed {status.committed_per_s:,.0f}")
    figures.add_row(Text("processed", style="green"), f"{status.processed:,}")
    figures.add_row(Text("retried", style="yellow"), f"{status.retried:,}")
    figures.add_row(Text("dead-lettered", style="red"), f"{status.dead_lettered_total:,} ({reasons})")
    figures.add_row("running average", Text.assemble(status.average, "  ", (status.sparkline, "cyan")))
    waiting = "-" if status.retry_waiting is None else f"{status.retry_waiting:,}"
    if status.next_due_in_s is not None:
        waiting += f" · next due {_due(status.next_due_in_s)}"
    figures.add_row("retries waiting", waiting)
    commit = "-" if status.last_commit_ms is None else f"{status.last_commit_ms:,.0f} ms"
    figures.add_row("last commit", commit)
    figures.add_row("wire format", Text(status.wire))
    lags = Table(box=box.SIMPLE_HEAD, padding=(0, 1), show_edge=False, pad_edge=False)
    lags.add_column("partition", no_wrap=True)
    lags.add_column("lag", justify="right", no_wrap=True)
    lags.add_column("", no_wrap=True, style="magenta")
    lags.add_column("", no_wrap=True)
    for row in status.partitions:
        paused = "" if row.due_in_s is None else f"paused, due {_due(row.due_in_s)}"
        lags.add_row(Text(row.name), f"{row.lag:,}", row.bar, paused)
    hidden, hidden_lag = status.hidden
    if hidden:
        lags.add_row(f"{hidden} more", f"{hidden_lag:,}", "", "")
    parts: list[RenderableType] = [figures, Text()]
    parts.append(lags if status.partitions else Text("lag: waiting for partitions to be assigned", style="dim"))
    return Panel(Group(*parts), title=Text(f"consumer · group {status.group}"), title_align="left", box=box.ROUNDED)


def _due(in_s: float) -> str:
    return "now" if in_s < 0.05 else f"in {in_s:.1f}s"


class DeadLetterTable:
    """`dlq.py list` on a terminal: a table as wide as the terminal, drawn TABLE_CHUNK rows at a time."""

    def __init__(self, screen: RichConsole, topic: str) -> None:
        self._screen, self._topic = screen, topic
        self._rows: list[tuple[str, str, str, str, str]] = []
        self._header = True

    def add(self, letter: DlqEntry) -> None:
        self._rows.append(letter.cells())
        if len(self._rows) >= TABLE_CHUNK:
            self._draw()

    def close(self) -> None:
        """Draws the rows not drawn yet (the header alone when there were none)."""
        if self._rows or self._header:
            self._draw()

    def _draw(self) -> None:
        # Fixed widths for all but the error, so that every chunk's columns line up.
        table = Table(
            box=box.SIMPLE_HEAD,
            show_header=self._header,
            show_edge=False,
            pad_edge=False,
            collapse_padding=True,
            title=Text(self._topic, style="bold") if self._header else None,
            title_justify="left",
            expand=True,
        )
        table.add_column("partition@offset", width=16, no_wrap=True, overflow="ellipsis")
        table.add_column("reason", width=17, no_wrap=True, overflow="ellipsis")
        table.add_column("order id", width=18, overflow="fold")
        table.add_column("failed at", width=24, no_wrap=True)
        table.add_column("error", ratio=1, overflow="fold")
        for cells in self._rows:
            table.add_row(*(Text(cell) for cell in cells))  # Text: record text is never read as markup
        self._screen.print(table)
        self._rows.clear()
        self._header = False
