"""One exception type with a one-line, password-free message, and the redaction every message goes through."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@\s]*)@", re.I)
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_SECRETS: set[str] = set()


class BackupError(RuntimeError):
    """A failure with a cause a person can act on; its text is always redacted and on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(redact(message)))


def register_secret(secret: str | None) -> None:
    """Remember a password so that redact() removes it even where it appears bare."""
    if secret and len(secret) >= 3:
        _SECRETS.add(secret)


def redact(text: str) -> str:
    """Remove passwords from DSNs, key=value conninfo and any registered secret."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KV_PASSWORD.sub(lambda m: f"{m['key']}***", text)
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def one_line(text: str, limit: int = 400) -> str:
    """Collapse a multi-line tool message into one line a log reader can scan."""
    flat = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def first_of(items: list[str], shown: int = 10) -> str:
    """A list short enough for a one-line message: the first `shown` items and how many more."""
    return ", ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")
