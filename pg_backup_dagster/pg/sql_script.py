"""The one SQL scanner: pg_dump/pg_restore/pg_dumpall scripts read line by line, and filtered for older servers.

`ScriptScanner` knows, for every line, whether it starts outside any literal, inside a string/identifier/
comment/dollar-quoted body, or inside COPY data, and whether it ends a statement. The splitter uses it so that
a `-- TOC entry` header forged inside a comment, default or row is never taken for a real one,
`compatible_lines` so that it only ever drops real top-level commands, and `split_statements` (roles.sql) so
that a `;` inside a string never ends a statement. `tokens` cuts one statement into tokens for rewriting.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import BinaryIO

_IDENT_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_$") | frozenset(
    range(0x80, 0x100)
)
_TOP_TOKEN = re.compile(rb"""'|"|\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$|--|/\*""")
_STD_STRING_END = re.compile(rb"''|'")
_ESC_STRING_END = re.compile(rb"\\.|''|'", re.S)
_IDENT_END = re.compile(rb'""|"')
_BLOCK_COMMENT = re.compile(rb"/\*|\*/")
_COPY_END = (b"\\.\n", b"\\.\r\n", b"\\.")


class LineKind(Enum):
    """Where a line starts: only TOP lines can hold commands or TOC headers."""

    TOP = "top"
    LITERAL = "literal"
    COPY_DATA = "copy_data"
    COPY_END = "copy_end"


class ScriptScanner:
    """Tracks quoting state across lines (strings, E'' strings, identifiers, $tag$ bodies, /* */, COPY)."""

    def __init__(self) -> None:
        self._mode: bytes | None = None  # None = top level; b"'", b"E", b'"', b"/*" or b"$tag$"
        self._depth = 0
        self._in_copy = False
        self._copy_statement = False
        self._comment_at: int | None = None
        self.ends_statement = False  # the last line fed ended a statement (`;` at top level)

    @property
    def in_copy(self) -> bool:
        return self._in_copy

    @property
    def at_top(self) -> bool:
        return self._mode is None and not self._in_copy

    def feed(self, line: bytes) -> LineKind:
        """Classify one line (with its newline) and advance the state past it."""
        if self._in_copy:
            if line in _COPY_END:
                self._in_copy = False
                return LineKind.COPY_END
            return LineKind.COPY_DATA
        kind = LineKind.TOP if self._mode is None else LineKind.LITERAL
        if kind is LineKind.TOP and line.startswith(b"COPY "):
            self._copy_statement = True
        self._comment_at = None
        self._scan(line)
        code = line if self._comment_at is None else line[: self._comment_at]
        self.ends_statement = self._mode is None and code.rstrip().endswith(b";")
        if self._copy_statement and self._mode is None and line.rstrip().endswith(b"FROM stdin;"):
            self._copy_statement = False
            self._in_copy = True
        return kind

    def _scan(self, line: bytes) -> None:
        pos = 0
        while pos < len(line):
            pos = self._scan_top(line, pos) if self._mode is None else self._scan_quoted(line, pos)

    def _scan_top(self, line: bytes, pos: int) -> int:
        match = _TOP_TOKEN.search(line, pos)
        if match is None:
            return len(line)
        token, start = match.group(), match.start()
        if token == b"--":
            self._comment_at = start
            return len(line)
        if token.startswith(b"$") and start > 0 and line[start - 1] in _IDENT_BYTES:
            return start + 1  # part of an identifier such as a$b$, not a dollar quote
        if (
            token == b"'"
            and start > 0
            and line[start - 1] in b"Ee"
            and (start < 2 or line[start - 2] not in _IDENT_BYTES)
        ):
            self._mode = b"E"
        elif token == b"/*":
            self._mode, self._depth = b"/*", 1
        else:
            self._mode = token
        return match.end()

    def _scan_quoted(self, line: bytes, pos: int) -> int:
        mode = self._mode
        assert mode is not None
        if mode == b"/*":
            return self._scan_comment(line, pos)
        if mode.startswith(b"$"):
            end = line.find(mode, pos)
            if end < 0:
                return len(line)
            self._mode = None
            return end + len(mode)
        pattern = {b"'": _STD_STRING_END, b"E": _ESC_STRING_END, b'"': _IDENT_END}[mode]
        closing = b'"' if mode == b'"' else b"'"
        for match in pattern.finditer(line, pos):
            if match.group() == closing:
                self._mode = None
                return match.end()
        return len(line)

    def _scan_comment(self, line: bytes, pos: int) -> int:
        for match in _BLOCK_COMMENT.finditer(line, pos):
            self._depth += 1 if match.group() == b"/*" else -1
            if self._depth == 0:
                self._mode = None
                return match.end()
        return len(line)


_RESTRICT = re.compile(rb"^\\(un)?restrict\b")
_SET_NAME = re.compile(rb"^SET\s+(?:SESSION\s+)?([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|TO\b)", re.I)
# Settings (name -> first major that knows it) that pg_dump 18 writes and older servers reject.
_SETTING_SINCE = {
    b"transaction_timeout": 17,
    b"default_table_access_method": 12,
    b"idle_in_transaction_session_timeout": 10,
    b"row_security": 10,
}


def is_restrict_line(line: bytes) -> bool:
    """psql's `\\restrict KEY` / `\\unrestrict KEY` meta-commands (pg_dump 17.6+/18)."""
    return _RESTRICT.match(line) is not None


def known_setting(name: str, server_major: int) -> bool:
    """Whether a server of this major knows the setting (as far as pg_dump 18's output goes)."""
    return server_major >= _SETTING_SINCE.get(name.lower().encode(), 0)


