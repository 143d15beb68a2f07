"""Unit tests of the security edge: connecting (with login verdicts), permissions as Kafka reports them, acls.sh.

No broker: a loopback socket that accepts and closes stands for a listener that
speaks another protocol, and a small stand-in admin client returns the futures
confluent-kafka's would (answers and errors). tests/secured runs the same paths
against the secured broker.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

import acls
from orderpipe.config.settings import build_settings
from orderpipe.errors import BrokerUnavailableError, ConfigError
from orderpipe.kafka.admin import permissions, require_grants
from orderpipe.kafka.clients import connect_admin
from orderpipe.programs import acl_command
from tests.unit.mock_cluster import MockCluster


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A loopback port that accepts each connection and closes it at once, as a TLS listener does to plaintext."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_a_listener_that_closes_every_plaintext_request_is_named_when_time_runs_out(closing_port: int) -> None:
    settings = build_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closing_port}"})
    with pytest.raises(ConfigError, match=f"127.0.0.1:{closing_port} closed the connection at the client's first"):
        connect_admin(settings, timeout_s=2)


def test_tls_to_a_listener_that_is_not_tls_is_named_at_once(closing_port: int) -> None:
    settings = build_settings(
        {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{closing_port}", "KAFKA_SECURITY_PROTOCOL": "SSL"}
    )
    with pytest.raises(ConfigError, match="is a plaintext listener and this client speaks TLS to it"):
        connect_admin(settings, timeout_s=5)


def test_nothing_listening_is_unavailable_not_a_configuration_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as spare:
        port = spare.getsockname()[1]
    settings = build_settings({"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"})
    with pytest.raises(BrokerUnavailableError, match=r"scripts/broker\.sh up"):
        connect_admin(settings, timeout_s=1.5)


# Permissions, as a stand-in admin client answers them.
@dataclass
class Described:
    authorized_operations: list[Any] | None


@dataclass
class Operation:
    name: str


def _answer(value: Any) -> Future[Any]:
    future: Future[Any] = Future()
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)
    return future


def _denied(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


class StandInAdmin:
    """describe_topics and describe_consumer_groups with fixed answers per name."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self._answers = answers

    def describe_topics(self, topics: Any, **_: Any) -> dict[str, Future[Any]]:
        return {name: _answer(self._answers[name]) for name in topics.topic_names}

    def describe_consumer_groups(self, groups: list[str], **_: Any) -> dict[str, Future[Any]]:
        return {name: _answer(self._answers[name]) for name in groups}


def _ops(*names: str) -> Described:
    return Described([Operation(name) for name in names])


def test_permissions_read_kafkas_answers_and_errors() -> None:
    admin = StandInAdmin(
        {
            "orders": _ops("READ", "DESCRIBE"),
            "hidden": _denied(KafkaError.TOPIC_AUTHORIZATION_FAILED),
            "absent": _denied(KafkaError.UNKNOWN_TOPIC_OR_PART),
            "old-broker": Described(None),
            "group": _denied(KafkaError.GROUP_AUTHORIZATION_FAILED),
        }
    )
    seen = permissions(admin, ["orders", "hidden", "absent", "old-broker"], "group")  # type: ignore[arg-type]
    assert seen == {
        ("TOPIC", "orders"): frozenset({"READ", "DESCRIBE"}),
        ("TOPIC", "hidden"): frozenset(),
        ("TOPIC", "absent"): None,
        ("TOPIC", "old-broker"): None,
        ("GROUP", "group"): frozenset(),
    }


def test_any_other_answer_leaves_the_permission_unjudged() -> None:
    admin = StandInAdmin(
        {
            "orders": _denied(KafkaError.REQUEST_TIMED_OUT),
            "group": _denied(KafkaError.COORDINATOR_LOAD_IN_PROGRESS),
        }
    )
    assert permissions(admin, ["orders"], "group") == {("TOPIC", "orders"): None, ("GROUP", "group"): None}  # type: ignore[arg-type]


def test_the_producer_stops_without_write_on_its_topic() -> None:
    admin = StandInAdmin({"orders": _ops("READ", "DESCRIBE")})
    with pytest.raises(ConfigError, match="WRITE on topic orders"):
        require_grants(admin, build_settings({}), "producer")  # type: ignore[arg-type]


# scripts/acls.sh
def test_acls_print_needs_no_broker(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERS_TOPIC", "shop")
    assert acls.main(["print", "User:pipeline", "--program", "producer"]) == 0
    out = capsys.readouterr().out
    assert "producer  WRITE" in out
    assert "--add --allow-principal User:pipeline --operation Write --topic shop" in out


def test_acls_refuses_a_principal_that_is_not_a_user() -> None:
    with pytest.raises(SystemExit):
        acls.main(["print", "pipeline"])


def test_acls_apply_names_an_unreachable_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(settings: object) -> None:
        raise BrokerUnavailableError("Cannot reach the Kafka broker at h:1")

    monkeypatch.setattr(acl_command, "connect_admin", unreachable)
    assert acls.main(["apply", "User:pipeline"]) == 1
    assert "error: Cannot reach the Kafka broker at h:1" in capsys.readouterr().err


class AclAdmin:
    """create_acls and delete_acls answering as confluent-kafka does (None, or the deleted bindings)."""

    def __init__(self, deleted_each: int, failure: KafkaException | None = None) -> None:
        self.deleted_each, self.failure = deleted_each, failure
        self.sent: list[Any] = []

    def create_acls(self, bindings: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        self.sent += bindings
        return {b: _answer(self.failure or None) for b in bindings}

    def delete_acls(self, filters: list[Any], **_: Any) -> dict[Any, Future[Any]]:
        self.sent += filters
        return {f: _answer([f] * self.deleted_each) for f in filters}


@pytest.mark.parametrize(
    ("action", "deleted_each", "said"),
    [("apply", 0, "granted 3"), ("revoke", 1, "revoked 3"), ("revoke", 0, "revoked 0")],
)
def test_acls_apply_and_revoke_say_how_many_acls_changed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, action: str, deleted_each: int, said: str
) -> None:
    admin = AclAdmin(deleted_each)
    monkeypatch.setattr(acl_command, "connect_admin", lambda settings: admin)
    assert acls.main([action, "User:pipeline", "--program", "stats"]) == 0
    assert f"{said} ACLs for User:pipeline" in capsys.readouterr().out
    assert len(admin.sent) == 3, "READ on the stats topic, DESCRIBE on orders and orders-retry"


def test_acls_apply_names_a_refusal(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    admin = AclAdmin(0, _denied(KafkaError.CLUSTER_AUTHORIZATION_FAILED))
    monkeypatch.setattr(acl_command, "connect_admin", lambda settings: admin)
    assert acls.main(["apply", "User:pipeline"]) == 1
    assert "could not apply the ACLs" in capsys.readouterr().err


def test_the_mock_cluster_still_connects(mock_cluster: MockCluster) -> None:
    """The happy path of connect_admin, on librdkafka's mock cluster."""
    admin = connect_admin(mock_cluster.settings(), timeout_s=10)
    assert admin is not None
