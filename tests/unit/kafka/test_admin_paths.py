"""No coordinator-targeted admin request on the programs' running paths (reads the source only).

librdkafka 2.16 crashes (use after free in `rd_kafka_cgrp_op`) when such a request
meets a coordinator failover (its issues 4605 and 3663). The package may ask one
thing of a group coordinator through the admin client: the group's permissions in
the start-up check (`orderpipe.kafka.admin.permissions`), before any other client of the
process exists. Committed offsets are read through the group consumer.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[3] / "orderpipe"
COORDINATOR_REQUESTS = {
    "list_consumer_group_offsets",
    "describe_consumer_groups",
    "alter_consumer_group_offsets",
    "delete_consumer_groups",
    "list_consumer_groups",
}
ALLOWED = {("kafka/admin.py", "permissions", "describe_consumer_groups")}


def _calls() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and node.attr in COORDINATOR_REQUESTS:
                    found.append((path.relative_to(PACKAGE).as_posix(), function.name, node.attr))
    return found


def test_only_the_start_up_permission_check_asks_a_group_coordinator_through_the_admin_client() -> None:
    assert set(_calls()) == ALLOWED


def test_the_consumer_reads_committed_offsets_through_its_group_consumer() -> None:
    source = (PACKAGE / "kafka" / "edge.py").read_text(encoding="utf-8")
    committed = source[source.index("    def committed(") :]
    committed = committed[: committed.index("\n    def ", 1)]
    assert "self._consumer.committed(" in committed
    assert "_admin" not in committed
