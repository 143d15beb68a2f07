"""The Kafka ACLs each program needs, and the sentence for a permission it lacks.

Least privilege for the pipeline (docs/secured.md, "Least privilege"): each program gets
exactly the operations it performs on the resources the settings name, every name
literal except the consumer's transactional ids, which share the group's prefix
(`<group>.<host>.<slot>`, see orderpipe/consumer/instance.py). No wildcard resource and no cluster
grant: an idempotent producer needs IDEMPOTENT_WRITE on the cluster only when it
may write to no topic at all (Kafka 3.0+, KIP-679), and READ and WRITE each imply
DESCRIBE on their resource.

`dlq` is dlq.py: `list` needs only READ on the DLQ topic; `replay` needs the rest
(its ledger topic is `<DLQ topic>-replayed`, created by an administrator where the
principal may not create topics).

A grant is `required` when the program cannot work without it. DESCRIBE_CONFIGS on
the pipeline's topics is not: without it the consumer cannot check their settings
(compaction, record size, min.insync.replicas), warns and goes on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from orderpipe.config.settings import Settings
from orderpipe.core.replay import ledger_topic
from orderpipe.errors import ConfigError

__all__ = [
    "AUTHORIZATION_CODES",
    "PROGRAMS",
    "Grant",
    "Permissions",
    "denied_sentence",
    "grants",
    "lacking_sentence",
    "missing_grants",
    "require",
]

PROGRAMS = ("producer", "consumer", "stats", "dlq")
# Kafka's error names for a refused permission.
AUTHORIZATION_CODES = frozenset(
    {
        "TOPIC_AUTHORIZATION_FAILED",
        "GROUP_AUTHORIZATION_FAILED",
        "CLUSTER_AUTHORIZATION_FAILED",
        "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
    }
)
# The operations a principal may perform on each (resource type, name), as Kafka
# reports them; None where Kafka did not say.
Permissions = Mapping[tuple[str, str], "frozenset[str] | None"]


@dataclass(frozen=True)
class Grant:
    """One ALLOW ACL for a principal, from any host."""

    program: str
    operation: str  # READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS (Kafka's AclOperation names)
    resource: str  # TOPIC, GROUP, TRANSACTIONAL_ID (Kafka's ResourceType names)
    name: str
    why: str
    pattern: str = "LITERAL"  # or PREFIXED
    required: bool = True

    def describe(self) -> str:
        prefix = " (prefix)" if self.pattern == "PREFIXED" else ""
        return f"{self.operation} on {self.resource.lower().replace('_', ' ')} {self.name}{prefix}"


def grants(settings: Settings, programs: Iterable[str] = PROGRAMS) -> list[Grant]:
    """The ACLs the given programs need under these settings, in a stable order."""
    chosen = set(programs)
    unknown = chosen - set(PROGRAMS)
    if unknown:
        raise ValueError(f"unknown program {', '.join(sorted(unknown))}: expected {', '.join(PROGRAMS)}")
    s = settings
    table = [
        Grant("producer", "WRITE", "TOPIC", s.orders_topic, "publish orders"),
        Grant("consumer", "READ", "TOPIC", s.orders_topic, "consume orders"),
        Grant("consumer", "READ", "TOPIC", s.retry_topic, "consume retries"),
        Grant("consumer", "WRITE", "TOPIC", s.retry_topic, "schedule retries"),
        Grant("consumer", "WRITE", "TOPIC", s.dlq_topic, "dead-letter records"),
        Grant("consumer", "READ", "TOPIC", s.stats_topic, "restore the running average"),
        Grant("consumer", "WRITE", "TOPIC", s.stats_topic, "save the running average"),
        Grant("consumer", "READ", "GROUP", s.consumer_group, "join the group, commit offsets"),
        Grant(
            "consumer",
            "WRITE",
            "TRANSACTIONAL_ID",
            f"{s.consumer_group}.",
            "exactly-once transactions",
            pattern="PREFIXED",
        ),
        *(
            Grant("consumer", "DESCRIBE_CONFIGS", "TOPIC", topic, "check the topic's settings", required=False)
            for topic in (s.orders_topic, s.retry_topic, s.dlq_topic, s.stats_topic)
        ),
        Grant("stats", "READ", "TOPIC", s.stats_topic, "read the running average"),
        Grant("stats", "DESCRIBE", "TOPIC", s.orders_topic, "know the input partitions"),
        Grant("stats", "DESCRIBE", "TOPIC", s.retry_topic, "know the input partitions"),
        Grant("dlq", "READ", "TOPIC", s.dlq_topic, "list and replay dead letters"),
        Grant("dlq", "WRITE", "TOPIC", s.orders_topic, "replay dead letters"),
        Grant("dlq", "READ", "TOPIC", ledger_topic(s.dlq_topic), "know what was replayed"),
        Grant("dlq", "WRITE", "TOPIC", ledger_topic(s.dlq_topic), "record what was replayed"),
        Grant("dlq", "WRITE", "TRANSACTIONAL_ID", ledger_topic(s.dlq_topic), "replay exactly once"),
        Grant(
            "dlq",
            "DESCRIBE_CONFIGS",
            "TOPIC",
            ledger_topic(s.dlq_topic),
            "check the ledger is compacted",
            required=False,
        ),
    ]
    return [grant for grant in table if grant.program in chosen]


def missing_grants(needed: Iterable[Grant], permissions: Permissions) -> list[Grant]:
    """The required grants the principal lacks, judged by the operations Kafka says it may perform.

    A resource Kafka said nothing about (None) is not judged; transactional ids
    cannot be asked about, and `init_transactions` says when one is denied.
    """
    return [
        grant
        for grant in needed
        if grant.required
        and grant.resource != "TRANSACTIONAL_ID"
        and (allowed := permissions.get((grant.resource, grant.name))) is not None
        and grant.operation not in allowed
    ]


def require(settings: Settings, program: str, ask: Callable[[Sequence[str], str], Permissions]) -> None:
    """Stops a program at its start when the principal lacks a permission it needs.

    Args:
        ask: (topics, group) -> the principal's permissions on them, from Kafka.

    Raises:
        ConfigError: naming each missing permission, its resource and its purpose.
    """
    needed = grants(settings, [program])
    topics = list(dict.fromkeys(g.name for g in needed if g.resource == "TOPIC"))
    group = next((g.name for g in needed if g.resource == "GROUP"), "")
    lacking = missing_grants(needed, ask(topics, group))
    if lacking:
        raise ConfigError(lacking_sentence(program, lacking))


def lacking_sentence(program: str, lacking: Sequence[Grant]) -> str:
    """Why a program stops: the permissions it lacks, each with its resource and purpose."""
    named = "; ".join(f"{grant.describe()} (to {grant.why})" for grant in lacking)
    return (
        f"this principal lacks permissions the {program} needs: {named}; grant them (scripts/acls.sh print "
        f"User:NAME --program {program} lists every ACL the {program} needs)"
    )


def denied_sentence(what: str, needs: str) -> str:
    """Why a call Kafka refused for authorization stops the program, e.g. ("start transactions", "WRITE on ...")."""
    return f"Kafka refused to {what}: this principal lacks {needs}; grant it (scripts/acls.sh print lists the ACLs)"
