"""Both wire formats and every schema version: round trips, resolution, format detection and bad bytes."""

import io
import json
import random
import re
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderpipe.errors import ConfigError, DeserializationError, ValidationError
from orderpipe.model.generator import OrderFactory
from orderpipe.model.order import Order, validate
from orderpipe.serde import codec
from orderpipe.serde.codec import OrderDecoder
from orderpipe.serde.direct import _read_v1, _read_v2
from orderpipe.serde.schemas import OrderSchema, SchemaSet, load_order_schema, load_schema_set, parse_schema_text

SCHEMA = load_order_schema()
V1 = load_order_schema(1)
V2 = load_order_schema(2)
ORDER = Order("O-7Q2M", "Keyboard", 45.5, 3, "C-42")
ROOT = Path(__file__).parents[3]
# Written out by hand from the Avro specification's Parsing Canonical Form rules.
CANONICAL_V1 = (
    '{"name":"Order","type":"record","fields":[{"name":"orderId","type":"string"},'
    '{"name":"product","type":"string"},{"name":"price","type":"float"}]}'
)
CANONICAL_V2 = CANONICAL_V1[: -len("]}")] + (
    ',{"name":"quantity","type":"int"},{"name":"customerId","type":["null","string"]}]}'
)


def crc64_avro(data: bytes) -> int:
    """The reference CRC-64-AVRO from the Avro specification, independent of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def confluent(schema_id: int, body: bytes) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id) + body


def fastavro_body(schema: Any, record: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, schema, record)
    return buffer.getvalue()


def v3_schema(**extra_field: Any) -> Any:
    """A newer version than this consumer knows: version 2 plus one field (with a default, unless told)."""
    newer = json.loads(SCHEMA.text)
    newer["fields"].append({"name": "currency", "type": "string", "default": "USD", **extra_field})
    return parse_schema_text(json.dumps(newer))


def test_the_version_files_keep_the_original_fields_and_document_them() -> None:
    v1 = json.loads((ROOT / "schemas" / "order-v1.avsc").read_text())
    v2 = json.loads((ROOT / "schemas" / "order-v2.avsc").read_text())
    original = [("orderId", "string"), ("product", "string"), ("price", "float")]
    assert [(f["name"], f["type"]) for f in v1["fields"]] == original
    assert [(f["name"], f["type"], f.get("default")) for f in v2["fields"]] == [
        *((name, kind, None) for name, kind in original),
        ("quantity", "int", 1),
        ("customerId", ["null", "string"], None),
    ]
    assert all(f.get("doc") for f in v1["fields"] + v2["fields"])


def test_the_order_tuples_defaults_are_the_newest_schemas_defaults() -> None:
    """Direct readers fill in Order's defaults where schema resolution would use the schema's."""
    defaults = {f["name"]: f["default"] for f in json.loads(SCHEMA.text)["fields"] if "default" in f}
    assert defaults == {
        "quantity": Order._field_defaults["quantity"],
        "customerId": Order._field_defaults["customer_id"],
    }


def test_the_schema_set_is_every_version_file_in_order() -> None:
    schemas = load_schema_set()
    assert [s.version for s in schemas.versions] == [1, 2]
    assert schemas.newest is SCHEMA is V2
    assert (V1.canonical, V2.canonical) == (CANONICAL_V1, CANONICAL_V2)
    assert schemas.by_fingerprint(V1.fingerprint) is V1
    assert schemas.by_fingerprint(b"\x00" * 8) is None
    assert (V1.source, V2.source) == ("schemas/order-v1.avsc", "schemas/order-v2.avsc")


def test_an_unknown_version_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=re.escape("order schema version 7 is unknown: the versions are 1, 2")):
        load_order_schema(7)


def test_a_directory_without_schema_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "order-v01.avsc").write_text(V1.text)  # not a version file name: N has no leading zero
    with pytest.raises(ValueError, match="no order schema"):
        load_schema_set(tmp_path)


@pytest.mark.parametrize(("schema", "canonical"), [(V1, CANONICAL_V1), (V2, CANONICAL_V2)], ids=["v1", "v2"])
def test_single_object_header_carries_the_little_endian_crc64_fingerprint(schema: OrderSchema, canonical: str) -> None:
    encoded = schema.encode_single_object(ORDER)
    assert encoded[:2] == b"\xc3\x01"
    assert encoded[2:10] == struct.pack("<Q", crc64_avro(canonical.encode()))
    assert encoded[10:] == schema.encode_body(ORDER)


def test_single_object_round_trip_of_the_newest_version() -> None:
    assert OrderDecoder(SCHEMA).decode(SCHEMA.encode_single_object(ORDER)) == ORDER
    unnamed = ORDER._replace(customer_id=None)
    assert OrderDecoder(SCHEMA).decode(SCHEMA.encode_single_object(unnamed)) == unnamed


def test_a_version_1_record_reads_as_quantity_1_and_no_customer() -> None:
    decoded = OrderDecoder(SCHEMA).decode(V1.encode_single_object(ORDER))
    assert decoded == Order(ORDER.order_id, ORDER.product, ORDER.price, 1, None)


def test_a_version_1_record_the_direct_reader_leaves_alone_is_resolved_by_fastavro() -> None:
    order = Order("O-1", "é" * 70, 2.5)  # a product length past one varint byte
    assert _read_v1(V1.encode_body(order), 0) is None
    assert OrderDecoder(SCHEMA).decode(V1.encode_single_object(order)) == order


def test_an_unknown_fingerprint_is_named_with_the_known_schemas() -> None:
    value = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + SCHEMA.encode_body(ORDER)
    with pytest.raises(DeserializationError) as caught:
        OrderDecoder(SCHEMA).decode(value)
    assert str(caught.value) == (
        "unknown writer schema: fingerprint 0123456789abcdef is none of the order schemas this consumer knows "
        "(schemas/order-vN.avsc, versions 1, 2)"
    )


def test_a_decoder_knows_the_writers_it_is_given_and_its_reader() -> None:
    decoder = OrderDecoder(SCHEMA, writers=SchemaSet((V2,)))
    assert decoder.decode(V2.encode_single_object(ORDER)) == ORDER
    with pytest.raises(DeserializationError, match="versions 2\\)"):
        decoder.decode(V1.encode_single_object(ORDER))


def test_an_older_reader_resolves_newer_records_to_its_own_fields() -> None:
    """With version 1 as the reader, no direct reader stands in for resolution: quantity is dropped."""
    decoded = OrderDecoder(V1).decode(V2.encode_single_object(ORDER))
    assert decoded == Order(ORDER.order_id, ORDER.product, ORDER.price)


@pytest.mark.parametrize("writer", [V1, V2], ids=["v1", "v2"])
def test_confluent_format_round_trip_through_the_lookup(writer: OrderSchema) -> None:
    looked_up: list[int] = []

    def lookup(schema_id: int) -> Any:
        looked_up.append(schema_id)
        return writer.parsed

    decoder = OrderDecoder(SCHEMA, lookup)
    expected = ORDER if writer is V2 else Order(ORDER.order_id, ORDER.product, ORDER.price)
    assert decoder.decode(confluent(42, writer.encode_body(ORDER))) == expected
    assert decoder.decode(confluent(42, writer.encode_body(ORDER))) == expected
    assert looked_up == [42, 42]


def test_a_registry_schema_with_other_whitespace_and_docs_takes_the_direct_reader() -> None:
    bare = parse_schema_text(CANONICAL_V2)
    decoder = OrderDecoder(SCHEMA, lambda _id: bare)
    assert decoder.decode(confluent(3, V2.encode_body(ORDER))) == ORDER


def test_a_newer_writer_schema_with_an_extra_field_is_resolved() -> None:
    writer = v3_schema()
    body = fastavro_body(writer, {**ORDER.to_record(), "currency": "EUR"})
    assert OrderDecoder(SCHEMA, lambda _id: writer).decode(confluent(7, body)) == ORDER


def test_a_newer_writer_schema_as_a_single_object_is_unknown() -> None:
    writer = OrderSchema.from_text(json.dumps(v3_schema()))
    assert writer.direct is None
    body = writer.encode_single_object(ORDER)
    with pytest.raises(DeserializationError, match=f"unknown writer schema: fingerprint {writer.fingerprint.hex()}"):
        OrderDecoder(SCHEMA).decode(body)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"price": "string"}, "field price is string in the writer but float in the reader"),
        ({"quantity": "long"}, "field quantity is long in the writer but int in the reader"),
        ({"orderId": None}, "field orderId is missing from the writer and has no default in the reader"),
        ({"customerId": ["null", "string", "int"]}, "field customerId is int in the writer, which no branch"),
    ],
)
def test_a_writer_schema_that_cannot_be_resolved_to_ours_is_named(change: dict[str, Any], why: str) -> None:
    fields = [
        {**f, "type": change.get(f["name"], f["type"])}
        for f in json.loads(SCHEMA.text)["fields"]
        if change.get(f["name"], "") is not None
    ]
    writer = parse_schema_text(json.dumps({"type": "record", "name": "Order", "fields": fields}))
    record = {
        **ORDER.to_record(),
        "price": "45.5" if "price" in change else ORDER.price,
        "customerId": 5 if "customerId" in change else ORDER.customer_id,
    }
    body = fastavro_body(writer, record)
    with pytest.raises(DeserializationError, match=re.escape(f"cannot be resolved to the order schema: {why}")):
        OrderDecoder(SCHEMA, lambda _id: writer).decode(confluent(9, body))


def test_a_writer_record_of_another_name_is_named() -> None:
    writer = parse_schema_text(CANONICAL_V2.replace('"Order"', '"Invoice"'))
    with pytest.raises(DeserializationError, match="the record Invoice in the writer but Order in the reader"):
        OrderDecoder(SCHEMA, lambda _id: writer).decode(confluent(9, V2.encode_body(ORDER)))


def test_a_writer_that_is_not_a_record_cannot_be_resolved() -> None:
    with pytest.raises(DeserializationError, match="the value is string in the writer but record in the reader"):
        OrderDecoder(SCHEMA, lambda _id: parse_schema_text('"string"')).decode(confluent(9, b"\x02a"))


def test_a_writer_schema_parsed_again_for_the_same_id_is_planned_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The plans by schema id are bounded, and follow the object the lookup returns."""
    monkeypatch.setattr(codec, "_MAX_WRITERS", 2)
    writers = {1: V1.parsed, 2: V2.parsed, 3: V2.parsed}
    decoder = OrderDecoder(SCHEMA, lambda schema_id: writers[schema_id])
    bodies = {1: V1.encode_body(ORDER), 2: V2.encode_body(ORDER), 3: V2.encode_body(ORDER)}
    for schema_id in (1, 2, 3, 1):
        assert decoder.decode(confluent(schema_id, bodies[schema_id])).order_id == ORDER.order_id
    writers[1] = parse_schema_text(V2.text)
    assert decoder.decode(confluent(1, V2.encode_body(ORDER))) == ORDER


