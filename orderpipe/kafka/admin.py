"""Kafka's admin questions: topics (partitions, replicas, configurations, creation), permissions, in-sync replicas.

Each question is asked with a timeout, and its errors come back as the project's
own (a refusal named, a topic that exists already accepted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AdminClient,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from orderpipe.config.settings import Settings
from orderpipe.core.acls import AUTHORIZATION_CODES, require
from orderpipe.core.ports import InSync, TopicSpec
from orderpipe.core.replicas import parse_min_isr
from orderpipe.core.topics import missing_sentence, missing_topics, partition_warning
from orderpipe.errors import BrokerUnavailableError, ConfigError, KafkaCallError, OrderPipeError
from orderpipe.kafka.clients import call_error, poll_for
from orderpipe.kafka.watchdog import WATCHDOG, WATCHDOG_GRACE_S

__all__ = [
    "TOPIC_TIMEOUT_S",
    "Answered",
    "change_acls",
    "create_topics",
    "ensure_topics",
    "in_sync_replicas",
    "partition_counts",
    "permissions",
    "replication_factors",
    "require_grants",
    "topic_configs",
    "wait_for_leaders",
]

log = logging.getLogger(__name__)

TOPIC_TIMEOUT_S = 30.0
# A metadata request on the running path (ReplicaWatch): any broker answers it.
METADATA_TIMEOUT_S = 5.0
# Between two questions of wait_for_leaders, the admin client serves its callbacks this long.
LEADER_POLL_S = 0.1
T = TypeVar("T")


class Answered(Generic[T]):
    """A `Pending` whose answer is already in: for a call made blocking, with a short timeout."""

    def __init__(self, value: T | None = None, error: KafkaCallError | None = None) -> None:
        self._value, self._error = value, error

    def done(self) -> bool:
        return True

    def result(self) -> T:
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def in_sync_replicas(
    client: Any, topics: Sequence[str], timeout_s: float = METADATA_TIMEOUT_S, *, admin: AdminClient | None = None
) -> Answered[InSync]:
    """Each partition of `topics` with its in-sync and all replicas, from a client's metadata.

    `client` is a running producer or consumer: while the cluster fails over, this is
    asked every ReplicaWatch.ASK_EVERY_S, and a metadata request (answered by any
    broker) needs no coordinator. With `admin` (the producer's), each topic's
    min.insync.replicas is read afresh too (DescribeConfigs, answered by any broker;
    left out where denied); without it `InSync.minimums` is empty and the minimums
    read at start stand (the consumer keeps no admin client while it runs).
    """
    counts, replicas = {}, {}
    for topic in topics:
        try:
            with WATCHDOG.guard(f"read the metadata of {topic}", timeout_s + WATCHDOG_GRACE_S):
                metadata = client.list_topics(topic=topic, timeout=timeout_s).topics.get(topic)
        except KafkaException as exc:
            return Answered(error=call_error(exc, f"read the metadata of {topic}"))
        if metadata is None or metadata.error is not None:
            problem = metadata.error if metadata is not None else "not in the answer"
            return Answered(error=KafkaCallError(f"no metadata for {topic}: {problem}", "_NO_TOPIC"))
        for partition in metadata.partitions.values():
            counts[(topic, int(partition.id))] = len(partition.isrs)
            replicas[(topic, int(partition.id))] = len(partition.replicas)
    minimums: dict[str, int] = {}
    if admin is not None:
        try:
            configs = topic_configs(admin, topics, timeout_s, warn_denied=False)
        except OrderPipeError as exc:  # no answer while the cluster fails over: the known minimums stand
            log.debug("could not read min.insync.replicas: %s", exc)
            configs = {}
        for topic, config in configs.items():
            if (value := parse_min_isr(config.get("min.insync.replicas"))) is not None:
                minimums[topic] = value
    return Answered(InSync(counts, replicas, minimums))


def partition_counts(admin: AdminClient, timeout_s: float = TOPIC_TIMEOUT_S) -> dict[str, int]:
    """Every topic's partition count."""
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerUnavailableError(str(call_error(exc, "list topics"))) from exc
    return {name: len(metadata.partitions) for name, metadata in topics.items()}


def replication_factors(admin: AdminClient, timeout_s: float = TOPIC_TIMEOUT_S) -> dict[str, int]:
    """Every topic's replication factor: the fewest replicas any of its partitions has."""
    try:
        topics = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerUnavailableError(str(call_error(exc, "list topics"))) from exc
    return {
        name: min((len(p.replicas) for p in metadata.partitions.values()), default=0)
        for name, metadata in topics.items()
    }


def topic_configs(
    admin: AdminClient, names: Sequence[str], timeout_s: float = TOPIC_TIMEOUT_S, *, warn_denied: bool = True
) -> dict[str, dict[str, str]]:
    """Each named topic's configuration, defaults included (the ones that do not exist are left out).

    One this principal may not read is left out too, with a warning unless `warn_denied` is false.
    """
    resources = [ConfigResource(ResourceType.TOPIC, name) for name in names]
    configs: dict[str, dict[str, str]] = {}
    if not resources:
        return configs
    for resource, future in admin.describe_configs(resources, request_timeout=timeout_s).items():
        try:
            entries = future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailableError(
                f"could not read the configuration of topic {resource.name} within {timeout_s:g}s"
            ) from exc
        except KafkaException as exc:
            error = call_error(exc, f"read the configuration of topic {resource.name}")
            if error.code == "UNKNOWN_TOPIC_OR_PART":
                continue
            if error.code in AUTHORIZATION_CODES:
                if warn_denied:
                    log.warning("⚠ %s (DescribeConfigs is not allowed); its configuration is not checked", error)
                continue
            raise BrokerUnavailableError(str(error)) from exc
        configs[resource.name] = {name: entry.value or "" for name, entry in entries.items()}
    return configs


def create_topics(admin: AdminClient, specs: Sequence[TopicSpec], timeout_s: float = TOPIC_TIMEOUT_S) -> None:
    """Creates topics; one that another process created first is fine."""
    if not specs:
        return
    wanted = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=dict(spec.config),
        )
        for spec in specs
    ]
    for name, future in admin.create_topics(wanted, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise BrokerUnavailableError(f"could not create topic {name} within {timeout_s:g}s") from exc
        except KafkaException as exc:
            error = call_error(exc, f"create topic {name}")
            if error.code == "TOPIC_ALREADY_EXISTS":
                continue
            if error.code in ("INVALID_REPLICATION_FACTOR", "INVALID_PARTITIONS"):
                raise ConfigError(f"{error} (check ORDERS_PARTITIONS and REPLICATION_FACTOR)") from exc
            if error.code in AUTHORIZATION_CODES:
                spec = next(s for s in specs if s.name == name)
                raise ConfigError(missing_sentence([spec])) from exc
            raise BrokerUnavailableError(str(error)) from exc


def wait_for_leaders(admin: AdminClient, name: str, within_s: float, timeout_s: float = TOPIC_TIMEOUT_S) -> None:
    """Waits until every partition of a topic just created has a leader.

    Asked with DescribeTopics, which never asks the broker to create a topic (a
    metadata request naming one can, on a broker with auto.create.topics.enable). A
    question that fails (the topic not known yet to the broker asked, say) is asked
    again, the client polled in between.

    Raises:
        BrokerUnavailableError: some partition had no leader within `within_s`.
    """
    deadline = time.monotonic() + within_s
    while True:
        try:
            future = admin.describe_topics(TopicCollection([name]), request_timeout=timeout_s)[name]
            partitions = future.result(timeout=timeout_s).partitions
            if all(p.leader is not None and p.leader.id >= 0 for p in partitions):
                return
        except (KafkaException, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise BrokerUnavailableError(f"topic {name} was created but had no leader within {within_s:g}s")
        poll_for(admin, LEADER_POLL_S)


def permissions(
    admin: AdminClient, topics: Sequence[str], group: str = "", timeout_s: float = TOPIC_TIMEOUT_S
) -> dict[tuple[str, str], frozenset[str] | None]:
    """The operations this principal may perform on each topic (and the group), as Kafka reports them.

    A topic or group it may not even describe has no operations (Kafka answers so
    for a topic that does not exist, too, so as not to tell); one Kafka says nothing
    about (missing, not answered, or a broker too old to report them) has None.
    """
    answers: dict[tuple[str, str], frozenset[str] | None] = {}
    pending: list[tuple[tuple[str, str], Future[Any]]] = []
    if topics:
        futures = admin.describe_topics(
            TopicCollection(list(topics)), include_authorized_operations=True, request_timeout=timeout_s
        )
        pending += [(("TOPIC", name), future) for name, future in futures.items()]
    if group:
        futures = admin.describe_consumer_groups([group], include_authorized_operations=True, request_timeout=timeout_s)
        pending += [(("GROUP", group), futures[group])]
    for key, future in pending:
        what = f"describe {key[0].lower()} {key[1]}"
        try:
            operations = future.result(timeout=timeout_s).authorized_operations
        except TimeoutError:
            log.debug("could not %s within %gs; its permissions are not checked", what, timeout_s)
            answers[key] = None
            continue
        except KafkaException as exc:
            error = call_error(exc, what)
            # Anything but a refusal (a topic or group that does not exist yet, a group
            # coordinator still loading on a broker just started) leaves it unjudged: the
            # calls that follow say what they need if it is really missing.
            answers[key] = frozenset() if error.code in AUTHORIZATION_CODES else None
            if answers[key] is None:
                log.debug("%s; its permissions are not checked", error)
            continue
        answers[key] = None if operations is None else frozenset(op.name for op in operations)
    return answers


def change_acls(admin: AdminClient, action: str, acls: Sequence[tuple[Any, ...]], timeout_s: float) -> int:
    """Creates (`apply`) or deletes (`revoke`) ACLs, each given as AclBinding's arguments; returns how many changed.

    Raises:
        KafkaCallError: Kafka refused or failed, as `could not apply the ACLs: ...` (or revoke).
    """
    futures: dict[Any, Future[Any]]
    try:
        if action == "apply":
            futures = admin.create_acls([AclBinding(*acl) for acl in acls], request_timeout=timeout_s)
        else:
            futures = admin.delete_acls([AclBindingFilter(*acl) for acl in acls], request_timeout=timeout_s)
        # create_acls answers None per binding; delete_acls the bindings it deleted.
        return sum(1 if result is None else len(result) for result in (f.result() for f in futures.values()))
    except KafkaException as exc:
        raise call_error(exc, f"{action} the ACLs") from exc


def require_grants(admin: AdminClient, settings: Settings, program: str) -> None:
    """Stops a program at its start when the principal lacks a permission it needs (orderpipe.core.acls).

    Raises:
        ConfigError: naming each missing permission, its resource and its purpose.
    """
    require(settings, program, lambda topics, group: permissions(admin, topics, group))


def ensure_topics(admin: AdminClient, settings: Settings) -> None:
    """The producer's topic set-up: creates the pipeline's missing topics where it may.

    Only the orders topic must exist for the producer; the others are created as a
    convenience (so that one producer run sets up a new cluster) and skipped when
    this principal may not create them.

    Raises:
        ConfigError: the orders topic is missing and may not be created.
    """
    counts = partition_counts(admin)
    if (warning := partition_warning(settings, counts)) is not None:
        log.warning("⚠ %s", warning)
    missing = missing_topics(settings, counts)
    needed = [spec for spec in missing if spec.name == settings.orders_topic]
    if not settings.create_topics:
        if needed:
            raise ConfigError(missing_sentence(needed))
        return
    create_topics(admin, needed)
    try:
        create_topics(admin, [spec for spec in missing if spec.name != settings.orders_topic])
    except ConfigError as exc:  # refused: the consumer's own set-up names what it needs
        log.debug("not creating the consumer's topics: %s", exc)
