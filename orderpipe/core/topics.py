"""The pipeline's topics: which to create and how, and whether existing ones will do, free of Kafka.

`orders` gets ORDERS_PARTITIONS partitions; `orders-retry` and `orders-dlq` get as
many as `orders` really has, so an order's records keep the same partition number on
every topic. `orders-stats` is compacted, with one partition, so one reader sees
every key's latest value in order; its segments roll every hour and it is cleaned
once a tenth of it is stale, so compaction really runs and the topic stays small.

Topics that already exist (made by hand, by an older version, by another tool) are
checked before anything is read: a retry topic with another partition count than
`orders`, or a stats topic with several partitions or without compaction, stops the
consumer with a sentence that says what the topic has, what it needs and how to fix it.
So does an output topic whose `max.message.bytes` is below the producer's 1,000,000:
the broker limits a whole batch of records by it, and librdkafka fills batches up to
that size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orderpipe.config.settings import Settings
from orderpipe.core.ports import TopicSpec
from orderpipe.core.replicas import parse_min_isr
from orderpipe.core.stats import StatsKeys

__all__ = [
    "PRODUCER_MESSAGE_MAX_BYTES",
    "STATS_TOPIC_CONFIG",
    "compaction_problem",
    "largest_record",
    "ledger_spec",
    "missing_sentence",
    "missing_topics",
    "partition_warning",
    "stats_keys",
    "topic_problems",
    "weak_topics",
]

STATS_TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "3600000", "min.cleanable.dirty.ratio": "0.1"}
# The producers' message.max.bytes (librdkafka's default, set explicitly), and the
# broker's default max.message.bytes for a topic that does not say.
PRODUCER_MESSAGE_MAX_BYTES = 1_000_000
BROKER_MESSAGE_MAX_BYTES = 1_048_588


def missing_topics(settings: Settings, existing: Mapping[str, int]) -> list[TopicSpec]:
    """The pipeline's topics that are not in `existing` (topic name -> partition count)."""
    partitions = existing.get(settings.orders_topic, settings.orders_partitions)
    durability = {"min.insync.replicas": str(settings.min_isr)}
    wanted = [
        TopicSpec(name, partitions, settings.replication_factor, durability)
        for name in (settings.orders_topic, settings.retry_topic, settings.dlq_topic)
    ]
    wanted.append(TopicSpec(settings.stats_topic, 1, settings.replication_factor, {**STATS_TOPIC_CONFIG, **durability}))
    return [spec for spec in wanted if spec.name not in existing]


def partition_warning(settings: Settings, existing: Mapping[str, int]) -> str | None:
    """A warning when the orders topic exists with another partition count than ORDERS_PARTITIONS.

    Not an error: the pipeline follows the topic (its retry and DLQ topics are created
    with the same count), and a topic made by hand may have its count on purpose. But a
    broker that creates topics on first use (`auto.create.topics.enable`, Kafka's
    default) gives them `num.partitions`, 1 by default, when any client names one first.
    """
    count = existing.get(settings.orders_topic)
    if count is None or count == settings.orders_partitions:
        return None
    return (
        f"topic {settings.orders_topic} has {count} partition{'s' if count != 1 else ''}, not ORDERS_PARTITIONS="
        f"{settings.orders_partitions} (another client may have had the broker create it with its default "
        f"num.partitions); the pipeline uses {count}: to have {settings.orders_partitions}, delete it while it is "
        f"empty, or add partitions to it and to {settings.retry_topic} and {settings.dlq_topic} together"
    )


def ledger_spec(settings: Settings, name: str) -> TopicSpec:
    """The replay ledger (orderpipe.core.replay): compacted like the stats topic, one partition, durable as the rest."""
    config = {**STATS_TOPIC_CONFIG, "min.insync.replicas": str(settings.min_isr)}
    return TopicSpec(name, 1, settings.replication_factor, config)


