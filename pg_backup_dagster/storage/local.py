"""A directory as backup target: files assembled in a hidden folder beside the backups, published by one rename.

Everything lives on the target's filesystem, so staging is linked (not copied) into the pending folder and
the rename that makes a folder appear is atomic; a crash leaves only dot-entries that nothing lists.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import Digest, atomic_path, atomic_write, fsync_dir, remove_path
from pg_backup_dagster.storage.base import FolderExists, ObjectStore, PendingFolder, StoredObject

log = logging.getLogger(__name__)

SCRATCH_NAME = ".staging"


def _os_error(action: str, path: Path, exc: OSError) -> BackupError:
    return BackupError(f"cannot {action} {path}: {exc.strerror or exc}")


class LocalStorage(ObjectStore):
    """Backups under a local (or mounted) directory; a key is a path relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self._check_writable()

    def _check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise BackupError(f"backup target {self.root} is not writable: {exc.strerror or exc}") from None

    def path(self, key: str) -> Path:
        return self.root / key

    def location(self, key: str) -> str:
        return str(self.path(key)) + (os.sep if key.endswith("/") else "")

    def scratch_dir(self, parent: str) -> Path:
        return self.path(parent) / SCRATCH_NAME

    def begin_folder(self, prefix: str) -> PendingFolder:
        return LocalPendingFolder(self.path(prefix))

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            atomic_write(self.path(key), data, fsync=True)
        except OSError as exc:
            raise _os_error("write", self.path(key), exc) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error("read", self.path(key), exc) from None

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise _os_error("open", self.path(key), exc) from None

    def local_path(self, key: str) -> Path:
        return self.path(key)

    def link(self, key: str, target: str) -> None:
        """A relative symlink, swapped in atomically: `latest` → the newest backup's folder, for people."""
        alias = self.path(key)
        try:
            with atomic_path(alias) as tmp:
                os.symlink(target, tmp)
        except OSError as exc:
            raise _os_error("update", alias, exc) from None

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list_children(self, prefix: str) -> list[str]:
        folder = self.path(prefix)
        if not folder.is_dir():
            return []
        return sorted(child.name for child in folder.iterdir() if child.is_dir() and not child.is_symlink())

    def list_objects(self, prefix: str, *, recursive: bool = True) -> list[StoredObject]:
        folder = self.path(prefix)
        if not folder.is_dir() or folder.is_symlink():
            return []
        paths = sorted(folder.rglob("*") if recursive else folder.iterdir())
        found = []
        for path in paths:
            try:
                if path.is_symlink() or not path.is_dir():
                    found.append(StoredObject(path.relative_to(self.root).as_posix(), path.lstat().st_mtime))
            except FileNotFoundError:
                continue
        return found

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            path = self.path(key)
            try:
                path.unlink(missing_ok=True)
                fsync_dir(path.parent)
            except OSError as exc:
                raise _os_error("delete", path, exc) from None

    def delete_prefix(self, prefix: str) -> None:
        folder = self.path(prefix)
        try:
            remove_path(folder)
        except OSError as exc:
            raise _os_error("delete", folder, exc) from None


class LocalPendingFolder(PendingFolder):
    """A hidden temp folder beside the final one (`.{name}.tmp-…`, which gc recognises), renamed into place."""

    def __init__(self, final: Path) -> None:
        self.final = final
        self.pending = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")

    def put_file(self, relpath: str, src: Path, digest: Digest, *, data_file: bool = True) -> None:
        """Hard-link the staged file (same filesystem, no copy; a copy where links are not supported), fsync it,
        and check its size against the hash taken when it was staged."""
        dest = self.pending / relpath
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
            with open(dest, "rb") as handle:
                os.fsync(handle.fileno())
                size = os.fstat(handle.fileno()).st_size
        except OSError as exc:
            raise _os_error("store", dest, exc) from None
        if size != digest.size:
            raise BackupError(f"{relpath}: {size} bytes on disk, {digest.size} when it was hashed: it changed since")

    def commit(self, relpath: str, data: bytes) -> None:
        """The one step that makes the folder exist; a leftover without that file is swept first."""
        if self.final.exists():
            if (self.final / relpath).exists():
                raise FolderExists(f"{self.final} already exists")
            log.warning("removing incomplete leftover %s before publishing", self.final)
            remove_path(self.final)
        try:
            self.pending.mkdir(parents=True, exist_ok=True)
            atomic_write(self.pending / relpath, data, fsync=True)
            os.rename(self.pending, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            raise _os_error("publish", self.final, exc) from None

    def discard(self) -> None:
        try:
            remove_path(self.pending)
        except OSError as exc:
            log.warning("could not remove %s (gc will): %s", self.pending, exc)
