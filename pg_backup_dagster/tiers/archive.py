"""pg_dump's custom-format archive: read its header and TOC, list it, write a subset of it.

The format (PostgreSQL's src/bin/pg_dump/pg_backup_archiver.c and pg_backup_custom.c) is read and written for the versions we know; anything
else raises UnsupportedArchive so the caller can fall back to pg_restore/pg_dump. Layout: header; TOC (count,
then per entry: ids, strings, dependency list, data offset); data blocks (type byte, dump id,
length-prefixed chunks, a zero length). The same TocEntry describes an entry read from the file and one
listed by `pg_restore -l -v` (for archive versions the reader does not know).
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable, Iterator
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
    """One TOC entry, read from the archive itself or from `pg_restore -l -v`: its ids, type and dependencies.

    Read from the archive it also knows where its stored fields lie and where its data block starts, so a
    subset can be written without re-encoding; CREATE and DROP text are not kept (a TOC can hold 100,000
    entries).
    """

    dump_id: int
    catalog_id: int  # pg_class oid of the catalog the object lives in (0 for data entries)
    oid: int
    desc: str
    deps: list[int] = field(default_factory=list)
    fields_span: tuple[int, int] = (0, 0)  # file positions of the fields between dump id and dependencies
    offset_state: int = 0
    offset: int = 0
    tag: bytes | None = None
    namespace: bytes | None = None
    copy_stmt: bytes | None = None
    defn: bytes | None = None  # kept for the ENCODING entry only (the client encoding pg_dump wrote data in)
    listing: str = ""  # the line `pg_restore -l` printed, names included (for people only)

    @property
    def line(self) -> str:
        """This entry as a `pg_restore -L` list line (pg_restore reads the id; the rest is for people)."""
        return self.listing or f"{self.dump_id}; {self.catalog_id} {self.oid} {self.desc}"


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
    def encoding(self) -> str | None:
        """The client encoding pg_dump wrote names and rows in (its ENCODING entry), e.g. `UTF8`."""
        entry = next((e for e in self.entries if e.desc == "ENCODING"), None)
        match = re.search(rb"client_encoding = '([^']+)'", entry.defn or b"") if entry else None
        return match[1].decode() if match else None

    @cached_property
    def dump_ids(self) -> set[int]:
        return {e.dump_id for e in self.entries}

    @cached_property
    def block_ends(self) -> dict[int, int]:
        """Where each data block ends: at the next block's start, the last one at the end of the file."""
        starts = sorted(e.offset for e in self.entries if e.offset_state == OFFSET_SET)
        ends = dict(zip(starts, [*starts[1:], self.size][: len(starts)], strict=True))  # none: no data at all
        return {e.dump_id: ends[e.offset] for e in self.entries if e.offset_state == OFFSET_SET}


def read_archive(path: Path) -> Archive:
    """Read the header and TOC of a custom-format archive."""
    with path.open("rb") as handle:
        archive = read_toc(handle)
        handle.seek(0)
        archive.raw = handle.read(archive.toc_end)
    archive.size = path.stat().st_size
    return archive


def entry_definition(archive: Archive, entry: TocEntry) -> bytes:
    """The CREATE text of an entry read from a finished archive (TocEntry does not keep it: a TOC can hold
    100,000 entries); re-read from the stored TOC bytes, for the few entries a caller asks about."""
    reader = ArchiveReader(io.BytesIO(archive.raw[entry.fields_span[0]:entry.fields_span[1]]), archive.int_size)
    reader.int()  # had data dumper
    for _ in range(4):
        reader.str()  # tableoid, oid, tag, desc
    reader.int()  # section
    return reader.str() or b""


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
        if name in ("copy", "namespace") or (name == "defn" and values["desc"] == b"ENCODING"):
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
    return TocEntry(
        dump_id, int(values["tableoid"] or 0), int(values["oid"] or 0), (values["desc"] or b"").decode(), deps,
        fields_span=(start, end), offset_state=state, offset=offset, tag=values["tag"],
        namespace=values["namespace"], copy_stmt=values["copy"], defn=values.get("defn"),
    )


