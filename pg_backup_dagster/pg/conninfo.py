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
    """(DSN without password, environment for the child): `base` (default: ours) without a stray PGPASSWORD,
    plus this DSN's password."""
    safe, password_env = split_password(dsn)
    env = {k: v for k, v in (os.environ if base is None else base).items() if k != "PGPASSWORD"}
    return safe, {**env, **password_env}
