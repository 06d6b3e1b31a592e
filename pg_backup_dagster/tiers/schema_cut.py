"""Per-schema custom-format archives cut out of the full archive, instead of one more pg_dump per schema.

Every `pg_dump --schema` reads the whole catalog and dumps and compresses its data a second time; cutting the
schema's entries and their already-compressed data blocks out of the full archive costs a file copy and
describes exactly the same snapshot. The archive format (pg_backup_archiver.c, pg_backup_custom.c) is read and
written for the versions we know; anything else makes the caller fall back to pg_dump.

Layout: header; TOC (count, then per entry: ids, strings, dependency list, data offset); data blocks
(type byte, dump id, length-prefixed chunks, a zero length). Entries are chosen by the raw schema name the
TOC stores for every schema-qualified object (never by names printed by `pg_restore -l`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError

MAGIC = b"PGDMP"
KNOWN_VERSIONS = {(1, 14), (1, 15), (1, 16)}
OFFSET_NOT_SET, OFFSET_SET, OFFSET_NO_DATA = 1, 2, 3
BLOCK_TABLE_DATA, BLOCK_LARGE_OBJECTS = 1, 3
DATA_BLOCKS = {BLOCK_TABLE_DATA, BLOCK_LARGE_OBJECTS}
COMPRESSION_NONE, COMPRESSION_GZIP = 0, 1  # pg_compress_algorithm; lz4 and zstd are 2 and 3
_FOLLOWERS = {"COMMENT", "SECURITY LABEL", "ACL"}
_SESSION = {"ENCODING", "STDSTRINGS", "SEARCHPATH"}  # settings every archive carries


class UnsupportedArchive(Exception):
    """The archive is of a kind this reader does not know: use pg_dump for the schema tier instead."""


@dataclass
class ArchiveReader:
    """Reads the archive's integers (a sign byte, then a little-endian magnitude), strings and offsets."""

    stream: BinaryIO
    int_size: int = 4
    off_size: int = 8

    def byte(self) -> int:
        data = self.stream.read(1)
        if not data:
            raise UnsupportedArchive("archive ends early")
        return data[0]

    def raw(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise UnsupportedArchive("archive ends early")
        return data

    def int(self) -> int:
        data = self.raw(1 + self.int_size)  # one read per integer: a TOC holds hundreds of thousands
        value = int.from_bytes(data[1:], "little")
        return -value if data[0] else value

    def str(self) -> bytes | None:
        length = self.int()
        return None if length < 0 else self.raw(length)

    def offset(self) -> tuple[int, int]:
        state = self.byte()
        return state, int.from_bytes(self.raw(self.off_size), "little")


@dataclass
class _Writer:
    out: BinaryIO
    int_size: int
    off_size: int

    def int(self, value: int) -> None:
        self.out.write(bytes([1 if value < 0 else 0]) + abs(value).to_bytes(self.int_size, "little"))

    def str(self, value: bytes | None) -> None:
        if value is None:
            self.int(-1)
        else:
            self.int(len(value))
            self.out.write(value)


@dataclass(slots=True)
class TocEntry:
    """One TOC entry: where its stored fields lie, its dependencies, where its data block starts, and the few
    fields the tiers look at. The rest (CREATE and DROP text) is not kept: a TOC can hold 100,000 entries."""

    dump_id: int
    fields_span: tuple[int, int]  # file positions of the fields between dump id and dependencies
    deps: list[int]
    offset_state: int
    offset: int
    desc: str = ""
    tag: bytes | None = None
    namespace: bytes | None = None
    catalog_id: int = 0  # pg_class oid of the catalog the object lives in (0 for data entries)
    oid: int = 0
    copy_stmt: bytes | None = None


@dataclass
class Archive:
    header: bytes
    int_size: int
    off_size: int
    version: tuple[int, int]
    compression: int = COMPRESSION_GZIP
    entries: list[TocEntry] = field(default_factory=list)
    toc_end: int = 0
    size: int = 0  # of the whole file, when read from a finished one
    raw: bytes = b""  # header and TOC as stored, when read from a finished file: fields are copied from it

    @cached_property
    def by_namespace(self) -> dict[bytes | None, list[TocEntry]]:
        grouped: dict[bytes | None, list[TocEntry]] = {}
        for entry in self.entries:
            grouped.setdefault(entry.namespace, []).append(entry)
        return grouped

    @cached_property
    def dump_ids(self) -> set[int]:
        return {e.dump_id for e in self.entries}

    @cached_property
    def block_ends(self) -> dict[int, int]:
        """Where each data block ends: at the next block's start, the last one at the end of the file."""
        starts = sorted(e.offset for e in self.entries if e.offset_state == OFFSET_SET)
        ends = dict(zip(starts, [*starts[1:], self.size], strict=True))
        return {e.dump_id: ends[e.offset] for e in self.entries if e.offset_state == OFFSET_SET}


def read_archive(path: Path) -> Archive:
    """Read the header and TOC of a custom-format archive."""
    with path.open("rb") as handle:
        archive = read_toc(handle)
        handle.seek(0)
        archive.raw = handle.read(archive.toc_end)
    archive.size = path.stat().st_size
    return archive


def read_toc(handle: BinaryIO) -> Archive:
    """Read header and TOC from a stream at the archive's start; the stream is left where data blocks begin."""
    if handle.read(5) != MAGIC:
        raise UnsupportedArchive("not a custom-format archive")
    version = handle.read(6)
    if len(version) != 6:
        raise UnsupportedArchive("archive ends early")
    major, minor, _rev, int_size, off_size, fmt = version
    if (major, minor) not in KNOWN_VERSIONS or fmt != 1:
        raise UnsupportedArchive(f"archive version {major}.{minor} format {fmt}")
    reader = ArchiveReader(handle, int_size, off_size)
    compression = _compression(reader, (major, minor))
    for _ in range(7):
        reader.int()  # creation time
    for _ in range(3):
        reader.str()  # database name, server version, pg_dump version
    header_end = handle.tell()
    handle.seek(0)
    archive = Archive(handle.read(header_end), int_size, off_size, (major, minor), compression)
    count = reader.int()
    archive.entries = [_read_entry(reader, (major, minor)) for _ in range(count)]
    archive.toc_end = handle.tell()
    return archive


def _compression(reader: ArchiveReader, version: tuple[int, int]) -> int:
    """The compression method: a method byte since 1.15, before that a zlib level (0 meaning none)."""
    if version >= (1, 15):
        return reader.byte()
    return COMPRESSION_GZIP if reader.int() else COMPRESSION_NONE


def _read_entry(reader: ArchiveReader, version: tuple[int, int]) -> TocEntry:
    dump_id = reader.int()
    start = reader.stream.tell()
    reader.int()  # had data dumper
    values = {name: reader.str() for name in ("tableoid", "oid", "tag", "desc")}
    reader.int()  # section
    for name in ("defn", "drop", "copy", "namespace", "tablespace", "tableam"):
        value = reader.str()
        if name in ("copy", "namespace"):
            values[name] = value
    if version >= (1, 16):
        reader.int()  # relkind
    reader.str()  # owner
    reader.str()  # "false" (with oids)
    end = reader.stream.tell()
    deps = []
    while (dep := reader.str()) is not None:
        deps.append(int(dep))
    state, offset = reader.offset()
    return TocEntry(dump_id, (start, end), deps, state, offset, (values["desc"] or b"").decode(), values["tag"],
                    values["namespace"], int(values["tableoid"] or 0), int(values["oid"] or 0), values["copy"])


def schema_entries(archive: Archive, schema: str) -> list[TocEntry]:
    """What `pg_dump --schema` would hold: the schema, everything in it, and comments on those.

    Looked up by namespace, not by scanning the TOC: a many-schema archive is cut once per schema.
    """
    name = schema.encode()
    unqualified = archive.by_namespace.get(None, []) + archive.by_namespace.get(b"", [])
    chosen = {e.dump_id for e in archive.by_namespace.get(name, [])}
    chosen |= {e.dump_id for e in unqualified if e.desc in _SESSION or (e.desc == "SCHEMA" and e.tag == name)}
    chosen |= {e.dump_id for e in unqualified if e.desc in _FOLLOWERS and e.deps and set(e.deps) <= chosen}
    return [e for e in archive.entries if e.dump_id in chosen]


def write_subset(source: Path, archive: Archive, entries: list[TocEntry], dest: Path) -> None:
    """Write an archive of `entries` (their data blocks copied byte for byte) to dest."""
    if any(e.offset_state not in (OFFSET_SET, OFFSET_NO_DATA) for e in entries):
        raise UnsupportedArchive("data offsets not recorded (archive was written to a pipe)")
    if len(archive.raw) != archive.toc_end:
        raise UnsupportedArchive("the stored TOC was not kept (read the archive with read_archive)")
    left_out = archive.dump_ids - {e.dump_id for e in entries}
    ends = archive.block_ends
    toc = io.BytesIO()
    writer = _Writer(toc, archive.int_size, archive.off_size)
    # TOC size does not depend on the offsets' values, so lay it out once to learn where data begins.
    _write_toc(writer, archive.raw, entries, left_out, {e.dump_id: 0 for e in entries})
    position = len(archive.header) + toc.tell()
    new_offsets = {}
    for entry in entries:
        if entry.offset_state == OFFSET_SET:
            new_offsets[entry.dump_id] = position
            position += ends[entry.dump_id] - entry.offset
    toc = io.BytesIO()
    _write_toc(_Writer(toc, archive.int_size, archive.off_size), archive.raw, entries, left_out, new_offsets)
    with source.open("rb") as src, dest.open("wb") as out:
        out.write(archive.header)
        out.write(toc.getvalue())
        for entry in entries:
            if entry.offset_state == OFFSET_SET:
                _copy_block(src, out, entry, ends[entry.dump_id], archive.int_size)


def _write_toc(
    writer: _Writer, raw: bytes, entries: list[TocEntry], left_out: set[int], offsets: dict[int, int]
) -> None:
    """The TOC of `entries`, fields copied as pg_dump stored them; dependencies on entries left out are dropped."""
    writer.int(len(entries))
    stored = memoryview(raw)
    for entry in entries:
        writer.int(entry.dump_id)
        start, end = entry.fields_span
        writer.out.write(stored[start:end])
        for dep in entry.deps:
            if dep not in left_out:
                writer.str(str(dep).encode())
        writer.str(None)
        state = entry.offset_state if entry.offset_state == OFFSET_NO_DATA else OFFSET_SET
        writer.out.write(bytes([state]) + offsets.get(entry.dump_id, 0).to_bytes(writer.off_size, "little"))


def _copy_block(src: BinaryIO, out: BinaryIO, entry: TocEntry, end: int, int_size: int) -> None:
    src.seek(entry.offset)
    head = src.read(1 + 1 + int_size)
    if head[0] not in DATA_BLOCKS or int.from_bytes(head[2:], "little") != entry.dump_id:
        raise BackupError(f"full archive: data block of TOC entry {entry.dump_id} is not where its offset says")
    out.write(head)
    remaining = end - entry.offset - len(head)
    while remaining > 0:
        chunk = src.read(min(remaining, 1 << 20))
        if not chunk:
            raise BackupError(f"full archive: data block of TOC entry {entry.dump_id} is truncated")
        out.write(chunk)
        remaining -= len(chunk)


def copy_archive_for_schema(full: Path, schema: str, dest: Path, archive: Archive | None = None) -> None:
    """dest = the schema's part of the full archive, a valid custom-format archive of its own."""
    archive = archive or read_archive(full)
    write_subset(full, archive, schema_entries(archive, schema), dest)

