"""Unit tests of the replica watch: which partitions are below min ISR, when to ask the cluster, how often to say it."""

from __future__ import annotations

from orderpipe.core.ports import TP, InSync
from orderpipe.core.replicas import (
    ASK_EVERY_S,
    REPORT_EVERY_S,
    ReplicaWatch,
    below_min_isr,
    min_isr_of,
    min_isr_sentence,
)
from orderpipe.errors import KafkaCallError


def test_a_topics_min_isr_comes_from_its_configuration_and_odd_values_take_the_default() -> None:
    configs = {
        "a": {"min.insync.replicas": "3"},
        "b": {},
        "c": {"min.insync.replicas": "9" * 5000},
        "d": {"min.insync.replicas": "２"},  # a full-width digit: not Kafka's
    }
    assert min_isr_of(configs, 2) == {"a": 3, "b": 2, "c": 2, "d": 2}


def test_partitions_below_their_topics_minimum_are_found() -> None:
    in_sync = {("orders", 0): 1, ("orders", 1): 2, ("stats", 0): 2}
    answer = InSync(in_sync, dict.fromkeys(in_sync, 3), {})
    assert below_min_isr(answer, {"stats": 3}, 2) == {("orders", 0): (1, 2), ("stats", 0): (2, 3)}


def test_a_minimum_above_the_replica_count_is_not_waited_for() -> None:
    answer = InSync({("orders", 0): 3}, {("orders", 0): 3}, {})
    assert below_min_isr(answer, {"orders": 4}, 2) == {}  # Kafka accepts it; no wait can cure it


def test_the_sentence_names_five_partitions_and_counts_the_rest() -> None:
    below = {("orders", p): (1, 2) for p in range(7)}
    sentence = min_isr_sentence(below, "waiting")
    assert sentence.startswith("Kafka has fewer in-sync replicas than min.insync.replicas for orders-0 (1 of 2), ")
    assert "orders-4 (1 of 2) and 2 more" in sentence
    assert sentence.endswith("; waiting")


class Answer:
    def __init__(self, value: InSync, error: KafkaCallError | None = None) -> None:
        self.value, self.error, self.ready = value, error, False

    def done(self) -> bool:
        return self.ready

    def result(self) -> InSync:
        if self.error is not None:
            raise self.error
        return self.value


class Cluster:
    """Answers the watch's questions as told; counts them."""

    def __init__(self) -> None:
        self.now = 0.0
        self.in_sync: dict[TP, int] = {("orders", 0): 1}
        self.minimums: dict[str, int] = {}
        self.questions: list[Answer] = []
        self.lines: list[str] = []
        self.refuse = False

    def ask(self) -> Answer:
        if self.refuse:
            raise KafkaCallError("could not describe topics: broker down", "_TRANSPORT", retriable=True)
        answer = Answer(InSync(dict(self.in_sync), dict.fromkeys(self.in_sync, 3), dict(self.minimums)))
        self.questions.append(answer)
        return answer

    def answer_all(self) -> None:
        for answer in self.questions:
            answer.ready = True

    def watch(self) -> ReplicaWatch:
        return ReplicaWatch(self.ask, {}, 2, doing="waiting", report=self.lines.append, monotonic=lambda: self.now)


def test_nothing_is_asked_until_writes_have_waited_a_while() -> None:
    cluster = Cluster()
    watch = cluster.watch()
    watch.check(0.0)
    watch.check(2.9)
    assert cluster.questions == []
    watch.check(3.0)
    assert len(cluster.questions) == 1


def test_the_answer_is_reported_at_most_every_thirty_seconds_and_asked_for_every_ten() -> None:
    cluster = Cluster()
    watch = cluster.watch()
    for second in range(62):  # each answer is taken a second after it was asked for
        cluster.now = float(second)
        watch.check(10.0 + second)
        cluster.answer_all()
    assert len(cluster.questions) == 60 // int(ASK_EVERY_S) + 1  # at 0, 10, ... 60
    assert len(cluster.lines) == 60 // int(REPORT_EVERY_S) + 1  # at 1, 31 and 61
    assert watch.below == {("orders", 0): (1, 2)}


def _below_after_one_answer() -> tuple[Cluster, ReplicaWatch]:
    """A watch whose writes waited 5 s and whose first answer found orders-0 below its minimum."""
    cluster = Cluster()
    watch = cluster.watch()
    watch.check(5.0)
    cluster.answer_all()
    watch.check(5.0)
    assert watch.below
    return cluster, watch


def test_once_writes_go_through_again_nothing_is_below_and_nothing_asked() -> None:
    cluster, watch = _below_after_one_answer()
    cluster.now = 20.0
    watch.check(0.0)  # a batch aborted: nothing waits, but nothing went through either
    assert watch.below
    watch.writes_done()
    watch.check(0.0)
    assert watch.below == {}
    assert len(cluster.questions) == 1


def test_a_cluster_that_does_not_answer_is_asked_again_later_without_an_error() -> None:
    cluster = Cluster()
    watch = cluster.watch()
    cluster.refuse = True
    watch.check(5.0)
    cluster.refuse = False
    cluster.now = 5.0
    watch.check(10.0)
    assert cluster.questions == []  # within ASK_EVERY_S of the refused question
    cluster.now = 10.0
    watch.check(15.0)
    cluster.questions[0].error = KafkaCallError("could not describe topic orders: timed out", "_TIMED_OUT")
    cluster.answer_all()
    cluster.now = 11.0
    watch.check(16.0)
    assert watch.below == {}
    assert cluster.lines == []


def test_a_shortfall_no_longer_confirmed_is_forgotten() -> None:
    cluster, watch = _below_after_one_answer()
    cluster.now = 10.0
    watch.check(10.0)  # asked again ...
    cluster.questions[-1].error = KafkaCallError("could not describe topic orders: timed out", "_TIMED_OUT")
    cluster.answer_all()
    cluster.now = 11.0
    watch.check(11.0)  # ... and not answered: the commit's usual deadline applies again
    assert watch.below == {}


def test_a_minimum_the_cluster_gives_overrides_the_one_known_at_start() -> None:
    cluster = Cluster()
    cluster.in_sync = {("orders", 0): 2}
    watch = cluster.watch()  # knows a minimum of 2: two in sync is enough
    watch.check(5.0)
    cluster.answer_all()
    watch.check(5.0)
    assert watch.below == {}
    cluster.minimums = {"orders": 3}  # an operator raised it meanwhile
    cluster.now = 20.0
    watch.check(20.0)
    cluster.answer_all()
    watch.check(20.0)
    assert watch.below == {("orders", 0): (2, 3)}
