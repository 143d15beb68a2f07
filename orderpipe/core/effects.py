"""A batch's effects as data: what must be produced, committed and remembered, free of Kafka.

`routing.plan_batch` decides each record; `batch_effects` turns that plan into
everything the edge must carry out for it, in one value:

* the records to produce: each retry and DLQ record, and the new `orders-stats`
  value of every input partition in the batch (its state and its committed offset);
* the input offsets to commit with them;
* the state each of those partitions has once the batch is committed;
* the partitions to pause (and seek back) until their head record is due.

The consumer applies `states` and `deferred` only after the commit succeeded, so an
aborted batch needs nothing undone but a seek back to the last commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from orderpipe.core.batch_plan import BatchPlan, Deferred
from orderpipe.core.ports import TP, Outgoing
from orderpipe.core.routing import DeadLetter, Decision, Retry
from orderpipe.core.stats import encode_stats, stats_key
from orderpipe.model.money import RunningAverage

__all__ = ["BatchEffects", "OutputTopics", "batch_effects"]


class OutputTopics(NamedTuple):
    retry: str
    dlq: str
    stats: str
    # The consumer group, the first part of every stats key.
    group: str


class BatchEffects(NamedTuple):
    records: tuple[Outgoing, ...]
    offsets: dict[TP, int]
    states: dict[TP, RunningAverage]
    deferred: tuple[Deferred, ...]
    decisions: Sequence[Decision]
    # How many of the decisions are Processed.
    processed: int
    # The retries and dead letters among the decisions, in order (without making the rest).
    routed: tuple[Retry | DeadLetter, ...]


def batch_effects(plan: BatchPlan, states: Mapping[TP, RunningAverage], topics: OutputTopics) -> BatchEffects:
    """Everything a planned batch changes.

    Args:
        plan: the batch's decisions, offsets and deferred retries.
        states: the committed state of each partition the consumer owns.
        topics: where retry, DLQ and stats records go.
    """
    outgoing = [
        Outgoing(topics.retry, decision.record.key, decision.record.value, decision.headers)
        if isinstance(decision, Retry)
        else Outgoing(topics.dlq, decision.key, decision.value, decision.headers)
        for decision in plan.routed
    ]
    after = {tp: states.get(tp, RunningAverage()) for tp in plan.commits}
    for tp, (count, cents) in plan.totals.items():
        after[tp] += RunningAverage(count, cents)
    # Every partition of the batch gets its stats value, so the offset in it always
    # equals the committed one. The stats topic is read from its partition 0 alone.
    outgoing.extend(
        Outgoing(topics.stats, stats_key(topics.group, *tp).encode(), encode_stats(after[tp], offset), partition=0)
        for tp, offset in plan.commits.items()
    )
    processed = sum(count for count, _ in plan.totals.values())
    return BatchEffects(
        tuple(outgoing), dict(plan.commits), after, plan.deferred, plan.decisions, processed, plan.routed
    )
