"""The package's shape stays readable: few modules at its top, and no module, class or function too long.

A newcomer should find the architecture in the folders (orderpipe's sub-packages, see
the import contracts in pyproject.toml) and read any one piece in a sitting. Lengths
are counted in lines from a definition's first line (its decorators not included) to
its last, docstring and comments included. And confluent-kafka's KafkaException stays
inside orderpipe/kafka/, the one sub-package that translates it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "orderpipe"
TOP_MODULES_LIMIT = 10
MODULE_LINES_LIMIT = 400
CLASS_LINES_LIMIT = 200
FUNCTION_LINES_LIMIT = 60


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def _too_long(kinds: tuple[type[ast.AST], ...], limit: int) -> list[str]:
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, kinds):
                assert isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > limit:
                    found.append(f"{_name(path)}:{node.name} ({lines})")
    return found


def test_at_most_ten_modules_directly_under_the_package() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_MODULES_LIMIT, f"{len(top)} modules directly under orderpipe/: {top}"


def test_no_module_is_over_400_lines() -> None:
    long = [
        f"{_name(path)} ({lines})"
        for path in _modules()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINES_LIMIT
    ]
    assert not long, f"modules over {MODULE_LINES_LIMIT} lines: {long}"


def test_no_class_is_over_200_lines() -> None:
    long = _too_long((ast.ClassDef,), CLASS_LINES_LIMIT)
    assert not long, f"classes over {CLASS_LINES_LIMIT} lines: {long}"


def test_no_function_is_over_60_lines() -> None:
    long = _too_long((ast.FunctionDef, ast.AsyncFunctionDef), FUNCTION_LINES_LIMIT)
    assert not long, f"functions over {FUNCTION_LINES_LIMIT} lines: {long}"


def test_no_module_outside_the_kafka_sub_package_names_kafka_exception() -> None:
    """orderpipe/kafka/ translates confluent-kafka's errors into the project's (kafka/clients.py).

    Nothing else sees one, so nothing else catches one.
    """
    kafka = PACKAGE / "kafka"
    naming = [
        _name(path)
        for path in _modules()
        if kafka not in path.parents and "KafkaException" in path.read_text(encoding="utf-8")
    ]
    assert not naming, f"modules outside orderpipe/kafka/ naming KafkaException: {naming}"
