"""Consumes orders: running average, retries and dead letters. Run `python consumer.py --help`."""

import sys
from collections.abc import Sequence

from config import load_settings
from orderpipe.programs.cli import consumer_main


def main(argv: Sequence[str] | None = None) -> int:
    return consumer_main(load_settings, argv)


if __name__ == "__main__":
    sys.exit(main())
