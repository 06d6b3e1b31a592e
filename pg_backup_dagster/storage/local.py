"""A directory as backup target: staging next to the backups, published by one atomic rename.

Staging lives at {target}/{source}/.staging/{backup_id} (same filesystem), so the rename that makes a
backup appear is atomic, and a crash leaves only a dot-dir that nothing lists.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.storage.base import (
    DEFAULT_GC_MIN_AGE,
    ENCRYPTION_DIR,
    LATEST_NAME,
    MANIFEST_NAME,
    BackupStorage,
    check_declared,
    check_manifest_id,
    check_relpath,
    check_segment,
    final_manifest,
    is_encrypted,
    is_old,
    manifest_bytes,
    manifest_entries,
    parse_json,
    plan_entries,
    prepare_entry,
    remove_path,
    sha256_file,
    stored_path,
)

log = logging.getLogger(__name__)

STAGING_NAME = ".staging"
LATEST_LINK = "latest"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry must reach the disk, not only the file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class LocalStorage(BackupStorage):
    """Backups under a local (or mounted) directory."""

    def __init__(self, root: Path, *, recipients: list[str] | None = None) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self.recipients = list(recipients) if recipients else None
        self._check_writable()

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise BackupError(f"backup target {self.root} is not writable: {exc.strerror or exc}") from None

    # --- paths ---------------------------------------------------------------------------------------
    def _source_dir(self, source: str) -> Path:
        return self.root / check_segment("source", source)

    def _backup_dir(self, source: str, backup_id: str) -> Path:
        return self._source_dir(source) / check_segment("backup id", backup_id)

    def staging_dir(self, source: str, backup_id: str) -> Path:
        return self._source_dir(source) / STAGING_NAME / check_segment("backup id", backup_id)

    def backup_url(self, source: str, backup_id: str) -> str:
        return str(self._backup_dir(source, backup_id)) + os.sep

    def has_backup(self, source: str, backup_id: str) -> bool:
        return (self._backup_dir(source, backup_id) / MANIFEST_NAME).is_file()

    # --- publish -------------------------------------------------------------------------------------
    def publish(self, source: str, backup_id: str, manifest: dict[str, Any]) -> str:
        staging = self.staging_dir(source, backup_id)
        final = self._backup_dir(source, backup_id)
        if self.has_backup(source, backup_id):
            raise BackupError(f"backup {final} already exists; backups are immutable")
        if not staging.is_dir():
            raise BackupError(f"nothing staged for {source}/{backup_id} (expected {staging})")
        check_manifest_id(manifest, backup_id)
        entries = plan_entries(staging, manifest.get("files"))
        publish_dir = self._store_entries(staging, entries)
        document = final_manifest(manifest, backup_id, entries, self.recipients)
        if publish_dir == staging:
            self._strip_internal(staging)
        atomic_write(publish_dir / MANIFEST_NAME, manifest_bytes(document))
        self._rename_into_place(publish_dir, final)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        return self.backup_url(source, backup_id)

    def _store_entries(self, staging: Path, entries: list[dict[str, Any]]) -> Path:
        """Hash (and fsync) every file, or encrypt it into .encrypted/; returns the dir to publish."""
        if not self.recipients:
            for entry in entries:
                size, sha = sha256_file(staging / entry["path"], fsync=True)
                check_declared(entry, size, sha)
                entry.update(size=size, sha256=sha)
            return staging
        enc_dir = staging / ENCRYPTION_DIR
        if enc_dir.exists():
            shutil.rmtree(enc_dir)
        for index, entry in enumerate(entries):
            src, updated = prepare_entry(staging, entry, self.recipients)
            target = enc_dir / stored_path(updated)
            if src == staging / entry["path"]:  # a plaintext file (RESTORE.md): copied alongside
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)
            size, sha = sha256_file(target, fsync=True)
            if not is_encrypted(updated):
                check_declared(updated, size, sha)
            updated.update(size=size, sha256=sha)
            entries[index] = updated
        return enc_dir

    @staticmethod
    def _strip_internal(staging: Path) -> None:
        """Internal state (dot-entries at the top) must not end up inside a published backup."""
        for child in staging.iterdir():
            if child.name.startswith("."):
                remove_path(child)

    def _rename_into_place(self, publish_dir: Path, final: Path) -> None:
        """The one step that makes the backup exist; a leftover without manifest is swept first."""
        if final.exists() and not (final / MANIFEST_NAME).exists():
            log.warning("removing incomplete leftover %s before publishing", final)
            remove_path(final)
        try:
            os.rename(publish_dir, final)
        except OSError as exc:
            (publish_dir / MANIFEST_NAME).unlink(missing_ok=True)
            raise BackupError(f"cannot publish {final}: {exc.strerror or exc}") from None
        _fsync_dir(final.parent)

    # --- reading -------------------------------------------------------------------------------------
    def list_backups(self, source: str) -> list[str]:
        source_dir = self._source_dir(source)
        if not source_dir.is_dir():
            return []
        return sorted(
            child.name
            for child in source_dir.iterdir()
            if not child.name.startswith(".")
            and not child.is_symlink()
            and child.is_dir()
            and (child / MANIFEST_NAME).is_file()
        )

    def list_sources(self) -> list[str]:
        names = []
        for child in sorted(self.root.iterdir()):
            if child.name.startswith(".") or child.is_symlink() or not child.is_dir():
                continue
            if (child / LATEST_NAME).is_file() or self.list_backups(child.name):
                names.append(child.name)
        return names

    def read_manifest(self, source: str, backup_id: str) -> dict[str, Any]:
        path = self._backup_dir(source, backup_id) / MANIFEST_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BackupError(f"no backup {source}/{backup_id}: {path} does not exist") from None
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
        return parse_json(data, str(path))

    def open_file(self, source: str, backup_id: str, relpath: str) -> BinaryIO:
        path = self._backup_dir(source, backup_id) / check_relpath(relpath)
        try:
            return open(path, "rb")
        except OSError as exc:
            raise BackupError(f"cannot open {path}: {exc.strerror or exc}") from None

    def fetch(self, source: str, backup_id: str, dest_dir: Path, *, identity: str | None = None) -> Path:
        """Unencrypted: verify in place and return the backup folder itself (no copy); else decrypt."""
        manifest = self.read_manifest(source, backup_id)
        entries = manifest_entries(manifest, self._manifest_label(source, backup_id))
        if any(is_encrypted(entry) for entry in entries):
            return super().fetch(source, backup_id, dest_dir, identity=identity)
        folder = self._backup_dir(source, backup_id)
        for entry in entries:
            size, sha = sha256_file(folder / stored_path(entry))
            if size != entry["size"] or sha != entry["sha256"]:
                raise BackupError(f"{folder / entry['path']} is corrupt: sha256 {sha} size {size} differ from manifest")
        return folder

    # --- latest --------------------------------------------------------------------------------------
    def write_latest(self, source: str, backup_id: str, info: dict[str, Any]) -> None:
        payload = self._latest_payload(source, backup_id, info)
        source_dir = self._source_dir(source)
        atomic_write(source_dir / LATEST_NAME, payload)
        tmp_link = source_dir / f".{LATEST_LINK}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.symlink(backup_id, tmp_link)
            os.replace(tmp_link, source_dir / LATEST_LINK)
        except OSError as exc:
            raise BackupError(f"cannot update {source_dir / LATEST_LINK}: {exc.strerror or exc}") from None
        finally:
            tmp_link.unlink(missing_ok=True)

    def read_latest(self, source: str) -> dict[str, Any] | None:
        path = self._source_dir(source) / LATEST_NAME
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BackupError(f"cannot read {path}: {exc.strerror or exc}") from None
        return parse_json(data, str(path))

    # --- delete, gc ----------------------------------------------------------------------------------
    def delete_backup(self, source: str, backup_id: str) -> None:
        folder = self._backup_dir(source, backup_id)
        if folder.is_symlink() or not folder.is_dir():
            raise BackupError(f"no backup {source}/{backup_id} at {folder}")
        try:
            (folder / MANIFEST_NAME).unlink(missing_ok=True)
            _fsync_dir(folder)
            shutil.rmtree(folder)
        except OSError as exc:
            raise BackupError(f"cannot delete {folder}: {exc.strerror or exc} (gc will finish it)") from None

    def gc(self, source: str, *, min_age: float = DEFAULT_GC_MIN_AGE, dry_run: bool = False) -> list[str]:
        source_dir = self._source_dir(source)
        if not source_dir.is_dir():
            return []
        removed = []
        for path in self._gc_candidates(source_dir):
            if is_old(path, min_age):
                if not dry_run:
                    remove_path(path)
                removed.append(str(path))
        return removed

    @staticmethod
    def _gc_candidates(source_dir: Path) -> list[Path]:
        """Staging dirs, temp files, and backup folders whose manifest never came (or went first)."""
        candidates: list[Path] = []
        staging_root = source_dir / STAGING_NAME
        if staging_root.is_dir():
            candidates.extend(sorted(staging_root.iterdir()))
        candidates.extend(child for child in sorted(source_dir.iterdir()) if _is_leftover(child))
        return candidates


def _is_leftover(child: Path) -> bool:
    """A temp file of an atomic write, or a backup folder without manifest (never a symlink)."""
    if child.name.startswith("."):
        return ".tmp-" in child.name
    return not child.is_symlink() and child.is_dir() and not (child / MANIFEST_NAME).exists()
