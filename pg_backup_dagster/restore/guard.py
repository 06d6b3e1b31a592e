r"""Backup content never runs client-side commands: every psql run over it starts with our own `\restrict KEY`.

psql then refuses every meta-command (`\!`, `\o`, `\copy … program`, `\connect`, …) until `\unrestrict KEY`,
and the key is random per run, so nothing inside a backup can lift it. A psql that does not know `\restrict`
is refused rather than run unguarded.
"""

from __future__ import annotations

import functools
import re
import secrets
import subprocess

from pg_backup_dagster.errors import BackupError

# psql learned \restrict in these minor releases (and in every 18+).
_RESTRICT_SINCE = {13: 22, 14: 19, 15: 14, 16: 10, 17: 6}
_PSQL_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@functools.lru_cache(maxsize=8)
def psql_version(psql: str) -> tuple[int, int] | None:
    """(major, minor) of a psql binary, or None when it cannot be read."""
    try:
        out = subprocess.run([psql, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _PSQL_VERSION.search(out)
    return (int(match.group(1)), int(match.group(2) or 0)) if match else None


def psql_understands_restrict(psql: str) -> bool:
    """Whether this psql knows \\restrict (17.6, 16.10, 15.14, 14.19, 13.22 and 18+)."""
    version = psql_version(psql)
    if version is None:
        return False
    major, minor = version
    return major >= 18 or minor >= _RESTRICT_SINCE.get(major, 10**6)


def restrict_lines(psql: str) -> tuple[bytes, bytes]:
    """(`\\restrict KEY` line, `\\unrestrict KEY` line) with a fresh random key; refuses a psql without them."""
    if not psql_understands_restrict(psql):
        version = psql_version(psql)
        shown = f"{version[0]}.{version[1]}" if version else "of unknown version"
        raise BackupError(
            f"psql {shown} ({psql}) does not know \\restrict (needs 13.22, 14.19, 15.14, 16.10, 17.6 or 18+): "
            "refusing to run backup content through it unguarded; set PG_BACKUP_PG_BIN to newer client programs"
        )
    key = secrets.token_hex(16).encode()
    return b"\\restrict " + key + b"\n", b"\\unrestrict " + key + b"\n"
