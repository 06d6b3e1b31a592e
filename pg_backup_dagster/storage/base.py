"""What every backup target offers, and the file bookkeeping both targets share.

A backup is assembled in a staging dir and published; it exists only once its manifest.json exists,
so every reader (list, fetch, retention) looks at manifests and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage import encryption

MANIFEST_NAME = "manifest.json"
LATEST_NAME = "latest.json"
ENCRYPTED_SUFFIX = ".age"
ENCRYPTION_DIR = ".encrypted"
# Files that hold no data and tell a person how to restore: they stay readable when encrypting.
PLAINTEXT_FILES = frozenset({"RESTORE.md"})
CHUNK_SIZE = 1024 * 1024
DEFAULT_GC_MIN_AGE = 3600.0

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.%-]*$")


def check_segment(kind: str, name: str) -> str:
    """A source name or backup id must be one plain path segment, so nothing can escape its prefix."""
    if not isinstance(name, str) or not _SEGMENT_RE.match(name) or ".." in name:
        raise BackupError(f"invalid {kind} {name!r}: use letters, digits, '_', '-', '.' (not leading)")
    return name


def check_relpath(relpath: str) -> str:
    """A manifest path must stay inside its backup folder, even if the manifest was tampered with."""
    pure = PurePosixPath(relpath) if isinstance(relpath, str) else None
    if (
        pure is None
        or not relpath
        or pure.is_absolute()
        or "\\" in relpath
        or "\x00" in relpath
        or any(part in ("", ".", "..") for part in relpath.split("/"))
    ):
        raise BackupError(f"unsafe file path {relpath!r} in backup")
    return relpath


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The one serialisation of a manifest, so identical manifests are byte-identical."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode("utf-8")


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    """JSON object or a BackupError naming what was unreadable."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BackupError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BackupError(f"{what} is not a JSON object")
    return value


def sha256_file(path: Path, *, fsync: bool = False) -> tuple[int, str]:
    """Size and sha256 of a file, read in chunks; fsync makes it durable before a publish rename."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
            if fsync:
                os.fsync(fh.fileno())
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
    return size, digest.hexdigest()


def copy_hashing(src: BinaryIO, dest: Path) -> tuple[int, str]:
    """Stream src into dest, hashing as it goes, so a download is verified without a second read."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def staged_files(staging: Path) -> list[str]:
    """Relative paths of every file to publish: internal dot-entries and a stale manifest are skipped."""
    found: list[str] = []
    for top in sorted(staging.iterdir()):
        if top.name.startswith(".") or top.name == MANIFEST_NAME:
            continue
        candidates = [top] if not top.is_dir() or top.is_symlink() else sorted(top.rglob("*"))
        for path in candidates:
            if path.is_symlink():
                raise BackupError(f"refusing to publish symlink {path}: backups hold regular files only")
            if path.is_file():
                found.append(path.relative_to(staging).as_posix())
    return found


