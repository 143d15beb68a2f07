"""The confluent-kafka edge on the real broker, for what librdkafka's mock cluster cannot show."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from orderpipe.config.settings import Settings
from orderpipe.core.ports import BEGINNING, EdgeOptions, KafkaEdge, Outgoing
from orderpipe.errors import KafkaCallError
from orderpipe.kafka.admin import ensure_topics
from orderpipe.kafka.clients import connect_admin
from orderpipe.kafka.edge import ConfluentEdge, open_kafka_edge
from tests.integration.helpers import Pipeline, wait_for


@contextmanager
def running_edge(settings: Settings, options: EdgeOptions) -> Iterator[ConfluentEdge]:
    """An edge past its set-up, as the consumer runs it."""
    with open_kafka_edge(settings, options) as edge:
        edge.finish_setup()
        yield edge


def one_transaction(edge: KafkaEdge, topic: str) -> None:
    edge.begin_transaction()
    edge.produce([Outgoing(topic, b"K", b"value")])
    edge.commit_transaction()


def test_a_producer_fenced_by_a_newer_instance_gets_a_fatal_error(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    ensure_topics(connect_admin(settings), settings)
    transactional_id = f"{settings.consumer_group}.fencing"
    with running_edge(settings, EdgeOptions(transactional_id)) as old:
        old.init_transactions()
        with running_edge(settings, EdgeOptions(transactional_id)) as newer:
            newer.init_transactions()
            with pytest.raises(KafkaCallError) as fenced:
                one_transaction(old, settings.dlq_topic)
            one_transaction(newer, settings.dlq_topic)
    assert fenced.value.fatal
    assert fenced.value.fenced
    assert [r.value for r in pipeline.read(settings.dlq_topic, at_least=1)] == [b"value"]


def test_committed_offsets_are_held_back_while_a_transaction_holds_them(pipeline: Pipeline) -> None:
    settings = pipeline.settings
    ensure_topics(connect_admin(settings), settings)
    tp = (settings.orders_topic, 0)
    with running_edge(settings, EdgeOptions(f"{settings.consumer_group}.held")) as edge:
        edge.init_transactions()
        edge.assign({tp: BEGINNING})
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"value")])
        edge.send_offsets({tp: 5})
        held = edge.committed([tp])  # read_committed: librdkafka asks for stable offsets, and waits for them
        wait_for(held.done, what="the committed offsets to be answered")
        with pytest.raises(KafkaCallError, match="could not read the committed offset") as unstable:
            held.result()
        print(f"while the transaction is open: {unstable.value} ({unstable.value.code})")
        edge.commit_transaction()

        def committed() -> dict[tuple[str, int], int | None] | None:
            answer = edge.committed([tp])
            wait_for(answer.done, what="the committed offsets to be answered")
            try:
                return answer.result()
            except KafkaCallError:  # the commit markers are still being written
                return None

        assert wait_for(committed, what="stable committed offsets") == {tp: 5}


def test_topics_that_cannot_be_created_as_asked_name_the_setting(pipeline: Pipeline) -> None:
    result = pipeline.with_env(REPLICATION_FACTOR="3").run("consumer.py", "--idle-exit", "1", timeout=60)
    assert result.returncode == 2, result.stderr
    assert "check ORDERS_PARTITIONS and REPLICATION_FACTOR" in result.stderr.strip().splitlines()[-1]


def test_records_of_an_aborted_transaction_at_a_partitions_end_are_not_left_to_read(pipeline: Pipeline) -> None:
    # They are fetched and skipped, and librdkafka moves the position past them: --idle-exit,
    # which asks what is left to read, does not wait for them.
    settings = pipeline.settings
    ensure_topics(connect_admin(settings), settings)
    with running_edge(settings, EdgeOptions(f"{settings.consumer_group}.aborts")) as edge:
        edge.init_transactions()
        one_transaction(edge, settings.dlq_topic)
        edge.begin_transaction()
        edge.produce([Outgoing(settings.dlq_topic, b"K", b"aborted")] * 3)
        edge.abort_transaction()
        tps = [(settings.dlq_topic, p) for p in range(settings.orders_partitions)]
        edge.assign(dict.fromkeys(tps, BEGINNING))
        before = edge.unread(tps)
        assert before is not None
        # The key's partition: a committed record and its marker, then the aborted records.
        assert sorted(before.values())[:-1] == [0] * (len(tps) - 1), before
        assert sorted(before.values())[-1] >= 2, before
        read: list[bytes | None] = []

        def caught_up() -> bool:
            read.extend(value for run in edge.poll(100, 0.1).runs for value in run.values)
            return edge.unread(tps) == dict.fromkeys(tps, 0)

        wait_for(caught_up, 30, "nothing left to read past the aborted transaction")
        assert read == [b"value"]


def test_a_partition_assigned_at_its_end_has_nothing_left_to_read(pipeline: Pipeline) -> None:
    # librdkafka reports no position until something is read; a consumer restored at the end
    # of a partition must not count the whole partition as unread (--idle-exit waited for ever).
    settings = pipeline.settings
    ensure_topics(connect_admin(settings), settings)
    with running_edge(settings, EdgeOptions(f"{settings.consumer_group}.at-end")) as edge:
        edge.init_transactions()
        for _ in range(3):
            one_transaction(edge, settings.dlq_topic)
        tps = [(settings.dlq_topic, p) for p in range(settings.orders_partitions)]
        edge.assign(dict.fromkeys(tps, BEGINNING))
        ends = wait_for(lambda: edge.unread(tps), 30, "the partitions' ends")
        assert sum(ends.values()) == 6, ends  # three records and their markers
        edge.assign(ends)  # from offset 0, what is unread is each end: every partition assigned at its end
        edge.poll(100, 0.2)
        assert edge.unread(tps) == dict.fromkeys(tps, 0)
