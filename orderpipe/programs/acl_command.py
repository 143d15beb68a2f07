"""`scripts/acls.sh`: print, apply or revoke the ACLs each program needs (orderpipe.core.acls).

    scripts/acls.sh print  User:pipeline [--program producer|consumer|stats|dlq ...]
    scripts/acls.sh apply  User:pipeline [--program ...]
    scripts/acls.sh revoke User:pipeline [--program ...]

Topic and group names come from the same settings as the programs (environment,
`.env`, read by the entry script acls.py); `apply` and `revoke` connect with those
settings too, so run them with the credentials of a principal that may manage ACLs
(ALTER on the cluster).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from orderpipe.config.settings import Settings
from orderpipe.core.acls import PROGRAMS, Grant, grants
from orderpipe.errors import OrderPipeError
from orderpipe.kafka.admin import change_acls
from orderpipe.kafka.clients import connect_admin
from orderpipe.programs.runtime import LoadSettings, scrubbed_output

TIMEOUT_S = 30.0


def _acl(principal: str, grant: Grant) -> tuple[Any, ...]:
    """The arguments of an AclBinding (or AclBindingFilter) for `grant`, from any host."""
    return (
        ResourceType[grant.resource],
        grant.name,
        ResourcePatternType[grant.pattern],
        principal,
        "*",
        AclOperation[grant.operation],
        AclPermissionType.ALLOW,
    )


def table(principal: str, chosen: Sequence[Grant]) -> list[str]:
    """One line per ACL, and the same ACLs as Kafka's own `kafka-acls.sh` commands."""
    lines = [f"{'program':9} {'operation':17} {'resource':17} {'pattern':9} {'name':24} why"]
    for g in chosen:
        why = g.why if g.required else f"{g.why} (optional: without it, a warning)"
        lines.append(f"{g.program:9} {g.operation:17} {g.resource:17} {g.pattern:9} {g.name:24} {why}")
    lines.append("")
    lines.append("The same with Kafka's tools (kafka-acls.sh --bootstrap-server ... --command-config FILE):")
    option = {"TOPIC": "--topic", "GROUP": "--group", "TRANSACTIONAL_ID": "--transactional-id"}
    for g in chosen:
        operation = "".join(part.capitalize() for part in g.operation.split("_"))
        pattern = " --resource-pattern-type prefixed" if g.pattern == "PREFIXED" else ""
        lines.append(
            f"  --add --allow-principal {principal} --operation {operation} {option[g.resource]} {g.name}{pattern}"
        )
    return lines


def main(load_settings: LoadSettings, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/acls.sh", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("print", "apply", "revoke"))
    parser.add_argument("principal", help="e.g. User:pipeline")
    parser.add_argument("--program", action="append", choices=PROGRAMS, help="default: all of them")
    args = parser.parse_args(argv)
    if not args.principal.startswith("User:") or len(args.principal) <= len("User:"):
        parser.error(f"the principal must look like User:name, got {args.principal!r}")
    try:
        settings = load_settings({})
        chosen = grants(settings, args.program or PROGRAMS)
    except OrderPipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.action == "print":
        print("\n".join(table(args.principal, chosen)))
        return 0
    with scrubbed_output(settings):
        try:
            done = _change(args.action, args.principal, chosen, settings)
        except OrderPipeError as exc:  # KafkaCallError (exit code 1) when Kafka refused or failed
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    print(f"{'granted' if args.action == 'apply' else 'revoked'} {done} ACLs for {args.principal}")
    return 0


def _change(action: str, principal: str, chosen: Sequence[Grant], settings: Settings) -> int:
    """Applies or revokes the ACLs; returns how many were created or deleted."""
    admin = connect_admin(settings)
    # The same ACL may serve two programs (READ on the stats topic): each is sent once.
    acls = list(dict.fromkeys(_acl(principal, g) for g in chosen))
    return change_acls(admin, action, acls, TIMEOUT_S)
