"""Publishes random orders, Avro-encoded, to Kafka. Run `python producer.py --help`."""

import sys
from collections.abc import Sequence

from config import load_settings
from orderpipe.programs.cli import producer_main


def main(argv: Sequence[str] | None = None) -> int:
    return producer_main(load_settings, argv)


if __name__ == "__main__":
    sys.exit(main())