def plan_entries(staging: Path, declared: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """One manifest entry per staged file: the caller's entries kept, missing ones added, none invented."""
    on_disk = staged_files(staging)
    by_path: dict[str, dict[str, Any]] = {}
    for entry in declared or []:
        path = check_relpath(entry.get("path", "") if isinstance(entry, dict) else "")
        if path in by_path:
            raise BackupError(f"manifest lists {path!r} twice")
        by_path[path] = dict(entry)
    missing = sorted(set(by_path) - set(on_disk))
    if missing:
        raise BackupError(f"manifest lists files missing from staging: {', '.join(missing[:5])}")
    if not on_disk:
        raise BackupError(f"nothing to publish: staging dir {staging} holds no files")
    return [by_path.get(path, {"path": path}) for path in on_disk]


def check_declared(entry: dict[str, Any], size: int, sha256: str) -> None:
    """A file that changed between hashing and storing must not be published as if it had not."""
    want_size, want_sha = entry.get("size"), entry.get("sha256")
    if want_sha is not None and want_sha != sha256:
        raise BackupError(f"{entry['path']}: sha256 {sha256} differs from the manifest's {want_sha}")
    if want_size is not None and want_size != size:
        raise BackupError(f"{entry['path']}: size {size} differs from the manifest's {want_size}")


def is_encrypted(entry: dict[str, Any]) -> bool:
    return entry.get("encrypted") == "age"


def stored_path(entry: dict[str, Any]) -> str:
    """Where an entry's bytes live inside the backup folder (`x.age` when encrypted)."""
    return check_relpath(entry.get("stored_path") or entry["path"])


def prepare_entry(staging: Path, entry: dict[str, Any], recipients: list[str] | None) -> tuple[Path, dict[str, Any]]:
    """The file to store for one entry: the staged file, or its age encryption under .encrypted/."""
    src = staging / entry["path"]
    if not recipients or entry["path"] in PLAINTEXT_FILES:
        return src, entry
    plain_size, plain_sha = sha256_file(src)
    check_declared(entry, plain_size, plain_sha)
    target = staging / ENCRYPTION_DIR / (entry["path"] + ENCRYPTED_SUFFIX)
    target.parent.mkdir(parents=True, exist_ok=True)
    encryption.encrypt_file(src, target, recipients)
    updated = {key: value for key, value in entry.items() if key not in ("size", "sha256")}
    updated.update(
        encrypted="age",
        stored_path=entry["path"] + ENCRYPTED_SUFFIX,
        plain_size=plain_size,
        plain_sha256=plain_sha,
    )
    return target, updated


def check_manifest_id(manifest: dict[str, Any], backup_id: str) -> None:
    """Checked before any upload: a manifest naming another backup is a caller bug."""
    if not isinstance(manifest, dict):
        raise BackupError("manifest must be a dict")
    if manifest.get("backup_id", backup_id) != backup_id:
        raise BackupError(f"manifest backup_id {manifest.get('backup_id')!r} differs from {backup_id!r}")


def final_manifest(
    manifest: dict[str, Any], backup_id: str, entries: list[dict[str, Any]], recipients: list[str] | None
) -> dict[str, Any]:
    """The caller's manifest with the verified file list (and the encryption used) filled in."""
    check_manifest_id(manifest, backup_id)
    result = dict(manifest, files=sorted(entries, key=lambda e: e["path"]))
    if recipients:
        result["encryption"] = {"type": "age", "recipients": list(recipients)}
    return result


def manifest_entries(manifest: dict[str, Any], what: str) -> list[dict[str, Any]]:
    """The file list of a published manifest, checked enough that fetch cannot be led astray."""
    files = manifest.get("files")
    if not isinstance(files, list):
        raise BackupError(f"{what} has no 'files' list")
    for entry in files:
        if not isinstance(entry, dict) or "sha256" not in entry or "size" not in entry:
            raise BackupError(f"{what} has a file entry without path/size/sha256: {entry!r}")
        check_relpath(entry.get("path", ""))
        stored_path(entry)
    return files


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
        shutil.rmtree(path, ignore_errors=False)
    else:
        path.unlink(missing_ok=True)


class BackupStorage(ABC):
    """A backup target. Subclasses: LocalStorage (a directory) and S3Storage (s3://bucket/prefix)."""

    url: str
    recipients: list[str] | None = None

    # --- staging ---------------------------------------------------------------------------------
    @abstractmethod
    def staging_dir(self, source: str, backup_id: str) -> Path:
        """Where a backup is assembled before publish."""

    def reset_staging(self, source: str, backup_id: str) -> Path:
        """Start a try of this id from an empty staging dir (an earlier failed try leaves files)."""
        staging = self.staging_dir(source, backup_id)
        if staging.exists() or staging.is_symlink():
            remove_path(staging)
        staging.mkdir(parents=True)
        return staging

    # --- publish / read ----------------------------------------------------------------------------
    @abstractmethod
    def publish(self, source: str, backup_id: str, manifest: dict[str, Any]) -> str:
        """Store the staged files, verify them, then write manifest.json; returns the backup's URL."""

    @abstractmethod
    def backup_url(self, source: str, backup_id: str) -> str:
        """Display location of one backup."""

    @abstractmethod
    def has_backup(self, source: str, backup_id: str) -> bool:
        """True when the backup's manifest exists (the only definition of 'exists')."""

    @abstractmethod
    def list_backups(self, source: str) -> list[str]:
        """Ids of the source's backups that have a manifest, sorted (oldest first for UTC ids)."""

    @abstractmethod
    def list_sources(self) -> list[str]:
        """Source names holding at least one backup or a latest.json."""

    @abstractmethod
    def read_manifest(self, source: str, backup_id: str) -> dict[str, Any]:
        """The parsed manifest.json; BackupError if it is missing or unreadable."""

    @abstractmethod
    def open_file(self, source: str, backup_id: str, relpath: str) -> BinaryIO:
        """A binary stream of one stored file (as stored: `.age` files stay encrypted)."""

    def fetch_file(self, source: str, backup_id: str, relpath: str, dest: Path, *, identity: str | None = None) -> Path:
        """One file of a published backup at dest, verified (and decrypted) against its manifest."""
        manifest = self.read_manifest(source, backup_id)
        entries = manifest_entries(manifest, self._manifest_label(source, backup_id))
        for entry in entries:
            if entry["path"] == relpath:
                self._fetch_entry(source, backup_id, entry, Path(dest), identity)
                return Path(dest)
        raise BackupError(f"{relpath!r} is not in the manifest of {self.backup_url(source, backup_id)}")

    def fetch(self, source: str, backup_id: str, dest_dir: Path, *, identity: str | None = None) -> Path:
        """A local, verified, plaintext copy of a published backup; returns the folder holding it."""
        manifest = self.read_manifest(source, backup_id)
        entries = manifest_entries(manifest, self._manifest_label(source, backup_id))
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            self._fetch_entry(source, backup_id, entry, dest_dir / entry["path"], identity)
        (dest_dir / MANIFEST_NAME).write_bytes(manifest_bytes(manifest))
        return dest_dir

    def _fetch_entry(
        self, source: str, backup_id: str, entry: dict[str, Any], dest: Path, identity: str | None
    ) -> None:
        """Download to a .part name, verify size+sha256, decrypt if needed, then move into place."""
        part = dest.with_name(dest.name + ".part")
        try:
            with self.open_file(source, backup_id, stored_path(entry)) as src:
                size, sha = copy_hashing(src, part)
            if size != entry["size"] or sha != entry["sha256"]:
                raise BackupError(
                    f"{self.backup_url(source, backup_id)}{stored_path(entry)}: stored copy is corrupt "
                    f"(size {size}, sha256 {sha}; manifest says {entry['size']}, {entry['sha256']})"
                )
            if is_encrypted(entry):
                self._decrypt_entry(entry, part, dest, identity)
            else:
                os.replace(part, dest)
        except OSError as exc:
            raise BackupError(f"cannot fetch {entry['path']} to {dest}: {exc.strerror or exc}") from None
        finally:
            part.unlink(missing_ok=True)

    @staticmethod
    def _decrypt_entry(entry: dict[str, Any], src: Path, dest: Path, identity: str | None) -> None:
        encryption.decrypt_file(src, dest, identity)
        size, sha = sha256_file(dest)
        if sha != entry.get("plain_sha256") or size != entry.get("plain_size", size):
            dest.unlink(missing_ok=True)
            raise BackupError(f"{entry['path']}: decrypted content does not match the manifest's plain_sha256")

    # --- latest, delete, gc ------------------------------------------------------------------------
    @abstractmethod
    def write_latest(self, source: str, backup_id: str, info: dict[str, Any]) -> None:
        """Point latest.json at a published backup."""

    @abstractmethod
    def read_latest(self, source: str) -> dict[str, Any] | None:
        """latest.json of a source, or None if there is none yet."""

    @abstractmethod
    def delete_backup(self, source: str, backup_id: str) -> None:
        """Delete one backup, manifest first so a half-deleted backup is never visible."""

    @abstractmethod
    def gc(self, source: str, *, min_age: float = DEFAULT_GC_MIN_AGE, dry_run: bool = False) -> list[str]:
        """Remove leftovers of failed runs older than min_age seconds; never a manifested backup.
        With dry_run, only list what would be removed."""

    # --- helpers -----------------------------------------------------------------------------------
    def _manifest_label(self, source: str, backup_id: str) -> str:
        return f"manifest of {self.backup_url(source, backup_id)}"

    def _latest_payload(self, source: str, backup_id: str, info: dict[str, Any]) -> bytes:
        check_segment("source", source)
        check_segment("backup id", backup_id)
        if not self.has_backup(source, backup_id):
            raise BackupError(f"cannot point latest at {self.backup_url(source, backup_id)}: no manifest")
        return manifest_bytes({**info, "backup_id": backup_id, "source": source})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