@pytest.mark.parametrize(("quantity", "valid"), [(0, False), (1, True), (1000, True), (1001, False)])
def test_a_quantity_out_of_range_fails_validation_after_decoding(quantity: int, valid: bool) -> None:
    order = OrderDecoder(SCHEMA).decode(SCHEMA.encode_single_object(ORDER._replace(quantity=quantity)))
    assert order.quantity == quantity
    if valid:
        assert validate(order, 10_000_000).quantity == quantity
    else:
        with pytest.raises(ValidationError, match=f"quantity must be from 1 to 1000, got {quantity}"):
            validate(order, 10_000_000)


def _unknown_id(schema_id: int) -> Any:
    raise DeserializationError(f"schema id {schema_id} is unknown")


BAD = {
    "empty": b"",
    "garbage": b"\xde\xad\xbe\xef not avro",
    "plain json": b'{"orderId": "O-1"}',
    "wrong magic second byte": b"\xc3\x02" + SCHEMA.encode_single_object(ORDER)[2:],
    "single-object header truncated": b"\xc3\x01\x8c\x9d",
    "single-object body truncated": SCHEMA.encode_single_object(ORDER)[:-2],
    "single-object body missing": SCHEMA.encode_single_object(ORDER)[:10],
    "v1 body under the v2 fingerprint": SCHEMA.encode_single_object(ORDER)[:10] + V1.encode_body(ORDER),
    "v2 body under the v1 fingerprint": V1.encode_single_object(ORDER)[:10] + V2.encode_body(ORDER),
    "unknown fingerprint": b"\xc3\x01" + b"\x01" * 8 + SCHEMA.encode_body(ORDER),
    "trailing bytes": SCHEMA.encode_single_object(ORDER) + b"\x00",
    "bad union branch": SCHEMA.encode_single_object(ORDER._replace(customer_id=None))[:-1] + b"\x04",
    "confluent header truncated": b"\x00\x00\x01",
    "confluent body truncated": confluent(1, SCHEMA.encode_body(ORDER)[:3]),
    "confluent unknown schema id": confluent(999, SCHEMA.encode_body(ORDER)),
    "negative string length": b"\xc3\x01" + SCHEMA.fingerprint + b"\x01",
}


