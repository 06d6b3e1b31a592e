"""Restored rows against the content hashes taken at dump time: each table COPYed out as pg_dump did, hashed.

pg_dump's COPY text is reproduced by the same statement (the archive's column list, in its order) in a session
set like pg_dump's: its own settings (DUMP_SESSION), the ones it left to its session (recorded at dump time,
tiers/content.OUTPUT_SETTINGS) and the archive's client encoding. A restore loads each table's rows in one COPY,
in dumped order, so a plain COPY of the restored table returns them in that order. The output is streamed
through hashlib, one CopyData message (one row, by the protocol) at a time, never held as a whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER, encode_query
from pg_backup_dagster.tiers.archive import UnsupportedArchive, read_archive
from pg_backup_dagster.tiers.content import copy_columns

# What pg_dump sets in its own session (src/bin/pg_dump/pg_dump.c, setup_connection), and no synchronized scans.
DUMP_SESSION = {"DateStyle": "ISO", "IntervalStyle": "postgres", "extra_float_digits": "3", "search_path": "",
                "synchronize_seqscans": "off", "statement_timeout": "0"}
# Built-in types whose text output changed in PostgreSQL 12 (floats print their shortest exact form): float4,
# float8 and the geometric types built on float8.
_FLOAT_TYPES = [700, 701, 600, 601, 602, 603, 604, 628, 718]
_MONEY = [790]
# (table, built-in type) for every type a table's columns reach: through domains, arrays, ranges, composites.
_TYPES_REACHED = f"""
WITH RECURSIVE reached(relid, typid) AS (
    SELECT a.attrelid, a.atttypid FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped AND {SYSTEM_SCHEMA_FILTER}
  UNION
    SELECT r.relid, x.typid FROM reached r JOIN pg_type t ON t.oid = r.typid
    CROSS JOIN LATERAL (
        SELECT t.typbasetype WHERE t.typbasetype <> 0
        UNION ALL SELECT t.typelem WHERE t.typelem <> 0
        UNION ALL SELECT g.rngsubtype FROM pg_range g WHERE g.rngtypid = t.oid OR g.rngmultitypid = t.oid
        UNION ALL SELECT a.atttypid FROM pg_attribute a
                  WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    ) x(typid)
)
SELECT DISTINCT n.nspname, c.relname, r.typid::int FROM reached r
JOIN pg_class c ON c.oid = r.relid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE r.typid = ANY(%s)
"""


@dataclass
class ContentSpec:
    """What comparing restored rows needs from a backup: the archive's COPY column lists and client encoding, the
    dump session's recorded output settings, and the source server's major version."""

    columns: dict[tuple[bytes, bytes], list[bytes] | None]
    encoding: str | None
    settings: dict[str, str]
    source_major: int

    @classmethod
    def of_archive(cls, archive: Path, settings: dict[str, str] | None, source_major: int) -> ContentSpec | None:
        """None when the archive is of a version the reader does not know (the check then compares counts)."""
        try:
            read = read_archive(archive)
        except UnsupportedArchive:
            return None
        return cls(copy_columns(read), read.encoding, dict(settings or {}), source_major)


@dataclass
class TableContent:
    """One restored table as COPY returned it: content hash and rows (None: the table could not be read)."""

    sha256: str | None
    rows: int


@contextmanager
def dump_like_session(dsn: str, spec: ContentSpec) -> Iterator[tuple[psycopg.Connection, list[str]]]:
    """A connection set like pg_dump's session was, and the recorded settings the server would not take."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        unset = []
        wanted = {**({"client_encoding": spec.encoding} if spec.encoding else {}), **DUMP_SESSION, **spec.settings}
        for name, value in wanted.items():
            try:
                conn.execute("SELECT set_config(%s, %s, false)", [name, value])
            except psycopg.Error:
                unset.append(name)  # e.g. an lc_monetary locale the check server lacks
        yield conn, unset


def not_comparable(dsn: str, spec: ContentSpec, expected: list[dict]) -> dict[tuple[str, str], str]:
    """(schema, table) -> why its rows cannot be compared by content here, for each table that gets counts only."""
    reasons: dict[tuple[str, str], str] = {}
    with dump_like_session(dsn, spec) as (conn, unset):
        check_major = conn.info.server_version // 10000
        columns = {key: spec.columns.get((encode_query(conn, key[0]), encode_query(conn, key[1])))
                   for key in ((row["schema"], row["table"]) for row in expected)}
        types: list[int] = []
        if (spec.source_major < 12) != (check_major < 12):
            types += _FLOAT_TYPES
        if "lc_monetary" in unset:
            types += _MONEY
        reached = conn.execute(_TYPES_REACHED, [types]).fetchall() if types else []
    for schema, table, typid in sorted(reached):
        why = (f"money output depends on lc_monetary {spec.settings.get('lc_monetary')!r}, unknown to the check "
               "server" if typid in _MONEY else
               f"float output changed in PostgreSQL 12; dumped from {spec.source_major}, restored on {check_major}")
        if why not in reasons.get((schema, table), ""):
            reasons[(schema, table)] = "; ".join(filter(None, [reasons.get((schema, table)), why]))
    for row in expected:
        key = (row["schema"], row["table"])
        if not row.get("sha256"):
            reasons[key] = "no content hash recorded for it"
        elif columns[key] is None:
            reasons[key] = "its COPY statement in the archive is not one this tool reads"
    unset_output = sorted(set(unset) - {"lc_monetary"})
    if unset_output:
        for row in expected:
            reasons[(row["schema"], row["table"])] = f"the check server refused setting(s) {', '.join(unset_output)}"
    return reasons


def _copy_statement(conn: psycopg.Connection, spec: ContentSpec, schema: str, table: str) -> bytes:
    names = [encode_query(conn, schema), encode_query(conn, table)]
    columns = spec.columns.get((names[0], names[1])) or []

    def quoted(name: bytes) -> bytes:
        return b'"' + name.replace(b'"', b'""') + b'"'

    listed = b" (" + b", ".join(quoted(c) for c in columns) + b")" if columns else b""
    return b"COPY " + quoted(names[0]) + b"." + quoted(names[1]) + listed + b" TO STDOUT"


def _hash_share(dsn: str, spec: ContentSpec, tables: list[tuple[str, str]]) -> list[TableContent]:
    found = []
    with dump_like_session(dsn, spec) as (conn, _):
        for schema, table in tables:
            sha, rows = hashlib.sha256(), 0
            try:
                with conn.cursor().copy(_copy_statement(conn, spec, schema, table)) as copy:
                    for row in copy:
                        sha.update(row)
                        rows += 1
            except psycopg.Error:
                if conn.closed:
                    raise
                found.append(TableContent(None, -1))  # missing from the restore: its count says so
                continue
            found.append(TableContent(sha.hexdigest(), rows))
    return found


def restored_content(dsn: str, spec: ContentSpec, tables: list[tuple[str, str]], workers: int = 1) -> list[TableContent]:
    """Each table's content hash and rows as COPY returns them, over up to `workers` connections."""
    shares = max(1, min(workers, len(tables)))
    size = -(-len(tables) // shares) if tables else 1
    parts = [tables[i : i + size] for i in range(0, len(tables), size)]
    if len(parts) <= 1:
        return _hash_share(dsn, spec, tables)
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        return [found for share in pool.map(lambda part: _hash_share(dsn, spec, part), parts) for found in share]
