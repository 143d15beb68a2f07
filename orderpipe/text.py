"""Text made safe to print: from records, and with secrets taken out, free of Kafka.

Order ids, products, keys and error messages come from records any client can
write. Printed as they are, a newline forges a console line and an escape sequence
rewrites the terminal. `printable` escapes every character that is not printable
(controls, line and paragraph separators, bidirectional overrides) the way Python's
`repr` would, and leaves everything else as it is. `redact` takes the credentials
out of URLs (the registry's may carry them) before they reach output or logs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = ["ScrubbedStream", "Scrubber", "printable", "redact"]


def printable(text: str, limit: int | None = None) -> str:
    """`text` with each non-printable character escaped (`\\n`, `\\x1b`, `\\u202e`), at most `limit` characters."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "..."
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# Up to the last "@" before the path: a password may hold an "@" of its own.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s]*@")


def redact(text: str) -> str:
    """`text` with the credentials of every URL in it (`https://user:secret@host`) replaced by `***`."""
    return _USERINFO.sub(r"\1***@", text)


# Shorter values are not taken out: "on", "1" or "true" would blank out ordinary text.
MIN_SECRET_LENGTH = 4
HIDDEN = "***"


class Scrubber:
    """Takes known secret values out of text, wherever they appear (longest first)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, HIDDEN)
        return text


class ScrubbedStream:
    """A text stream that scrubs every write: a program's stdout and stderr, librdkafka's log included.

    Each `write` is scrubbed whole; `print` writes each of its arguments in one
    call, so a secret is found unless the program itself splits it across writes.
    """

    def __init__(self, stream: TextIO, scrub: Scrubber) -> None:
        self._stream, self._scrub = stream, scrub

    def write(self, text: str) -> int:
        self._stream.write(self._scrub(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, reconfigure, encoding, ...
        return getattr(self._stream, name)
