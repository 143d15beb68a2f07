"""Settings for the order pipeline: the one place that reads the environment.

Precedence, highest first: command-line flag > environment variable > `.env` file >
default. The values are checked by `orderpipe.config.settings.build_settings`, before
anything connects, and a bad one is reported by its variable name together with
what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from orderpipe.config.settings import ENV_NAMES, Settings, build_settings
from orderpipe.errors import ConfigError

__all__ = ["ENV_NAMES", "Settings", "load_settings"]


def load_settings(
    overrides: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
    env_file: str | Path | None = ".env",
) -> Settings:
    """Builds the settings from flags, the environment, a `.env` file and defaults.

    Args:
        overrides: values from command-line flags, keyed by environment variable
            name; `None` means the flag was not given.
        environ: the process environment (`os.environ` when omitted).
        env_file: a dotenv file read when it exists; `None` reads no file.

    Raises:
        ConfigError: naming every bad variable and what it expects.
    """
    sources: list[Mapping[str, str | None]] = []
    if env_file is not None and Path(env_file).is_file():
        sources.append(dotenv_values(env_file))
    sources.append(os.environ if environ is None else environ)
    sources.append({k: v for k, v in (overrides or {}).items() if v is not None})

    merged: dict[str, str] = {}
    for source in sources:
        merged.update({k: v for k, v in source.items() if k in ENV_NAMES and v is not None})
    return build_settings(merged, _client_properties(merged.get("KAFKA_CLIENT_CONFIG", "").strip()))


def _client_properties(path: str) -> str | None:
    """The text of the librdkafka properties file KAFKA_CLIENT_CONFIG names, if it names one.

    Raises:
        ConfigError: the file cannot be read.
    """
    if not path:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"KAFKA_CLIENT_CONFIG must be a readable UTF-8 properties file, got {path!r} ({type(exc).__name__})"
        ) from None