@pytest.mark.parametrize("value", BAD.values(), ids=BAD.keys())
def test_undecodable_bytes_raise_a_deserialization_error(value: bytes) -> None:
    with pytest.raises(DeserializationError):
        OrderDecoder(SCHEMA, _unknown_id).decode(value)


BARE_HINT = "if the producer writes bare Avro bodies, set AVRO_WIRE_FORMAT=raw and AVRO_WRITER_SCHEMA"


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"\xde\xad\xbe\xef not avro", "dead"),
        (b"\x0eO-7Q2M" + b"\x10Keyboard" + struct.pack("<d", 45.5), "0e4f"),  # a bare body, price a double
        (b"\xc3\x02" + SCHEMA.encode_single_object(ORDER)[2:], "c302"),  # the single-object marker's first byte only
        (b"\xc3", "c3"),
        (b"\x7f" * 100_000, "7f7f"),
    ],
)
def test_an_unknown_wire_format_hints_at_raw_with_two_bytes_of_the_value(value: bytes, shown: str) -> None:
    with pytest.raises(DeserializationError) as caught:
        OrderDecoder(SCHEMA).decode(value)
    assert str(caught.value) == f"unknown wire format: first bytes {shown}; {BARE_HINT}"
    assert len(str(caught.value).encode()) < 200, "well inside the 1 KiB of an error.message header"


