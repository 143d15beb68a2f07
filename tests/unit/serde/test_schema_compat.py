"""Every pair of consecutive order schema versions is compatible both ways, so an edit that breaks readers fails here.

Backward: the newer reader reads what the older writer wrote (a consumer upgraded
before its producers). Forward: the older reader reads what the newer writer wrote
(producers upgraded first). Checked three ways: fastavro's schema resolution on
sample records, the structural rules spelled out here (a field added has a default,
a field removed had one, a type changes only by an Avro promotion), and serde's
`incompatibility`, whose sentences the consumer puts in DLQ headers.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from pathlib import Path
from typing import Any

import fastavro
import pytest

from orderpipe.model.order import Order
from orderpipe.serde.schema_compat import incompatibility
from orderpipe.serde.schemas import parse_schema_text

ROOT = Path(__file__).parents[3]
VERSION_FILE = re.compile(r"order-v([1-9][0-9]*)\.avsc")
FILES = sorted(
    (path for path in (ROOT / "schemas").glob("*.avsc") if VERSION_FILE.fullmatch(path.name)),
    key=lambda path: int(VERSION_FILE.fullmatch(path.name).group(1)),  # type: ignore[union-attr]
)
PAIRS = list(itertools.pairwise(FILES))
PAIR_IDS = [f"{old.stem}->{new.stem}" for old, new in PAIRS]
PROMOTIONS = {("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double")}
PROMOTIONS |= {("float", "double"), ("string", "bytes"), ("bytes", "string")}
SAMPLES = [
    Order("O-1", "Keyboard", 45.5, 3, "C-42"),
    Order("O-2", "Ünïcödé ✓ " * 30, 99999.99, 1000, None),
    Order("", "", 0.01),
]
# A value of each type for fields no order carries (a future version's), when they have no default.
TYPE_SAMPLES: dict[str, Any] = {
    "string": "x",
    "bytes": b"x",
    "int": 7,
    "long": 7,
    "float": 1.5,
    "double": 1.5,
    "boolean": True,
    "null": None,
}


def fields(path: Path) -> dict[str, dict[str, Any]]:
    return {field["name"]: field for field in json.loads(path.read_text())["fields"]}


def structural_problems(old: Path, new: Path) -> list[str]:
    """The rules, field by field: what a version may change and stay readable both ways."""
    before, after = fields(old), fields(new)
    problems = [
        f"field {name} was added without a default"
        for name in after.keys() - before.keys()
        if "default" not in after[name]
    ]
    problems += [
        f"field {name} was removed but had no default"
        for name in before.keys() - after.keys()
        if "default" not in before[name]
    ]
    for name in before.keys() & after.keys():
        was, now = before[name]["type"], after[name]["type"]
        if was != now and (was, now) not in PROMOTIONS:
            problems.append(f"field {name} changed type from {was} to {now}")
    return problems


def sample_record(schema: Any, order: Order) -> dict[str, Any]:
    """An order as a record of `schema`: the order's fields, and a sample value for any other field."""
    known = order.to_record()
    record = {}
    for field in schema["fields"]:
        name = field["name"]
        if name in known:
            record[name] = known[name]
        elif "default" in field:
            record[name] = field["default"]
        else:
            kind = field["type"]
            record[name] = TYPE_SAMPLES[kind[-1] if isinstance(kind, list) else kind]
    return record


def resolve(writer: Any, reader: Any, record: dict[str, Any]) -> Any:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    buffer.seek(0)
    read = fastavro.schemaless_reader(buffer, writer, reader)
    assert buffer.read() == b"", "the body was read to its end"
    return read


def test_the_versions_are_numbered_from_1_without_gaps() -> None:
    numbers = [int(VERSION_FILE.fullmatch(path.name).group(1)) for path in FILES]  # type: ignore[union-attr]
    assert numbers == list(range(1, len(FILES) + 1))
    assert len(FILES) >= 2


def test_order_avsc_is_the_newest_version_byte_for_byte() -> None:
    assert (ROOT / "order.avsc").read_bytes() == FILES[-1].read_bytes()


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=PAIR_IDS)
def test_consecutive_versions_follow_the_structural_rules(old: Path, new: Path) -> None:
    assert structural_problems(old, new) == []
    older, newer = parse_schema_text(old.read_text()), parse_schema_text(new.read_text())
    assert incompatibility(older, newer) is None, "backward"
    assert incompatibility(newer, older) is None, "forward"


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("order", SAMPLES)
def test_the_newer_reader_reads_the_older_writers_records(old: Path, new: Path, order: Order) -> None:
    older, newer = parse_schema_text(old.read_text()), parse_schema_text(new.read_text())
    written = sample_record(older, order)
    read = resolve(older, newer, written)
    for field in newer["fields"]:
        name = field["name"]
        expected = fastavro_rounded(written[name]) if name in written else field["default"]
        assert fastavro_rounded(read[name]) == expected, name


