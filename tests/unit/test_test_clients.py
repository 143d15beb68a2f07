"""Every Kafka client the live tests and the benchmarks make asks no broker to auto-create a topic (tests/clients.py).

Reads the source only. A Producer, Consumer or AdminClient outside tests/unit (whose
clients talk to librdkafka's in-process mock cluster) must be made from
`client_config(...)`, or from the programs' own settings (`kafka_client_config`,
`producer_config`, the secured tests' `_librdkafka`), which set
allow.auto.create.topics=false too. A test that relies on auto-creation on purpose
says so in a comment containing "auto-creates on purpose" on the line of the call.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.clients import NO_AUTO_CREATE, client_config

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = {"Producer", "Consumer", "AdminClient"}
# Functions whose answer is a client configuration with allow.auto.create.topics=false.
SAFE_CONFIGS = {"client_config", "kafka_client_config", "producer_config", "_librdkafka"}
ON_PURPOSE = "auto-creates on purpose"


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return ""


def _safe(config: ast.expr) -> bool:
    if isinstance(config, ast.Call):
        return _name(config.func) in SAFE_CONFIGS
    if isinstance(config, ast.Dict):  # {**kafka_client_config(), ...} or a literal that says it
        spread = [value for key, value in zip(config.keys, config.values, strict=True) if key is None]
        said = any(isinstance(key, ast.Constant) and key.value == NO_AUTO_CREATE for key in config.keys)
        return said or any(_safe(value) for value in spread)
    return False


def _sources() -> list[Path]:
    files = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "bench").glob("*.py")]
    return sorted(path for path in files if "unit" not in path.relative_to(ROOT).parts)


def unsafe_clients() -> list[str]:
    """Where a client is made that a broker with auto-creation on would let create topics."""
    found = []
    for path in _sources():
        text = path.read_text()
        lines = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if not (isinstance(node, ast.Call) and _name(node.func) in CLIENTS):
                continue
            config = node.args[0] if node.args else None
            if config is not None and _safe(config):
                continue
            if any(ON_PURPOSE in line for line in lines[node.lineno - 1 : (node.end_lineno or node.lineno)]):
                continue
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    return found


def test_every_client_of_the_live_tests_and_benchmarks_turns_auto_creation_off() -> None:
    assert unsafe_clients() == []


def test_the_shared_settings_cannot_turn_auto_creation_back_on() -> None:
    config = client_config("127.0.0.1:9092", {NO_AUTO_CREATE: True, "bootstrap.servers": "elsewhere:1", "acks": "all"})
    assert config == {"bootstrap.servers": "127.0.0.1:9092", NO_AUTO_CREATE: False, "acks": "all"}
