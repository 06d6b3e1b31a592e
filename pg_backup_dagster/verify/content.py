"""Restored rows against the content hashes taken at dump time: each table COPYed out as pg_dump did, hashed.

pg_dump's COPY text is reproduced by the same statement (the archive's column list, in its order) in a session
set like pg_dump's: its own settings (DUMP_SESSION), the ones it left to its session (recorded at dump time,
tiers/content.OUTPUT_SETTINGS) and the archive's client encoding. A restore loads each table's rows in one COPY,
in dumped order, so a plain COPY of the restored table returns them in that order. The output is streamed
through hashlib in large chunks, never held as a whole.
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.sql import SYSTEM_SCHEMA_FILTER, encode_query
from pg_backup_dagster.restore.guard import restrict_lines
from pg_backup_dagster.tiers.archive import UnsupportedArchive, read_archive
from pg_backup_dagster.tiers.content import OUTPUT_SETTINGS, copy_columns

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
        """None when the archive is of a version the reader does not know (the check then compares counts). Only
        the settings this tool records are taken from the manifest."""
        try:
            read = read_archive(archive)
        except UnsupportedArchive:
            return None
        recorded = {name: value for name, value in (settings or {}).items() if name in OUTPUT_SETTINGS}
        return cls(copy_columns(read), read.encoding, recorded, source_major)


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


class MarkedStream:
    """Cuts one psql stdout stream at our marker lines (`pgbd-TOKEN i`) and hashes what lies between them.

    COPY text escapes every newline inside a value, so each line is one row and a marker line carries a token
    chosen now: no row can forge one. Scanned in large chunks at C speed (find, count), never held whole."""

    def __init__(self, token: bytes) -> None:
        self.prefix = b"\npgbd-" + token + b" "
        self.buf = b"\n"  # buf[0] is a newline already accounted for (a virtual one before the first marker)
        self.started = False  # the first marker came
        self.found: list[TableContent] = []
        self.sha = hashlib.sha256()
        self.rows = 0

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        while True:
            pos = self.buf.find(self.prefix)
            if pos < 0:
                cut = max(1, len(self.buf) - len(self.prefix) + 1)  # a marker may begin in what is held back
                self._take(cut)
                self.buf = self.buf[cut - 1 :]
                return
            end = self.buf.find(b"\n", pos + len(self.prefix))
            self._take(pos + 1)
            if end < 0:
                self.buf = self.buf[pos:]
                return
            self._close()
            self.started = True
            self.buf = self.buf[end:]

    def _take(self, cut: int) -> None:
        self.sha.update(memoryview(self.buf)[1:cut])
        self.rows += self.buf.count(b"\n", 1, cut)

    def _close(self) -> None:
        if self.started:
            self.found.append(TableContent(self.sha.hexdigest(), self.rows))
        self.sha, self.rows = hashlib.sha256(), 0


def _literal(value: str) -> bytes:
    return ("'" + value.replace("'", "''") + "'").encode()


def _stream_share(psql: str, dsn: str, settings: dict[str, str], encoding: str | None,
                  statements: list[bytes]) -> list[TableContent]:
    """Every COPY of this share; a table whose COPY fails gets no hash (so it differs) and the rest go on."""
    found: list[TableContent] = []
    while len(found) < len(statements):
        found += _stream_once(psql, dsn, settings, encoding, statements[len(found) :])
        if len(found) < len(statements):
            found.append(TableContent(None, -1))  # psql stopped at this table's COPY
    return found


def _stream_once(psql: str, dsn: str, settings: dict[str, str], encoding: str | None,
                 statements: list[bytes]) -> list[TableContent]:
    """One psql runs the COPYs (under our `\\restrict`, stopping at the first error) with a marker before each;
    rows stream through sha256 at C speed (psycopg's copy API costs ~3x more per row in Python). Returns the
    tables read in full: a table's segment counts once the next marker came."""
    token = secrets.token_hex(16).encode()
    head, tail = restrict_lines(psql)
    script = [head, *(b"SET %s TO %s;\n" % (name.encode(), _literal(value)) for name, value in settings.items())]
    for i, statement in enumerate(statements):
        script += [b"COPY (SELECT 'pgbd-%s %d') TO STDOUT;\n" % (token, i), statement, b";\n"]
    script += [b"COPY (SELECT 'pgbd-%s end') TO STDOUT;\n" % token, tail]
    safe, env = child_env(dsn)
    if encoding:
        env["PGCLIENTENCODING"] = encoding
    segments = MarkedStream(token)
    with tempfile.TemporaryDirectory(prefix="pgbd-hash-") as tmp:
        path = Path(tmp) / "copy.sql"
        path.write_bytes(b"".join(script))
        proc = subprocess.Popen([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", safe, "-f", str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)  # a failure shows as -1
        assert proc.stdout is not None
        try:
            while chunk := proc.stdout.read(1 << 20):
                segments.feed(chunk)
        finally:
            proc.stdout.close()
            proc.wait()
    return segments.found


def restored_content(dsn: str, spec: ContentSpec, tables: list[tuple[str, str]], psql: str,
                     workers: int = 1) -> list[TableContent]:
    """Each table's content hash and rows as COPY returns them, over up to `workers` psql sessions."""
    if not tables:
        return []
    with dump_like_session(dsn, spec) as (conn, unset):
        statements = [_copy_statement(conn, spec, schema, table) for schema, table in tables]
    settings = {name: value for name, value in {**DUMP_SESSION, **spec.settings}.items() if name not in unset}
    size = -(-len(statements) // max(1, min(workers, len(statements))))
    parts = [statements[i : i + size] for i in range(0, len(statements), size)]
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        shares = pool.map(lambda part: _stream_share(psql, dsn, settings, spec.encoding, part), parts)
        return [found for share in shares for found in share]