@pytest.mark.parametrize("wire_format", ["confluent", "single-object"])
def test_a_framed_format_asked_for_names_itself_not_raw(wire_format: str) -> None:
    with pytest.raises(DeserializationError, match=r"as AVRO_WIRE_FORMAT asks: first bytes dead$"):
        OrderDecoder(SCHEMA, _unknown_id, wire_format=wire_format).decode(b"\xde\xad\xbe\xef")


def test_confluent_records_without_a_registry_name_the_missing_setting() -> None:
    with pytest.raises(DeserializationError, match="SCHEMA_REGISTRY_URL"):
        OrderDecoder(SCHEMA).decode(confluent(1, SCHEMA.encode_body(ORDER)))


def test_a_body_that_decodes_to_no_record_is_refused() -> None:
    schema = OrderSchema.from_text('"string"')
    with pytest.raises(DeserializationError, match="not a record"):
        OrderDecoder(schema).decode(b"\xc3\x01" + schema.fingerprint + b"\x02a")


WRITER_CASES = [
    Order("O-1", "Keyboard", 123.45),
    Order("", "", 0.0, 0, ""),
    Order("O-" + "x" * 62, "Ünïcödé ✓ " * 30, 99999.99, 1000, "Ç" * 64),  # lengths past one varint byte
    Order("O-2", "Mouse", -1.5, -1, None),
    Order("O-3", "Mouse", float("nan"), 63, "C"),
    Order("O-4", "Mouse", 1e39, 64, "C" * 63),  # beyond float32: written as infinity
    Order("O-5", "Mouse", -1e39, -65, None),
    Order("O-6", "p" * 70_000, 1.0, 2**31 - 1, "c" * 600),  # past the ready-made longs
    Order("O-7", "Mouse", 1.0, -(2**31), None),
]


@pytest.mark.parametrize("order", WRITER_CASES)
@pytest.mark.parametrize("schema", [V1, V2], ids=["v1", "v2"])
def test_the_direct_writers_match_fastavro_byte_for_byte(schema: OrderSchema, order: Order) -> None:
    assert schema.direct is not None
    general = replace(schema, direct=None)
    assert schema.encode_body(order) == general.encode_body(order)


orders = st.builds(
    Order,
    st.text(max_size=80),
    st.text(max_size=80),
    st.floats(width=32),
    st.integers(-(2**31), 2**31 - 1),
    st.one_of(st.none(), st.text(max_size=80)),
)


@given(orders)
def test_the_direct_writers_match_fastavro_on_any_order(order: Order) -> None:
    for schema in (V1, V2):
        assert schema.encode_body(order) == replace(schema, direct=None).encode_body(order)


