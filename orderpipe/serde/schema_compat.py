"""Avro schema resolution: whether data written with one schema reads with another, and which field breaks it.

`incompatibility` applies the rules of the Avro specification. The decoder names its
answer when a writer schema cannot be resolved to ours; the producer uses it through
`breaking_change`, because a schema registry answers only yes or no (Apicurio's answer
names no field) on whether a new schema keeps a subject's compatibility level, and the
producer's one sentence should name the field.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LEVELS", "breaking_change", "incompatibility"]

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


_PROMOTIONS = {
    "int": ("long", "float", "double"),
    "long": ("float", "double"),
    "float": ("double",),
    "string": ("bytes",),
    "bytes": ("string",),
}


def incompatibility(writer: Any, reader: Any) -> str | None:
    """Why data written with `writer` cannot be read with `reader` under Avro schema resolution, or None.

    Both are parsed schemas (fastavro's form). The rules of the Avro specification:
    a reader's field missing from the writer needs a default, a writer's field missing
    from the reader is skipped, a type may change only by a promotion (int to long,
    float or double; long to float or double; float to double; string to and from
    bytes), records and fixed types keep their names, an enum reader without a default
    knows every writer symbol, and every branch of a writer's union must be readable.
    Strict: a writer union branch the reader cannot read is a problem even if no
    record uses it. Checking both directions between consecutive versions is the
    compatibility test of `tests/unit/serde/test_schema_compat.py`.
    """
    return _Resolution(writer, reader).problem(writer, reader, "")


class _Resolution:
    """One writer-to-reader check; named types are looked up in each schema's own names."""

    def __init__(self, writer: Any, reader: Any) -> None:
        self._writer_names = _named_types(writer)
        self._reader_names = _named_types(reader)
        self._records_seen: set[tuple[str, str]] = set()  # recursive records are checked once

    def problem(self, writer: Any, reader: Any, where: str) -> str | None:
        writer = self._writer_names.get(writer, writer) if isinstance(writer, str) else writer
        reader = self._reader_names.get(reader, reader) if isinstance(reader, str) else reader
        if isinstance(writer, list):
            for branch in writer:
                if (problem := self.problem(branch, reader, where)) is not None:
                    return problem
            return None
        if isinstance(reader, list):
            if any(self.problem(writer, branch, where) is None for branch in reader):
                return None
            return f"{_place(where)} is {_type_name(writer)} in the writer, which no branch of the reader's union reads"
        writer_type, reader_type = _type_name(writer), _type_name(reader)
        if writer_type != reader_type:
            if reader_type in _PROMOTIONS.get(writer_type, ()):
                return None
            return f"{_place(where)} is {writer_type} in the writer but {reader_type} in the reader"
        if writer_type in ("record", "enum", "fixed") and writer["name"] != reader["name"]:
            names = f"{writer['name']} in the writer but {reader['name']} in the reader"
            return f"{_place(where)} is the {writer_type} {names}"
        if writer_type == "record":
            return self._record_problem(writer, reader, where)
        if writer_type == "enum":
            missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
            if missing and "default" not in reader:
                return f"{_place(where)} has symbols {missing} in the writer that the reader's enum lacks"
        if writer_type == "fixed" and writer["size"] != reader["size"]:
            return f"{_place(where)} is {writer['size']} bytes in the writer but {reader['size']} in the reader"
        if writer_type == "array":
            return self.problem(writer["items"], reader["items"], f"{where}[]")
        if writer_type == "map":
            return self.problem(writer["values"], reader["values"], f"{where}{{}}")
        return None

    def _record_problem(self, writer: Any, reader: Any, where: str) -> str | None:
        pair = (writer["name"], reader["name"])
        if pair in self._records_seen:  # being checked further up: a recursive record
            return None
        self._records_seen.add(pair)
        problem = self._fields_problem(writer, reader, where)
        if problem is not None:
            self._records_seen.discard(pair)  # a union may try the pair again elsewhere
        return problem

    def _fields_problem(self, writer: Any, reader: Any, where: str) -> str | None:
        written = {field["name"]: field for field in writer["fields"]}
        for field in reader["fields"]:
            path = f"{where}.{field['name']}" if where else field["name"]
            names = (field["name"], *field.get("aliases", ()))
            source = next((written[name] for name in names if name in written), None)
            if source is None:
                if "default" not in field:
                    return f"field {path} is missing from the writer and has no default in the reader"
                continue
            if (problem := self.problem(source["type"], field["type"], path)) is not None:
                return problem
        return None


def _named_types(schema: Any) -> dict[str, Any]:
    named = schema.get("__named_schemas", {}) if isinstance(schema, dict) else {}
    return dict(named)


def _type_name(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema["type"])
    return str(schema)


def _place(where: str) -> str:
    return f"field {where}" if where else "the value"
