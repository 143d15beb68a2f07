"""A record with header names that are not UTF-8, written to the real broker by hand.

Kafka's protocol allows any bytes in a header name, and clients such as kcat write
them, but confluent-kafka (and the Java client) only send text. This module speaks
just enough of the protocol to write one such record: a Produce request (version 3)
holding one record batch (magic 2, CRC-32C), sent to the partition's leader. Only
for tests: no retries, no compression, one record.
"""

from __future__ import annotations

import socket
import struct
import time

from confluent_kafka.admin import AdminClient

from orderpipe.serde.direct import zigzag_varint
from tests.clients import client_config

__all__ = ["produce_raw"]

_PRODUCE = 0
_PRODUCE_VERSION = 3


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _sized(data: bytes | None) -> bytes:
    return zigzag_varint(-1) if data is None else zigzag_varint(len(data)) + data


def _batch(key: bytes | None, value: bytes | None, headers: list[tuple[bytes, bytes]], timestamp_ms: int) -> bytes:
    body = b"\x00" + zigzag_varint(0) + zigzag_varint(0) + _sized(key) + _sized(value) + zigzag_varint(len(headers))
    for name, data in headers:
        body += _sized(name) + _sized(data)
    record = zigzag_varint(len(body)) + body
    after_crc = (
        struct.pack(">hiqqqhii", 0, 0, timestamp_ms, timestamp_ms, -1, -1, -1, 1)  # attributes .. record count
        + record
    )
    header = struct.pack(">qi", 0, 4 + 1 + 4 + len(after_crc)) + struct.pack(">ib", -1, 2)
    return header + struct.pack(">I", _crc32c(after_crc)) + after_crc


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def produce_raw(
    bootstrap: str,
    topic: str,
    partition: int,
    record: tuple[bytes | None, bytes | None, list[tuple[bytes, bytes]]],
) -> None:
    """Writes one record, with header names as given (any bytes), and waits for the leader's answer.

    Raises:
        AssertionError: the broker answered with an error code.
    """
    key, value, headers = record
    metadata = AdminClient(client_config(bootstrap)).list_topics(topic, timeout=10)
    leader = metadata.topics[topic].partitions[partition].leader
    broker = metadata.brokers[leader]
    batch = _batch(key, value, headers, int(time.time() * 1000))
    request = (
        struct.pack(">hhi", _PRODUCE, _PRODUCE_VERSION, 1)
        + _string("orderpipe-tests")
        + struct.pack(">hhi", -1, -1, 30_000)  # no transactional id, acks=all, timeout
        + struct.pack(">i", 1)
        + _string(topic)
        + struct.pack(">ii", 1, partition)
        + struct.pack(">i", len(batch))
        + batch
    )
    with socket.create_connection((broker.host, broker.port), timeout=30) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _read(connection, 4))[0]
        answer = _read(connection, size)
    # correlation id, topics [name, partitions [index, error code, ...]]
    name_length = struct.unpack_from(">h", answer, 8)[0]
    error_code = struct.unpack_from(">h", answer, 10 + name_length + 4 + 4)[0]
    assert error_code == 0, f"the broker refused the hand-made record: error code {error_code}"


def _read(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        assert chunk, "the broker closed the connection"
        data += chunk
    return data
