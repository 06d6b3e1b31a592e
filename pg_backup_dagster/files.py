"""File primitives every part of the package shares: atomic writes, hashing, listing what a folder holds.

Each helper exists once here, so "written under a temporary name and renamed", "sha256 of a file" and
"the files of a staging folder" mean the same thing in the dumps, the manifest, storage and restore.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError

CHUNK_SIZE = 1 << 20
# Backups hold every row of a database: by default only their owner may read them, whatever the umask.
PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


@dataclass(frozen=True)
class Digest:
    """Size and sha256 (hex) of some bytes: computed once, then carried wherever they are checked."""

    size: int
    sha256: str


def temp_path(final: Path) -> Path:
    """Where atomic_path writes `final` before publishing it (readers, like the live table split, may follow it).

    A dot name, so listings of published files skip it, with `.tmp-` in it, so gc recognises the litter.
    """
    return final.with_name(f".{final.name}.tmp-{os.getpid()}")


def fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk, not only the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


@contextmanager
def atomic_path(final: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temp path beside `final`; rename it into place only if the block succeeds.

    Readers see the old file or the new one, never a torn one. With fsync the content and the rename reach
    the disk before this returns (for what a crash must not lose: manifests, latest.json).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(final.parent)


def atomic_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: Path) -> Digest:
    """Size and sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return Digest(size, digest.hexdigest())


def hash_stream(src: BinaryIO) -> Digest:
    """Size and sha256 of a stream, read in chunks (a stored object checked without a local copy)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return Digest(size, digest.hexdigest())


def parse_mode(name: str, value: object, *, directory: bool) -> int:
    """A permission mode from config: an int (YAML's 0o640 or 0640) or an octal string ("0640", "640").

    The owner must keep read and write (and search, for a folder); files get no execute bit; nothing above
    0o777 (setuid, sticky), which is also what a decimal 640 typed without the leading 0 would be.
    """
    if isinstance(value, str) and value.strip():
        text = value.strip().lower().removeprefix("0o")
        if not all(ch in "01234567" for ch in text):
            raise BackupError(f"{name} {value!r} is not an octal mode such as {'0700' if directory else '0600'}")
        mode = int(text, 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        raise BackupError(f"{name} must be an octal mode such as {'0700' if directory else '0600'}, got {value!r}")
    owner = 0o700 if directory else 0o600
    if not 0 <= mode <= 0o777:
        raise BackupError(f"{name} {value!r} is not a permission mode (0000-0777; write it as a string: '0640')")
    if mode & owner != owner:
        raise BackupError(f"{name} {oct(mode)} must let the owner {'read, write and enter' if directory else 'read and write'}")
    if not directory and mode & 0o111:
        raise BackupError(f"{name} {oct(mode)} must not make backup files executable")
    return mode


def make_dirs(path: Path, mode: int) -> None:
    """mkdir -p where every folder created gets exactly `mode` (the umask only ever removes bits)."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue
        os.chmod(folder, mode)


def copy_hashing(src: BinaryIO, dest: Path) -> Digest:
    """Stream src into dest, hashing as it goes, so a download is verified without a second read."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return Digest(size, digest.hexdigest())


def staged_files(root: Path) -> list[str]:
    """Relative paths (sorted, POSIX) of the regular files under root that are meant to be published.

    Dot-entries at any depth are skipped: internal step state (`.state/`), temp files of atomic writes,
    encryption scratch. A symlink is refused: a backup holds regular files only, and following a link
    could publish something outside the folder.
    """
    found: list[str] = []
    for path in sorted(root.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_symlink():
            raise BackupError(f"refusing to publish symlink {path}: backups hold regular files only")
        if path.is_dir():
            found += [f"{path.name}/{rel}" for rel in staged_files(path)]
        elif path.is_file():
            found.append(path.name)
    return found


def newest_mtime(path: Path) -> float:
    """Latest modification anywhere under path: a dir's own mtime misses a file still being written."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def is_old(path: Path, min_age: float) -> bool:
    """Untouched for min_age seconds (a path that vanished meanwhile is not ours to remove)."""
    try:
        return time.time() - newest_mtime(path) >= min_age
    except FileNotFoundError:
        return False


def remove_path(path: Path) -> None:
    """Remove a file, symlink or tree; already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def throughput(size: float, seconds: float) -> float:
    """MiB/s, rounded; 0 for instant steps."""
    return round(size / (1 << 20) / seconds, 2) if seconds > 0 else 0.0


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
