"""Which database failures are worth retrying: connection limits and transient outages, never auth or permissions."""

from __future__ import annotations

import re

import psycopg

TRANSIENT_SQLSTATES = {"53300", "57P03", "53400"}
_TRANSIENT_TEXT = re.compile(
    r"too many clients|remaining connection slots|max client connections|no more connections allowed"
    r"|the database system is (starting up|shutting down|in recovery mode)|connection refused"
    r"|could not connect|server closed the connection unexpectedly|timeout expired|connection timed out"
    r"|terminating connection due to administrator command",
    re.I,
)
_PERMANENT_TEXT = re.compile(
    r"password authentication failed|authentication failed|no password supplied|permission denied"
    r"|does not exist|no pg_hba.conf entry|role .* is not permitted to log in",
    re.I,
)


class TransientDatabaseError(RuntimeError):
    """Raised (and retried) when a pg tool failed in a way a later attempt can fix."""


def is_transient_message(text: str) -> bool:
    """Classify a libpq/pg tool message; permanent causes win over transient-looking words."""
    return not _PERMANENT_TEXT.search(text) and bool(_TRANSIENT_TEXT.search(text))


def is_transient_error(exc: BaseException) -> bool:
    """True for errors a retry with backoff can fix (SQLSTATE 53300, 57P03, class 08, pooler limits)."""
    if isinstance(exc, TransientDatabaseError):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate in TRANSIENT_SQLSTATES or sqlstate.startswith("08"):
        return True
    if sqlstate:
        return False
    return is_transient_message(str(exc))
