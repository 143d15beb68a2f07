"""Inspects the dead-letter topic. Run `python dlq.py --help`."""

import sys
from collections.abc import Sequence

from config import load_settings
from orderpipe.programs.cli import dlq_main


def main(argv: Sequence[str] | None = None) -> int:
    return dlq_main(load_settings, argv)


if __name__ == "__main__":
    sys.exit(main())
