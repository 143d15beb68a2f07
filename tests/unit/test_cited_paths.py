"""Paths and module names cited in the docs, comments and docstrings name things that exist.

After a file moves, prose keeps its old path unless something fails. This test reads
the Markdown (README.md, docs/, tests/README.md and bench/*.md but bench/RESULTS.md,
which bench/run.py writes) and the comments and docstrings of every Python file under
orderpipe/, tests/, bench/, scripts/ and at the top level, and checks:

- every relative file path that starts with a top-level name of the repository
  (`orderpipe/`, `tests/`, `docs/`, `scripts/`, `producer.py`, ...) and ends in a
  known extension names a file that exists;
- every path of a sub-package's module written relative to `orderpipe/`
  (`kafka/admin.py`, `twin/parts.py`) names a module that exists;
- every dotted name `orderpipe.<sub-package>.<module>` is a module or package, or an
  attribute of one (`orderpipe.config.settings.Settings`).

Paths meant as examples, not as files of this repository, are in ALLOWED with the
reason. Nothing is imported but the package's own modules.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import re
import tokenize
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "orderpipe"
SKIPPED_DIRS = {".venv", ".cache", ".git", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}
GENERATED = {"bench/RESULTS.md"}
EXTENSIONS = ("py", "md", "sh", "avsc", "toml", "yml", "yaml", "txt", "json", "xml")

# Cited paths that are not meant to exist: path -> why.
ALLOWED: dict[str, str] = {
    "schemas/order-vN.avsc": "a pattern for every version of the order schema (order-v1.avsc, order-v2.avsc, ...)",
}

# A character that may sit inside a path; a cited path must not follow or precede one
# (so URLs, absolute paths and longer relative paths are not taken apart).
_PATH_CHAR = r"[\w./-]"
_EXTENSION = r"\.(?:" + "|".join(EXTENSIONS) + r")"
DOTTED = re.compile(r"(?<![\w./-])orderpipe(?:\.[a-z_][a-z0-9_]*)+(?:\.[A-Za-z_]\w*)?")


def _top_level_names() -> tuple[list[str], list[str]]:
    """The repository's top-level folders and files (hidden ones but .ci left out)."""
    folders: list[str] = []
    files: list[str] = []
    for entry in sorted(ROOT.iterdir()):
        if entry.name in SKIPPED_DIRS or (entry.name.startswith(".") and entry.name != ".ci"):
            continue
        (folders if entry.is_dir() else files).append(entry.name)
    return folders, files


def _path_pattern() -> re.Pattern[str]:
    folders, files = _top_level_names()
    starts = "|".join(re.escape(name) + "/" for name in folders)
    whole = "|".join(re.escape(name) for name in files if re.search(_EXTENSION + "$", name))
    return re.compile(rf"(?<!{_PATH_CHAR})((?:{starts}){_PATH_CHAR}*?{_EXTENSION}|(?:{whole}))(?![\w/-])")


def _subpackage_pattern() -> re.Pattern[str]:
    """Module paths written relative to orderpipe/: kafka/admin.py, twin/parts.py."""
    names = sorted({p.name for p in PACKAGE.rglob("*") if p.is_dir() and p.name != "__pycache__"})
    starts = "|".join(re.escape(name) + "/" for name in names)
    return re.compile(rf"(?<!{_PATH_CHAR})((?:{starts})[\w/]*\.py)(?![\w/-])")


PATH = _path_pattern()
SUBPACKAGE_PATH = _subpackage_pattern()


def markdown_files() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "tests" / "README.md"]
    found += sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "bench").glob("*.md"))
    return [p for p in found if p.relative_to(ROOT).as_posix() not in GENERATED]


def python_files() -> list[Path]:
    found = sorted(ROOT.glob("*.py"))
    for folder in ("orderpipe", "tests", "bench", "scripts"):
        found += sorted(p for p in (ROOT / folder).rglob("*.py") if not SKIPPED_DIRS & set(p.parts))
    return found


def python_prose(path: Path) -> str:
    """A Python file's comments and docstrings (string statements), one after the other, in one tokenize pass."""
    parts = []
    statement_start = True  # no token yet on this logical line
    pending = ""  # a string that began a statement, kept if the statement ends with it
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.COMMENT:
            parts.append(tok.string)
        elif tok.type in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT):
            continue
        elif tok.type == tokenize.NEWLINE:
            if pending:
                parts.append(pending)
            statement_start, pending = True, ""
        else:
            pending = tok.string if statement_start and tok.type == tokenize.STRING else ""
            statement_start = False
    return "\n".join(parts)


@cache
def prose(path: Path) -> str:
    return python_prose(path) if path.suffix == ".py" else path.read_text(encoding="utf-8")


@cache
def _package_modules() -> tuple[str, ...]:
    return tuple(path.as_posix() for path in PACKAGE.rglob("*.py"))


@cache
def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def dotted_name_resolves(name: str) -> bool:
    """A module or package, or an attribute of the longest module the name starts with."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        if _module_exists(module):
            rest = parts[cut:]
            if not rest:
                return True
            return len(rest) == 1 and hasattr(importlib.import_module(module), rest[0])
    return False


def broken_citations(path: Path, text: str) -> list[str]:
    broken = []
    for cited in PATH.findall(text):
        if cited not in ALLOWED and not (ROOT / cited).exists():
            broken.append(f"{cited}: no such file")
    for cited in SUBPACKAGE_PATH.findall(text):
        if cited not in ALLOWED and not any(module.endswith("/" + cited) for module in _package_modules()):
            broken.append(f"{cited}: no such module in orderpipe/")
    for cited in DOTTED.findall(text):
        if not dotted_name_resolves(cited):
            broken.append(f"{cited}: no such module (nor attribute of one)")
    return sorted(set(broken))


SOURCES = markdown_files() + python_files()


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_paths_and_modules_exist(path: Path) -> None:
    broken = broken_citations(path, prose(path))
    assert not broken, f"{path.relative_to(ROOT)}: " + "; ".join(broken)


def test_a_wrong_citation_is_found() -> None:
    text = (
        "See `orderpipe/login.py`, docs/nowhere.md, kafka/twin_parts.py and orderpipe.settings.Settings;"
        " orderpipe/kafka/login.py, twin/parts.py and orderpipe.config.settings.Settings are fine."
    )
    assert broken_citations(ROOT / "README.md", text) == [
        "docs/nowhere.md: no such file",
        "kafka/twin_parts.py: no such module in orderpipe/",
        "orderpipe.settings.Settings: no such module (nor attribute of one)",
        "orderpipe/login.py: no such file",
    ]


def test_every_allowed_path_is_still_cited() -> None:
    texts = [prose(path) for path in SOURCES]
    cited = {found for text in texts for found in PATH.findall(text) + SUBPACKAGE_PATH.findall(text)}
    assert not set(ALLOWED) - cited, f"allowed but no longer cited: {sorted(set(ALLOWED) - cited)}"
