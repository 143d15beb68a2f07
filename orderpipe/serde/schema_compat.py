"""Whether a new order schema keeps a registry subject's compatibility level, and if not, which field breaks it.

A schema registry answers only yes or no (Apicurio's answer names no field), so the
producer asks it first and then finds the reason here, to name the field in its one
sentence. The rules themselves are Avro's schema resolution, in
`orderpipe.serde.codec.incompatibility`.
"""

from __future__ import annotations

from typing import Any

from orderpipe.serde.codec import incompatibility

__all__ = ["LEVELS", "breaking_change"]

# Compatibility levels as registries name them, and which directions each checks.
LEVELS: dict[str, tuple[str, ...]] = {
    "NONE": (),
    "BACKWARD": ("backward",),
    "BACKWARD_TRANSITIVE": ("backward",),
    "FORWARD": ("forward",),
    "FORWARD_TRANSITIVE": ("forward",),
    "FULL": ("backward", "forward"),
    "FULL_TRANSITIVE": ("backward", "forward"),
}


def breaking_change(level: str, new: Any, latest: Any) -> str | None:
    """Why `new` breaks `level` compatibility with `latest` (parsed schemas), or None when it does not.

    BACKWARD: readers of `new` must read data written with `latest`; FORWARD: readers
    of `latest` must read data written with `new`; FULL: both. The transitive levels
    are judged against `latest` only (the registry judges them against every version);
    an unknown level is judged both ways.
    """
    for direction in LEVELS.get(level.upper(), ("backward", "forward")):
        if direction == "backward" and (problem := incompatibility(latest, new)) is not None:
            return f"the new schema cannot read data written with the latest: {problem}"
        if direction == "forward" and (problem := incompatibility(new, latest)) is not None:
            return f"readers of the latest cannot read data written with the new schema: {problem}"
    return None
