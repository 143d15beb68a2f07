"""The admin questions' answers as Kafka gives them, errors included, from a stand-in admin client (pure logic)."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from orderpipe.config.settings import build_settings
from orderpipe.core.ports import TopicSpec
from orderpipe.errors import BrokerUnavailableError, ConfigError
from orderpipe.kafka.admin import (
    create_topics,
    ensure_topics,
    partition_counts,
    permissions,
    replication_factors,
    topic_configs,
    wait_for_leaders,
)


def _answer(value: object) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _failure(code: int) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(KafkaException(KafkaError(code)))
    return future


class FakeAdmin:
    """Answers each topic's request with the future given for it; list_topics with `topics` or an error."""

    def __init__(self, answers: dict[str, Future[Any]], topics: dict[str, int] | None = None) -> None:
        self.answers, self.topics = answers, topics
        self.created: list[str] = []

    def list_topics(self, timeout: float) -> Any:
        if self.topics is None:
            raise KafkaException(KafkaError(KafkaError._TRANSPORT))
        partition = SimpleNamespace(replicas=[1])
        return SimpleNamespace(
            topics={
                name: SimpleNamespace(partitions=dict.fromkeys(range(n), partition)) for name, n in self.topics.items()
            }
        )

    def describe_configs(self, resources: list[Any], request_timeout: float) -> dict[Any, Future[Any]]:
        return {resource: self.answers[resource.name] for resource in resources}

    def create_topics(self, topics: list[Any], operation_timeout: float) -> dict[str, Future[Any]]:
        self.created += [topic.topic for topic in topics]
        return {topic.topic: self.answers.get(topic.topic, _answer(None)) for topic in topics}

    def describe_topics(self, topics: Any, **_: Any) -> dict[str, Future[Any]]:
        return {name: self.answers[name] for name in topics.topic_names}


def test_topic_listing_that_fails_is_named() -> None:
    admin: Any = FakeAdmin({})
    with pytest.raises(BrokerUnavailableError, match="could not list topics"):
        partition_counts(admin)
    with pytest.raises(BrokerUnavailableError, match="could not list topics"):
        replication_factors(admin)


def test_configurations_of_missing_or_denied_topics_are_left_out_and_other_errors_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin: Any = FakeAdmin(
        {
            "orders": _answer({"cleanup.policy": SimpleNamespace(value="delete")}),
            "gone": _failure(KafkaError.UNKNOWN_TOPIC_OR_PART),
            "secret": _failure(KafkaError.TOPIC_AUTHORIZATION_FAILED),
            "broken": _failure(KafkaError.REQUEST_TIMED_OUT),
        }
    )
    with caplog.at_level(logging.WARNING):
        assert topic_configs(admin, ["orders", "gone", "secret"]) == {"orders": {"cleanup.policy": "delete"}}
    assert "DescribeConfigs is not allowed" in caplog.text
    caplog.clear()
    assert topic_configs(admin, ["secret"], warn_denied=False) == {}
    assert not caplog.text
    with pytest.raises(BrokerUnavailableError, match="read the configuration of topic broken"):
        topic_configs(admin, ["broken"])


def test_topics_that_cannot_be_created_are_named_and_one_that_exists_is_fine() -> None:
    admin: Any = FakeAdmin(
        {
            "there": _failure(KafkaError.TOPIC_ALREADY_EXISTS),
            "wide": _failure(KafkaError.INVALID_REPLICATION_FACTOR),
            "denied": _failure(KafkaError.TOPIC_AUTHORIZATION_FAILED),
            "broken": _failure(KafkaError.REQUEST_TIMED_OUT),
        }
    )
    create_topics(admin, [TopicSpec("there", 1, 1, {})])
    with pytest.raises(ConfigError, match="REPLICATION_FACTOR"):
        create_topics(admin, [TopicSpec("wide", 1, 5, {})])
    with pytest.raises(ConfigError, match="denied"):
        create_topics(admin, [TopicSpec("denied", 1, 1, {})])
    with pytest.raises(BrokerUnavailableError, match="create topic broken"):
        create_topics(admin, [TopicSpec("broken", 1, 1, {})])


def test_a_topic_whose_permissions_do_not_come_is_left_unjudged() -> None:
    admin: Any = FakeAdmin({"orders": Future()})  # never answered
    assert permissions(admin, ["orders"], timeout_s=0.01) == {("TOPIC", "orders"): None}


def test_the_producer_without_topic_creation_needs_only_the_orders_topic() -> None:
    settings = build_settings({"CREATE_TOPICS": "false"})
    admin: Any = FakeAdmin({}, topics={})
    with pytest.raises(ConfigError, match="orders"):
        ensure_topics(admin, settings)
    ensure_topics(FakeAdmin({}, topics={"orders": 4}), settings)  # type: ignore[arg-type]


def test_the_producer_creates_the_orders_topic_and_leaves_the_others_when_refused() -> None:
    settings = build_settings({})
    admin: Any = FakeAdmin({"orders-retry": _failure(KafkaError.TOPIC_AUTHORIZATION_FAILED)}, topics={})
    ensure_topics(admin, settings)
    assert admin.created[0] == "orders"
    assert "orders-retry" in admin.created


class LeaderAdmin:
    """Answers DescribeTopics for one topic with each of `answers` in turn (the last one again).

    It has no list_topics: a metadata request for the topic would create it where auto-creation is on.
    (librdkafka's mock cluster answers no DescribeTopics; tests/integration waits on a real broker.)
    """

    def __init__(self, answers: list[Future[Any]]) -> None:
        self.answers, self.asked, self.polled = answers, 0, 0.0

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Future[Any]]:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return dict.fromkeys(topics.topic_names, answer)

    def poll(self, timeout: float) -> int:
        self.polled += timeout
        return 0


def _described(*leaders: int | None) -> Future[Any]:
    partitions = [SimpleNamespace(leader=None if id_ is None else SimpleNamespace(id=id_)) for id_ in leaders]
    return _answer(SimpleNamespace(partitions=partitions))


def test_the_wait_for_leaders_asks_describe_topics_again_until_each_partition_has_one() -> None:
    admin: Any = LeaderAdmin([_failure(KafkaError.UNKNOWN_TOPIC_OR_PART), _described(1, None), _described(1, 2)])
    wait_for_leaders(admin, "ledger", within_s=30)
    assert admin.asked == 3
    assert admin.polled == pytest.approx(0.2), "between two questions the client is polled, never slept"


def test_a_topic_without_leaders_in_time_is_named() -> None:
    admin: Any = LeaderAdmin([_described(-1)])
    with pytest.raises(BrokerUnavailableError, match=r"^topic ledger was created but had no leader within 0\.3s$"):
        wait_for_leaders(admin, "ledger", within_s=0.3)
