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

__all__ = ["printable", "redact"]


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
