"""Load a backup's roles.sql into a server: the restore's roles tier and the check that roles.sql loads."""

from __future__ import annotations

import subprocess
from pathlib import Path

from pg_backup_dagster.errors import BackupError, one_line, redact
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql_script import compatible_bytes
from pg_backup_dagster.pg.tools import PgTools


def restore_roles_file(tools: PgTools, roles_file: Path, dsn: str, server_major: int) -> list[str]:
    """Load roles.sql with psql; 'already exists' errors are tolerated and returned, any other error fails."""
    safe, env = child_env(dsn)
    with roles_file.open("rb") as handle:
        script = b"".join(compatible_bytes(handle, server_major))
    result = subprocess.run(
        [tools.path("psql"), "-X", "-q", "-d", safe, "-f", "-"], input=script, env=env, capture_output=True
    )
    stderr = result.stderr.decode("utf-8", errors="replace")
    errors = [ln for ln in stderr.splitlines() if "ERROR:" in ln or "FATAL:" in ln]
    fatal = [e for e in errors if "already exists" not in e]
    if result.returncode != 0 or fatal:
        raise BackupError(f"roles.sql failed: {redact(fatal[0] if fatal else stderr)}")
    return [one_line(e) for e in errors]
