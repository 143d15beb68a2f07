"""Prints, applies or revokes the Kafka ACLs each program needs. Run `scripts/acls.sh --help`."""

import sys
from collections.abc import Sequence

from config import load_settings
from orderpipe.programs.acl_command import main as acl_main


def main(argv: Sequence[str] | None = None) -> int:
    return acl_main(load_settings, argv)


if __name__ == "__main__":
    sys.exit(main())
