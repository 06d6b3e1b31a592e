"""Connection strings for pg tools: the password leaves the DSN and travels in the child's environment only."""

from __future__ import annotations

import os
from collections.abc import Mapping

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_dagster.errors import register_secret


def split_password(dsn: str) -> tuple[str, dict[str, str]]:
    """(DSN without password, {"PGPASSWORD": …}) so a pg tool's argv never shows the secret."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    register_secret(str(password) if password else None)
    return make_conninfo(**{k: str(v) for k, v in params.items()}), ({"PGPASSWORD": str(password)} if password else {})


def child_env(dsn: str, base: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """(DSN without password, environment for the child): `base` (default: ours) plus this DSN's password, which
    replaces an inherited PGPASSWORD. A DSN without one keeps the inherited PGPASSWORD, as our own connections do
    (libpq reads it): that is how the README and RESTORE.md tell people to give a restore target's password."""
    safe, password_env = split_password(dsn)
    return safe, {**(os.environ if base is None else base), **password_env}