@pytest.mark.parametrize(("old", "new"), PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("order", SAMPLES)
def test_the_older_reader_reads_the_newer_writers_records(old: Path, new: Path, order: Order) -> None:
    older, newer = parse_schema_text(old.read_text()), parse_schema_text(new.read_text())
    written = sample_record(newer, order)
    read = resolve(newer, older, written)
    assert {name: fastavro_rounded(value) for name, value in read.items()} == {
        field["name"]: fastavro_rounded(written[field["name"]]) for field in older["fields"]
    }


def fastavro_rounded(value: Any) -> Any:
    """Floats compared as float32, as the schemas carry prices."""
    return round(value, 2) if isinstance(value, float) else value


V1_FIELDS: list[dict[str, Any]] = [
    {"name": "orderId", "type": "string"},
    {"name": "product", "type": "string"},
    {"name": "price", "type": "float"},
]
V1: dict[str, Any] = {"type": "record", "name": "Order", "fields": V1_FIELDS}


def edited(*extra: dict[str, Any], drop: str = "", retype: tuple[str, Any] = ("", None)) -> dict[str, Any]:
    """Version 1 with fields added, one dropped or one given another type."""
    kept = [
        {**field, "type": retype[1]} if field["name"] == retype[0] else field
        for field in V1_FIELDS
        if field["name"] != drop
    ]
    return {**V1, "fields": kept + list(extra)}


MISSING = "is missing from the writer and has no default in the reader"
# An edit of version 1, and what the backward and the forward check say of it.
BREAKING = {
    "a field added without a default": (
        edited({"name": "quantity", "type": "int"}),
        f"field quantity {MISSING}",
        None,
    ),
    "a field removed that had no default": (edited(drop="product"), None, f"field product {MISSING}"),
    "a type changed": (
        edited(retype=("price", "string")),
        "field price is float in the writer but string in the reader",
        "field price is string in the writer but float in the reader",
    ),
    "a promotion, which older readers cannot undo": (
        edited(retype=("price", "double")),
        None,
        "field price is double in the writer but float in the reader",
    ),
}


@pytest.mark.parametrize(("newer", "backward", "forward"), BREAKING.values(), ids=BREAKING.keys())
def test_the_checks_catch_an_edit_that_breaks_readers(newer: dict[str, Any], backward: str, forward: str) -> None:
    older, parsed = parse_schema_text(json.dumps(V1)), parse_schema_text(json.dumps(newer))
    assert (incompatibility(older, parsed), incompatibility(parsed, older)) == (backward, forward)


def test_structural_rules_name_each_breaking_edit(tmp_path: Path) -> None:
    old, new = tmp_path / "order-v1.avsc", tmp_path / "order-v2.avsc"
    old.write_text(json.dumps(V1))
    new.write_text(json.dumps(edited({"name": "quantity", "type": "int"}, drop="product", retype=("price", "string"))))
    assert sorted(structural_problems(old, new)) == [
        "field price changed type from float to string",
        "field product was removed but had no default",
        "field quantity was added without a default",
    ]


@pytest.mark.parametrize(
    ("writer", "reader", "why"),
    [
        (
            {"type": "enum", "name": "E", "symbols": ["A", "B"]},
            {"type": "enum", "name": "E", "symbols": ["A"]},
            "symbols",
        ),
        (
            {"type": "enum", "name": "E", "symbols": ["A", "B"]},
            {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"},
            None,
        ),
        ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "F", "size": 8}, "4 bytes in the writer"),
        ({"type": "fixed", "name": "F", "size": 4}, {"type": "fixed", "name": "G", "size": 4}, "the fixed F"),
        ({"type": "array", "items": "int"}, {"type": "array", "items": "string"}, "field [] is int"),
        ({"type": "map", "values": "int"}, {"type": "map", "values": "long"}, None),
        ({"type": "map", "values": "long"}, {"type": "map", "values": "int"}, "field {} is long"),
        (["null", "int"], ["null", "long"], None),
        (["null", "string"], "string", "the value is null in the writer"),
        ("int", ["null", "string"], "which no branch of the reader's union reads"),
    ],
)
def test_incompatibility_follows_the_avro_resolution_rules(writer: Any, reader: Any, why: str | None) -> None:
    problem = incompatibility(parse_schema_text(json.dumps(writer)), parse_schema_text(json.dumps(reader)))
    assert problem is None if why is None else why in (problem or "")


def test_incompatibility_follows_aliases_nested_and_recursive_records() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "value", "type": "int"}, {"name": "next", "type": ["null", "Node"], "default": None}],
    }
    renamed = {**node, "fields": [{"name": "amount", "type": "long", "aliases": ["value"]}, node["fields"][1]]}
    assert incompatibility(parse_schema_text(json.dumps(node)), parse_schema_text(json.dumps(renamed))) is None
    narrowed = {**node, "fields": [{"name": "value", "type": "string"}, node["fields"][1]]}
    assert incompatibility(parse_schema_text(json.dumps(node)), parse_schema_text(json.dumps(narrowed))) == (
        "field value is int in the writer but string in the reader"
    )
    outer = {"type": "record", "name": "Outer", "fields": [{"name": "inner", "type": V1}]}
    broken = {"type": "record", "name": "Outer", "fields": [{"name": "inner", "type": edited(retype=("price", "int"))}]}
    assert incompatibility(parse_schema_text(json.dumps(outer)), parse_schema_text(json.dumps(broken))) == (
        "field inner.price is float in the writer but int in the reader"
    )
