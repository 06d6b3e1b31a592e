"""SQL pieces every part shares: identifier quoting, the system-schema filter, small catalog probes."""

from __future__ import annotations

from collections.abc import Iterable

import psycopg

from pg_backup_dagster.errors import BackupError

# Schemas that belong to the server, never to a backup.
SYSTEM_SCHEMA_FILTER = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname !~ '^pg_toast' AND n.nspname !~ '^pg_temp'"
)


def quote_ident(*names: str) -> str:
    """Names quoted and dot-joined: exact case, any character, also fit as an exact pg_dump -n/-t pattern."""
    return ".".join('"' + name.replace('"', '""') + '"' for name in names)


def encode_query(conn: psycopg.Connection, text: str) -> bytes:
    """A query holding names, as the bytes the server must see: in the connection's client encoding, and on a
    SQL_ASCII connection (which converts nothing) the exact bytes the names were read from (surrogate escapes)."""
    encoding = conn.info.encoding
    if encoding == "ascii":
        return text.encode("utf-8", "surrogateescape")
    return text.encode(encoding)


def server_major(conn: psycopg.Connection) -> int:
    """The major version of the server behind a connection."""
    return conn.info.server_version // 10000


def server_major_at(dsn: str) -> int:
    """The major version of the server at dsn (a restore target), or a one-line error."""
    try:
        with psycopg.connect(dsn, connect_timeout=30) as conn:
            return server_major(conn)
    except psycopg.Error as exc:
        raise BackupError(f"cannot connect to the restore target: {exc}") from None


def existing_tables(conn: psycopg.Connection, among: Iterable[tuple[str, str]] | None = None) -> set[tuple[str, str]]:
    """(schema, table) of the tables and partitioned tables that exist, optionally only those `among`."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p')"
    ).fetchall()
    found = {(schema, table) for schema, table in rows}
    return found if among is None else found & set(among)
