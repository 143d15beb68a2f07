"""Fails when a module's line coverage is under a floor: coverage.py's own gate covers only the total.

Usage: python scripts/coverage_floor.py COVERAGE_JSON PERCENT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(path: str, floor: float) -> int:
    files = json.loads(Path(path).read_text(encoding="utf-8"))["files"]
    covered = {name: data["summary"]["percent_covered"] for name, data in files.items()}
    low = {name: percent for name, percent in covered.items() if percent < floor}
    for name, percent in sorted(low.items()):
        print(f"{name}: {percent:.0f}% of its lines covered by unit tests, under the floor of {floor:g}%")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2])))
