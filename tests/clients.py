"""The librdkafka settings every Kafka client of the tests and benchmarks is made from.

Brokers as they come (`auto.create.topics.enable=true`, `num.partitions=1`; the
single-node broker of scripts/broker.sh is one) create a topic that a metadata
request names: `AdminClient.list_topics(topic=NAME)`, a consumer's `list_topics` or
a producer's first send would make NAME with one partition, and the programs would
then find a topic they did not make. librdkafka asks for that by default for
producers and admin clients. No client of the tests asks for it, as no client of the
programs does (orderpipe/config/settings.py): a test that needs a topic before the programs
run creates it, with the partitions it needs.

tests/unit/test_test_clients.py checks that every client here is made this way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NO_AUTO_CREATE", "client_config"]

NO_AUTO_CREATE = "allow.auto.create.topics"


def client_config(bootstrap: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings for a Producer, Consumer or AdminClient of `bootstrap` that never auto-creates a topic.

    Args:
        extra: more settings (a login, `group.id`, `acks`); they cannot turn auto-creation on.
    """
    return {**(extra or {}), "bootstrap.servers": bootstrap, NO_AUTO_CREATE: False}
