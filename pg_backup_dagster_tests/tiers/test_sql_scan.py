"""The script scanner and chunked COPY pass-through, at every chunk boundary (no server needed)."""

from __future__ import annotations

import io

import pytest

from pg_backup_dagster.pg.sql_script import ChunkReader, LineKind, ScriptScanner, copy_compatible

SCRIPT = (
    b"SET transaction_timeout = 0;\n"
    b'COPY "a\nb FROM stdin;" (v) FROM stdin;\n'
    b"\\\\.\n"
    b"x\\.y\n"
    b"-- TOC entry 12 (class 1259 OID 1)\n"
    b"\\.\n"
    b"COPY public.e (v) FROM stdin;\n"
    b"\\.\n"
    b"SELECT $q$ it's\n-- TOC entry 3 (class 0 OID 0)\n$q$, E'\\'\n-- TOC entry 4 (class 0 OID 0)\n', a$b$c;\n"
    b'/* /* nested */\n-- TOC entry 5 (class 0 OID 0)\n*/ SELECT "x""\n-- TOC entry 6 (class 0 OID 0)\n";\n'
    b"-- TOC entry 7 (class 0 OID 0)\n"
)


def kinds(script: bytes) -> list[tuple[LineKind, bytes]]:
    scanner = ScriptScanner()
    return [(scanner.feed(line), line) for line in script.splitlines(keepends=True)]


def test_scanner_only_sees_top_level_lines() -> None:
    top_headers = [line for kind, line in kinds(SCRIPT) if kind is LineKind.TOP and line.startswith(b"-- TOC")]
    assert top_headers == [b"-- TOC entry 7 (class 0 OID 0)\n"]
    copy_rows = [line for kind, line in kinds(SCRIPT) if kind is LineKind.COPY_DATA]
    assert copy_rows == [b"\\\\.\n", b"x\\.y\n", b"-- TOC entry 12 (class 1259 OID 1)\n"]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 5, 7, 64, 1 << 20])
def test_chunk_reader_keeps_every_byte_and_counts_rows(chunk_size: int) -> None:
    reader, scanner, out, rows = ChunkReader(io.BytesIO(SCRIPT), chunk_size), ScriptScanner(), [], []
    while line := reader.readline():
        kind = scanner.feed(line)
        out.append(line)
        if scanner.in_copy and kind is not LineKind.COPY_DATA:
            rows.append(reader.copy_data(out.append))
    assert b"".join(out) == SCRIPT
    assert rows == [3, 0]
    assert scanner.at_top


def test_copy_compatible_drops_only_the_real_set() -> None:
    out: list[bytes] = []
    written = copy_compatible(io.BytesIO(SCRIPT), out.append, 15)
    assert b"".join(out) == SCRIPT.removeprefix(b"SET transaction_timeout = 0;\n")
    assert written == SCRIPT.count(b"\n") - 1
