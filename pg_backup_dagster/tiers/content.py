"""Content hashes: the sha256 of each table's COPY data exactly as pg_dump wrote it (the rows before `\\.`).

A row count proves how many rows came back, not which. pg_dump's COPY data is the server's own text output of
every row, so the same bytes come back from the per-table data.sql (its rows are copied out of the archive's
block) and from `COPY table (columns) TO STDOUT` of a restored table (same session settings; a restore loads the
rows in dumped order, so the physical order is the same). One hash per table ties the three tiers together.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import psycopg

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.sql_script import ChunkReader, LineKind, ScriptScanner
from pg_backup_dagster.tiers.archive import (
    BLOCK_TABLE_DATA,
    COMPRESSION_GZIP,
    COMPRESSION_NONE,
    DATA_BLOCKS,
    Archive,
    ArchiveReader,
    UnsupportedArchive,
    block_chunks,
    block_data,
    read_toc,
    skip_block,
)

COPY_END = b"\\.\n\n\n"  # what pg_dump writes after a table's rows: the end-of-data line and two blank lines
_IDENT = rb'(?:"(?:[^"]|"")*"|[^\s".,()]+)'
_COPY_STMT = re.compile(rb"COPY " + _IDENT + rb"\." + _IDENT + rb" (?:\((" + _IDENT + rb"(?:, " + _IDENT
                        + rb")*)\))? FROM stdin;\n?", re.S)


class CopyDataDigest:
    """sha256 and row count of a table's rows fed block bytes as stored; the end-of-data tail is held back."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._held = b""
        self.rows = 0

    def update(self, data: bytes) -> None:
        if len(data) >= len(COPY_END):
            self._sha.update(self._held)
            self._sha.update(memoryview(data)[: -len(COPY_END)])  # no copy of the chunk
            self._held = data[-len(COPY_END) :]
        else:
            held = self._held + data
            self._sha.update(held[: -len(COPY_END)])
            self._held = held[-len(COPY_END) :]
        self.rows += data.count(b"\n")

    def end_block(self, what: str) -> None:
        """A block ends with COPY's end line, which is not part of the rows."""
        if self._held != COPY_END:
            raise BackupError(f"full archive: data of {what} does not end with COPY's end line")
        self._held = b""
        self.rows -= COPY_END.count(b"\n")

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def archive_digests(path: Path) -> dict[int, tuple[str, int]]:
    """Table oid -> (content hash, rows) of every table data block of a finished archive, in one sequential read.

    What the live split computes while it copies the rows out; this is for backups without the table tier."""
    with path.open("rb") as handle:
        archive = read_toc(handle)
        if archive.compression not in (COMPRESSION_NONE, COMPRESSION_GZIP):
            raise UnsupportedArchive(f"compression method {archive.compression}")
        oids = {e.dump_id: e.oid for e in archive.entries if e.desc == "TABLE DATA"}
        reader = ArchiveReader(handle, archive.int_size, archive.off_size)
        found: dict[int, tuple[str, int]] = {}
        while block := handle.read(1):
            dump_id = reader.int()
            if block[0] == BLOCK_TABLE_DATA and dump_id in oids:
                digest, what = CopyDataDigest(), f"TOC entry {dump_id}"
                for data in block_data(block_chunks(reader), archive.compression, what):
                    digest.update(data)
                digest.end_block(what)
                found[oids[dump_id]] = (digest.hexdigest(), digest.rows)
            elif block[0] in DATA_BLOCKS:
                skip_block(reader, block[0])
            else:
                raise BackupError(f"full archive: unknown data block type {block[0]} at entry {dump_id}")
    return found


def script_digest(path: Path) -> str | None:
    """The content hash of the COPY data in a SQL file (a table's data.sql), read with the one SQL scanner;
    None when it holds no COPY."""
    scanner, sha, blocks = ScriptScanner(), hashlib.sha256(), 0
    with path.open("rb") as handle:
        reader = ChunkReader(handle)
        while line := reader.readline():
            kind = scanner.feed(line)
            if scanner.in_copy and kind is not LineKind.COPY_DATA:
                reader.copy_data(sha.update)
                blocks += 1
    return sha.hexdigest() if blocks else None


def copy_columns(archive: Archive) -> dict[tuple[bytes, bytes], list[bytes] | None]:
    """(schema, table) as stored -> the column names its COPY lists, in the archive's order and encoding (None: a
    statement this reader does not understand). pg_dump leaves out dropped and generated columns."""
    columns: dict[tuple[bytes, bytes], list[bytes] | None] = {}
    for entry in archive.entries:
        if entry.desc != "TABLE DATA" or entry.namespace is None or entry.tag is None:
            continue
        match = _COPY_STMT.fullmatch(entry.copy_stmt or b"")
        names = re.findall(_IDENT, match[1]) if match and match[1] else []
        columns[(entry.namespace, entry.tag)] = None if match is None else [
            name[1:-1].replace(b'""', b'"') if name.startswith(b'"') else name for name in names
        ]
    return columns


# What COPY's text depends on that pg_dump leaves to its session (it sets DateStyle, IntervalStyle,
# extra_float_digits and search_path itself): recorded at dump time, set again where restored rows are hashed.
OUTPUT_SETTINGS = ("TimeZone", "bytea_output", "lc_monetary")


def output_settings(conn: psycopg.Connection) -> dict[str, str]:
    """This session's values of OUTPUT_SETTINGS: pg_dump's session has the same role, database and defaults."""
    row = conn.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in OUTPUT_SETTINGS)).fetchone()
    assert row is not None
    return dict(zip(OUTPUT_SETTINGS, row, strict=True))