def setting_name(line: bytes) -> bytes | None:
    """The parameter a top-level `SET name = ...;` line changes, lower-cased, else None."""
    match = _SET_NAME.match(line)
    return match.group(1).lower() if match else None


def compatible_bytes(lines: Iterable[bytes], server_major: int, *, keep_restrict: bool = False) -> Iterator[bytes]:
    """Bytes version of compatible_lines (what restore streams use: data is never decoded)."""
    scanner = ScriptScanner()
    for line in lines:
        if scanner.feed(line) is LineKind.TOP and _rejected(line, server_major, keep_restrict):
            continue
        yield line


def compatible_lines(lines: Iterable[str], server_major: int, *, keep_restrict: bool = False) -> Iterator[str]:
    """Drop what an older server (or psql) rejects from pg_dump 18 output, leaving data rows untouched.

    Dropped: `SET` of settings the server does not know (`transaction_timeout` before 17, …) and, unless
    keep_restrict, psql's `\\restrict`/`\\unrestrict` (psql before 17.6/16.10/15.14 fails on them; they only
    protect psql itself, the restore then adds its own when its psql understands them).
    """
    for line in compatible_bytes((line.encode("utf-8") for line in lines), server_major, keep_restrict=keep_restrict):
        yield line.decode("utf-8")


class ChunkReader:
    """Reads a script in large chunks: lines for SQL, and COPY data passed through at C speed.

    Memory stays bounded by the chunk size (plus the longest SQL line), whatever the size of a row.
    """

    def __init__(self, raw: BinaryIO, chunk_size: int = 1 << 20) -> None:
        self._raw = raw
        self._size = chunk_size
        self._buf = b""
        self._pos = 0

    def _fill(self) -> bool:
        chunk = self._raw.read(self._size)
        if not chunk:
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def readline(self) -> bytes:
        """The next line with its newline; b"" at the end."""
        while True:
            end = self._buf.find(b"\n", self._pos)
            if end >= 0:
                line, self._pos = self._buf[self._pos : end + 1], end + 1
                return line
            if not self._fill():
                line, self._pos = self._buf[self._pos :], len(self._buf)
                return line

    def copy_data(self, write: Callable[[bytes], object]) -> int:
        """Pass COPY rows to write() up to (not including) the `\\.` line; return how many rows."""
        rows, line_start = 0, True
        while True:
            if line_start and len(self._buf) - self._pos < 3:
                self._fill()
            if line_start and (self._buf.startswith(b"\\.\n", self._pos) or self._buf[self._pos :] == b"\\."):
                return rows
            end = self._buf.find(b"\n\\.\n", self._pos)
            cut = end + 1 if end >= 0 else len(self._buf) - 3
            if cut > self._pos:
                chunk = self._buf[self._pos : cut]
                write(chunk)
                rows += chunk.count(b"\n")
                self._pos, line_start = cut, chunk.endswith(b"\n")
            elif not self._fill():
                rest = self._buf[self._pos :]
                write(rest)
                self._pos = len(self._buf)
                return rows + rest.count(b"\n")


def copy_compatible(
    source: BinaryIO,
    write: Callable[[bytes], object],
    server_major: int,
    *,
    keep_restrict: bool = False,
) -> int:
    """Stream a script through compatible filtering without looking at COPY rows; return lines written."""
    reader, scanner, written = ChunkReader(source), ScriptScanner(), 0
    while line := reader.readline():
        if not line.endswith(b"\n"):
            line += b"\n"
        kind = scanner.feed(line)
        if kind is LineKind.TOP and _rejected(line, server_major, keep_restrict):
            continue
        write(line)
        written += 1
        if scanner.in_copy and kind is not LineKind.COPY_DATA:
            written += reader.copy_data(write)
    return written


def _rejected(line: bytes, server_major: int, keep_restrict: bool) -> bool:
    if is_restrict_line(line):
        return not keep_restrict
    name = setting_name(line)
    return name is not None and server_major < _SETTING_SINCE.get(name, 0)


_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<comment>--[^\n]*)
      | (?P<qident>"(?:[^"]|"")*")
      | (?P<string>[Ee]'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*')
      | (?P<word>[A-Za-z_\x80-\uffff][A-Za-z0-9_$\x80-\uffff]*)
      | (?P<open>["'])
      | (?P<other>.)""",
    re.X | re.S,
)


@dataclass(frozen=True)
class Token:
    """A token of one SQL statement, for rewriting it in place."""

    kind: str
    text: str
    start: int
    end: int

    @property
    def keyword(self) -> str:
        return self.text.upper() if self.kind == "word" else ""

    @property
    def ident(self) -> str | None:
        """The role name this token spells, as PostgreSQL stores it."""
        if self.kind == "word":
            return self.text.lower()
        if self.kind == "qident":
            return self.text[1:-1].replace('""', '"')
        return None


def tokens(text: str) -> list[Token]:
    """One statement as tokens (words, quoted identifiers, strings, comments, the rest), with their spans."""
    return [Token(m.lastgroup or "other", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def split_statements(text: str) -> list[tuple[bool, list[str]]]:
    """Group lines into (is_statement, lines): SQL statements, and the comments/meta-commands between them."""
    groups: list[tuple[bool, list[str]]] = []
    pending: list[str] = []
    scanner = ScriptScanner()
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith(("--", "\\"))):
            groups.append((False, [line]))
            continue
        pending.append(line)
        scanner.feed(line.encode("utf-8", "surrogateescape"))
        if scanner.ends_statement:
            groups.append((True, pending))
            pending = []
    if pending:
        groups.append((True, pending))
    return groups
