"""A stable transactional id per consumer process, so a restart cleans up after a crash at once.

A consumer killed mid-transaction leaves that transaction open, and every
read_committed reader of the topics it wrote (`orders-retry`, `orders-stats`) waits
until it ends. The broker aborts it when `transaction.timeout.ms` runs out, or at
once when a new producer calls `init_transactions` with the same transactional id.

So each consumer process takes the lowest free numbered slot on its machine (held by
an exclusive file lock, which the operating system releases when the process dies,
however it dies) and builds its transactional id from the group, the host name and
the slot. A consumer restarted after a crash finds its predecessor's slot free,
takes the same id, and aborts the open transaction while it starts. Zombie fencing
does not depend on this id: the group generation sent with the offsets does that.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orderpipe.errors import OrderPipeError

__all__ = ["InstanceSlot", "claim_slot"]

MAX_SLOTS = 256

if sys.platform != "win32":
    import fcntl


@dataclass
class InstanceSlot:
    """A claimed slot; keep it for the life of the consumer, then `release` it."""

    transactional_id: str
    handle: IO[str] | None

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def claim_slot(group: str, lock_dir: Path | None = None) -> InstanceSlot:
    """Claims the lowest free slot for `group` on this machine.

    Raises:
        OrderPipeError: all slots are taken (more than MAX_SLOTS consumers of one group
            on one machine).
    """
    host = _safe(socket.gethostname()) or "host"
    if sys.platform == "win32":  # no fcntl: the id is unique per process, recovery waits for the timeout
        return InstanceSlot(f"{group}.{host}.pid{os.getpid()}", None)
    folder = lock_dir or Path(tempfile.gettempdir()) / "orderpipe-slots"
    folder.mkdir(parents=True, exist_ok=True)
    for slot in range(MAX_SLOTS):
        handle = (folder / f"{_safe(group)}.{slot}.lock").open("a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return InstanceSlot(f"{group}.{host}.{slot}", handle)
    raise OrderPipeError(f"all {MAX_SLOTS} consumer slots of group {group} on this machine are taken")