def weak_topics(
    settings: Settings, replication: Mapping[str, int], configs: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """The pipeline's existing topics less durable than the settings ask for, one warning each.

    Args:
        replication: each topic's replication factor (its fewest replicas of any partition).
        configs: topic configurations; a topic without one (DescribeConfigs denied)
            is judged by its replication factor only.
    """
    warnings = []
    for topic in (settings.orders_topic, settings.retry_topic, settings.dlq_topic, settings.stats_topic):
        if topic not in replication:
            continue
        weaker = []
        if replication[topic] < settings.replication_factor:
            weaker.append(f"replication factor {replication[topic]} (REPLICATION_FACTOR={settings.replication_factor})")
        isr = parse_min_isr(configs.get(topic, {}).get("min.insync.replicas"))
        if isr is not None and isr < settings.min_isr:
            weaker.append(f"min.insync.replicas {isr} (MIN_INSYNC_REPLICAS={settings.min_isr})")
        if weaker:
            warnings.append(
                f"topic {topic} has {' and '.join(weaker)}: a broker failure may lose what it acknowledged; "
                f"raise them with kafka-reassign-partitions.sh and kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config min.insync.replicas={settings.min_isr}"
            )
    return warnings


def stats_keys(settings: Settings, existing: Mapping[str, int]) -> StatsKeys:
    """The stats keys of the consumer group's input partitions, given each topic's partition count."""
    inputs = (settings.orders_topic, settings.retry_topic)
    return StatsKeys(settings.consumer_group, {topic: existing.get(topic, 0) for topic in inputs})


def missing_sentence(missing: Sequence[TopicSpec]) -> str:
    """Why the programs stop when topics are missing and they may not create them.

    One topic is "topic a"; several are "topics a, b and c", and the sentence is plural throughout.
    """
    names = [spec.name for spec in missing]
    plural = len(names) > 1
    topics = f"topics {', '.join(names[:-1])} and {names[-1]}" if plural else f"topic {names[0]}"
    exist, they, them = ("do not exist", "they", "them") if plural else ("does not exist", "it", "it")
    return (
        f"{topics} {exist}, or this principal may not see {them} (any permission on a topic lets it see "
        f"the topic), and {they} may not be created here (CREATE_TOPICS is false, or the principal lacks CREATE on "
        f"{them}): create {them} with the partitions and settings in docs/wire-formats.md's Topics section, or "
        f"grant the permissions 'scripts/acls.sh print' lists"
    )


def topic_problems(
    settings: Settings, existing: Mapping[str, int], configs: Mapping[str, Mapping[str, str]]
) -> list[str]:
    """What is wrong with the pipeline's existing topics, one sentence each (none when all will do).

    Args:
        existing: every topic's partition count.
        configs: the configuration of the stats topic (others may be there too).
    """
    problems: list[str] = []
    orders, retry, stats = settings.orders_topic, settings.retry_topic, settings.stats_topic
    if existing.get(retry) != existing.get(orders):
        problems.append(
            f"{retry} has {existing.get(retry)} partitions but {orders} has {existing.get(orders)}: they need the same "
            f"count, so that an order's retries stay on its partition number; add partitions to the one with fewer "
            f"(kafka-topics.sh --alter --topic NAME --partitions N) or point RETRY_TOPIC at a new topic"
        )
    if existing.get(stats) != 1:
        problems.append(
            f"{stats} has {existing.get(stats)} partitions but needs exactly 1, so that one reader sees every "
            f"update in order; point STATS_TOPIC at a new topic (the consumer creates it) or delete this one"
        )
    for topic in (retry, settings.dlq_topic, stats):
        limit = _message_limit(configs.get(topic, {}))
        if limit < PRODUCER_MESSAGE_MAX_BYTES:
            problems.append(
                f"{topic} has max.message.bytes={limit} but needs at least {PRODUCER_MESSAGE_MAX_BYTES}, the most the "
                f"consumer's producer puts in one batch; run kafka-configs.sh --alter --entity-type topics "
                f"--entity-name {topic} --add-config max.message.bytes={BROKER_MESSAGE_MAX_BYTES}"
            )
    uncompacted = compaction_problem(stats, configs.get(stats, {}), "its old values are deleted or grow without end")
    if uncompacted is not None:
        problems.append(uncompacted)
    return problems


def compaction_problem(topic: str, config: Mapping[str, str], otherwise: str) -> str | None:
    """Why a topic that must be compacted will not do, with the fix; None when it is (or its configuration is unknown).

    A topic whose configuration could not be read (DescribeConfigs denied) is not judged.

    Args:
        otherwise: what goes wrong without compaction.
    """
    policy = config.get("cleanup.policy", "compact")
    if "compact" in policy.split(","):
        return None
    return (
        f"{topic} has cleanup.policy={policy} but needs compact, or {otherwise}; run kafka-configs.sh --alter "
        f"--entity-type topics --entity-name {topic} --add-config cleanup.policy=compact"
    )


def largest_record(settings: Settings, configs: Mapping[str, Mapping[str, str]]) -> int:
    """The largest record (see records.record_bytes) that both the retry and the DLQ topic take."""
    topics = (settings.retry_topic, settings.dlq_topic)
    return min(PRODUCER_MESSAGE_MAX_BYTES, *(_message_limit(configs.get(topic, {})) for topic in topics))


def _message_limit(config: Mapping[str, str]) -> int:
    text = config.get("max.message.bytes", "")
    return int(text) if text.isdecimal() and len(text) < 12 else BROKER_MESSAGE_MAX_BYTES