def block_chunks(reader: ArchiveReader) -> Iterator[bytes]:
    """The stored chunks of one data block (the reader is just past its dump id), up to its zero length."""
    while size := reader.int():
        yield reader.raw(size)


def block_data(chunks: Iterable[bytes], compression: int, what: str) -> Iterator[bytes]:
    """A block's bytes as pg_dump wrote them: its chunks, inflated when the archive is gzip-compressed."""
    inflate = zlib.decompressobj() if compression == COMPRESSION_GZIP else None
    for chunk in chunks:
        yield inflate.decompress(chunk) if inflate is not None else chunk
    if inflate is not None:
        yield inflate.flush()
        if not inflate.eof:
            raise BackupError(f"full archive: data of {what} is a truncated zlib stream")


def skip_block(reader: ArchiveReader, block_type: int) -> None:
    """Read past a block nobody asked for (a table not in this tier, large objects)."""
    if block_type == BLOCK_LARGE_OBJECTS:
        while reader.int():  # one large object's oid, then its chunks; oid 0 ends the block
            for _ in block_chunks(reader):
                pass
    else:
        for _ in block_chunks(reader):
            pass


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


# Descriptions, with the catalog each one's entry carries when a shorter description is a prefix of it
# (a TABLE in schema "DATA" prints like TABLE DATA): 0 means "no catalog", None "not ambiguous".
_DESCS: dict[str, int | None] = {
    "TABLE": 1259,
    "TABLE DATA": 0,
    "TABLE ATTACH": 0,
    "SEQUENCE": 1259,
    "SEQUENCE SET": 0,
    "SEQUENCE OWNED BY": 0,
    "INDEX": 1259,
    "INDEX ATTACH": 0,
    "MATERIALIZED VIEW": 1259,
    "MATERIALIZED VIEW DATA": 0,
    "STATISTICS": 3381,
    "STATISTICS DATA": 0,
    "DEFAULT": 2604,
    "DEFAULT ACL": 826,
    "DATABASE": 1262,
    "DATABASE PROPERTIES": 0,
    "PUBLICATION": 6104,
    "PUBLICATION TABLE": 6106,
    "PUBLICATION TABLES IN SCHEMA": 6237,
    "BLOB": None,
    "BLOB METADATA": 2613,
    "BLOBS": 0,
    "FK CONSTRAINT": None,
    "CHECK CONSTRAINT": None,
    "CONSTRAINT": None,
    "TRIGGER": None,
    "EVENT TRIGGER": None,
    "RULE": None,
    "POLICY": None,
    "ROW SECURITY": 0,
    "COMMENT": 0,
    "SECURITY LABEL": 0,
    "ACL": 0,
    "SCHEMA": None,
    "EXTENSION": None,
    "TYPE": None,
    "SHELL TYPE": None,
    "DOMAIN": None,
    "FUNCTION": None,
    "PROCEDURE": None,
    "AGGREGATE": None,
    "VIEW": None,
    "FOREIGN TABLE": None,
    "ENCODING": None,
    "STDSTRINGS": None,
    "SEARCHPATH": None,
}
_DESC_ORDER = sorted(_DESCS, key=len, reverse=True)
_LIST_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")
_DEPENDS = re.compile(r"^;\s+depends on:(.*)$")


def parse_toc(text: str) -> list[TocEntry]:
    """Parse `pg_restore -l -v` output; names are ignored, only ids and the description are used."""
    entries: list[TocEntry] = []
    for line in text.splitlines():
        match = _LIST_LINE.match(line)
        if match:
            dump_id, classid, oid, rest = int(match[1]), int(match[2]), int(match[3]), match[4]
            entries.append(TocEntry(dump_id, classid, oid, _desc_of(rest, classid), listing=line))
            continue
        dep = _DEPENDS.match(line)
        if dep and entries:
            entries[-1].deps.extend(int(d) for d in dep[1].split())
    return entries


def _desc_of(rest: str, classid: int) -> str:
    """The entry type, disambiguated by catalog (TABLE in schema DATA vs TABLE DATA)."""
    for desc in _DESC_ORDER:
        if rest.startswith(desc + " "):
            expected = _DESCS[desc]
            if expected is None or (expected == 0) == (classid == 0):
                return desc
    return rest.split(" ", 1)[0]