def test_a_schema_of_another_shape_is_written_by_fastavro() -> None:
    schema = OrderSchema.from_text(json.dumps(v3_schema()))
    body = schema.encode_body(Order("O-1", "Keyboard", 1.5))
    record = fastavro.schemaless_reader(io.BytesIO(body), schema.parsed, None)
    assert isinstance(record, dict)
    assert (record["currency"], record["quantity"]) == ("USD", 1)


def _fastavro_order(body: bytes, writer: OrderSchema) -> Order | None:
    """What fastavro makes of a body written with `writer` and read as the newest version (None if it refuses)."""
    buffer = io.BytesIO(body)
    try:
        record = fastavro.schemaless_reader(buffer, writer.parsed, SCHEMA.parsed)
    except Exception:
        return None
    if buffer.tell() != len(body) or not isinstance(record, dict):
        return None
    return Order.from_record(record)


def _agrees(body: bytes, writer: OrderSchema) -> bool:
    """Whether the direct reader of `writer` returns fastavro's order or leaves the body alone; True if taken."""
    assert writer.direct is not None
    direct = writer.direct.read(body, 0)
    if direct is None:
        return False
    general = _fastavro_order(body, writer)
    assert general is not None, body
    assert direct._replace(price=0.0) == general._replace(price=0.0), body
    assert struct.pack("<f", direct.price) == struct.pack("<f", general.price), body
    return True


@pytest.mark.parametrize("writer", [V1, V2], ids=["v1", "v2"])
def test_the_direct_readers_never_disagree_with_fastavro(writer: OrderSchema) -> None:
    """On well-formed and on mutated bodies they return fastavro's order, or leave the body to fastavro."""
    rng = random.Random(3)
    factory = OrderFactory(rng, "READ", invalid_rate=0.3, max_price_cents=10_000_000)
    bodies = [writer.encode_body(g.order) for g in (factory.make(writer.encode_single_object) for _ in range(300))]
    bodies += [writer.encode_body(Order("O-1", "é" * 40, 1.0, 64, "é" * 40)), b"", b"\x00", b"\x02a\x02b\x00\x00\x80"]
    mutated = []
    for body in bodies[:300]:
        for _ in range(10):
            data = bytearray(body)
            cut = rng.randrange(len(data) + 1)
            choice = rng.randrange(3)
            if choice == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif choice == 1:
                del data[cut:]
            else:
                data[cut:cut] = rng.randbytes(rng.randrange(1, 4))
            mutated.append(bytes(data))
    taken = sum(_agrees(body, writer) for body in bodies + mutated)
    assert taken > 300  # the common shape really takes the fast path


@given(st.binary(max_size=40))
def test_the_direct_readers_agree_with_fastavro_on_any_bytes(body: bytes) -> None:
    for writer in (V1, V2):
        _agrees(body, writer)


@given(orders, st.binary(max_size=3))
def test_the_direct_readers_agree_with_fastavro_on_orders_with_a_tail(order: Order, tail: bytes) -> None:
    for writer in (V1, V2):
        _agrees(writer.encode_body(order) + tail, writer)
        _agrees(writer.encode_body(order)[:-1], writer)


def test_the_direct_readers_take_the_common_shapes() -> None:
    assert _read_v1(V1.encode_body(ORDER), 0) == ORDER._replace(quantity=1, customer_id=None)
    assert _read_v2(V2.encode_body(ORDER), 0) == ORDER
    assert _read_v2(V2.encode_body(ORDER._replace(quantity=-64, customer_id=None)), 0) is not None
    assert _read_v2(V2.encode_body(ORDER._replace(quantity=64)), 0) is None  # a two-byte quantity


def test_records_the_direct_reader_leaves_alone_get_fastavros_error() -> None:
    truncated = SCHEMA.encode_single_object(ORDER)[:-2]
    with pytest.raises(DeserializationError, match="Avro body is not a valid order"):
        OrderDecoder(SCHEMA).decode(truncated)


def test_a_lookup_answer_that_is_no_schema_is_a_deserialization_error() -> None:
    """Whatever a lookup returns, the decoder raises its own error (the registry's answers are untrusted)."""
    with pytest.raises(DeserializationError, match="Avro body is not a valid order"):
        OrderDecoder(SCHEMA, lambda _id: {"type": "record"}).decode(confluent(5, V2.encode_body(ORDER)))
