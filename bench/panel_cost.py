"""What the live views cost: producer.py and consumer.py on a pseudo-terminal, with their live view and with --plain.

    python -m bench.panel_cost [--orders N] [--rounds R]

Each round runs the producer (`--count N --rate 0`, a fresh topic) and then the
exactly-once consumer (`--idle-exit 2`, a fresh topic filled beforehand, untimed)
on a pty of 120 x 40, once with the live view and once with `--plain`; the order of
the two alternates between rounds, so a machine that speeds up or slows down during
the run favours neither. Both print the default lines (per-event lines while they
are readable), as a person runs them. Prints each run's rate (its `Throughput:`
line) and CPU time per order, the medians, live / plain, and the command. Needs a
running broker. The default of 500,000 orders keeps each run over a second here: the
rate of shorter runs moves by tens of percent from one run to the next.

A shared machine moves the rates by more than the views cost, so it also times one
drawing of each view in this process (120 columns, with the ten per-event lines a
drawing holds at most at 20 lines a second) and gives its share of one core at
status.VIEW_EVERY_S: the cost itself, without the noise.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable

from rich.console import RenderableType

from bench.compare import env
from bench.run import ROOT, THROUGHPUT, run
from orderpipe.core.status import (
    VIEW_EVERY_S,
    ConsumerReading,
    ConsumerTracker,
    LoopReading,
    ProducerReading,
    ProducerTracker,
)
from orderpipe.model.money import RunningAverage
from orderpipe.observe.console import NORMAL
from orderpipe.observe.terminal import LiveConsole, consumer_panel, producer_progress, terminal_screen
from tests.terminal import FakeTerminal, Terminal, terminal_env

PROGRAMS = ("producer", "consumer")
MODES = ("live", "plain")


def on_terminal(argv: list[str], variables: dict[str, str]) -> tuple[float, float]:
    """Runs a program on a pty to its end; returns its rate (records/s) and its CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    program = Terminal([sys.executable, *argv], terminal_env({**os.environ, **variables}), ROOT)
    try:
        code = program.wait(600)
    finally:
        program.kill()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = program.output.decode("utf-8", "replace")
    match = THROUGHPUT.search(text)
    if code != 0 or not match:
        sys.exit(f"{' '.join(argv)} failed ({code}):\n{text[-3000:]}")
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return int(match[1]) / float(match[2]), cpu_s


def measure(program: str, mode: str, orders: int) -> tuple[float, float]:
    variables = env(f"panel-{uuid.uuid4().hex[:8]}")
    plain = ["--plain"] if mode == "plain" else []
    if program == "producer":
        return on_terminal(["producer.py", "--rate", "0", "--count", str(orders), *plain], variables)
    run([sys.executable, "producer.py", "--rate", "0", "--count", str(orders), "--quiet"], variables)
    return on_terminal(["consumer.py", "--idle-exit", "2", *plain], variables)


def frame_ms(draw: Callable[[int], RenderableType], frames: int = 200) -> float:
    """Milliseconds per drawing on a 120-column terminal in memory, ten held per-event lines printed above each."""
    screen = terminal_screen(FakeTerminal(), False, {"TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"})
    assert screen is not None
    console = LiveConsole(NORMAL, screen, err_is_terminal=False)
    console.draw(draw(0))  # the first drawing starts the view
    started = time.perf_counter()
    for frame in range(1, frames + 1):
        for _ in range(10):
            console.info("✓ Processed: Order O-MXBQ25T0K4-17EB → Notebook → $10.33\nRunning Average: $133.78")
        console.draw(draw(frame))
    elapsed = time.perf_counter() - started
    console.close()
    return elapsed / frames * 1000


def producer_frame(tracker: ProducerTracker) -> Callable[[int], RenderableType]:
    return lambda n: producer_progress(tracker.status(ProducerReading(n * 0.5, n * 50_000, n * 49_000, 0, "O-X-1")))


def consumer_frame(tracker: ConsumerTracker) -> Callable[[int], RenderableType]:
    lags = {(topic, p): 100 * p for topic in ("orders", "orders-retry") for p in range(3)}

    def draw(n: int) -> RenderableType:
        loop = LoopReading(RunningAverage(n * 1000, n * 135_000 + n * n), lags, {("orders-retry", 0): n * 500}, 0.01)
        reasons = (("deserialization", n), ("validation", 2 * n), ("retries-exhausted", n // 3))
        return consumer_panel(tracker.status(ConsumerReading(n * 0.5, loop, n * 100_000, n * 90_000, n, reasons)))

    return draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--orders", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rates: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    for round_number in range(1, args.rounds + 1):
        print(f"Round {round_number}", flush=True)
        for program in PROGRAMS:
            for mode in MODES if round_number % 2 else reversed(MODES):
                rate, cpu_s = measure(program, mode, args.orders)
                rates.setdefault((program, mode), []).append(rate)
                cpu.setdefault((program, mode), []).append(cpu_s / args.orders * 1e6)
                print(f"  {program:<9} {mode:<6} {rate:>10,.0f}/s  {cpu_s / args.orders * 1e6:5.1f} µs CPU/order")
    frames = {
        "producer": frame_ms(producer_frame(ProducerTracker(count=args.orders))),
        "consumer": frame_ms(consumer_frame(ConsumerTracker("orders-retry", "group", "single-object Avro"))),
    }
    print(f"\nCommand: python -m bench.panel_cost --orders {args.orders} --rounds {args.rounds}")
    print(f"{args.rounds} rounds of {args.orders} orders on a 120 x 40 pty, live and --plain taking turns; medians.\n")
    print("| program | live | --plain | live / --plain | CPU µs/order, live / --plain | one drawing | of a core |")
    print("|---|---|---|---|---|---|---|")
    for program in PROGRAMS:
        live, plain = (statistics.median(rates[(program, mode)]) for mode in MODES)
        live_cpu, plain_cpu = (statistics.median(cpu[(program, mode)]) for mode in MODES)
        share = frames[program] / 1000 / VIEW_EVERY_S  # one drawing every VIEW_EVERY_S
        print(
            f"| {program} | {live:,.0f}/s | {plain:,.0f}/s | {live / plain:.3f} | {live_cpu:.1f} / {plain_cpu:.1f} | "
            f"{frames[program]:.2f} ms | {share:.1%} |"
        )


if __name__ == "__main__":
    main()
