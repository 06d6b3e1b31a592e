"""A directory as backup target: files assembled in a hidden folder beside the backups, published by one rename.

Everything lives on the target's filesystem, so staging is linked (not copied) into the pending folder and
the rename that makes a folder appear is atomic; a crash leaves only dot-entries that nothing lists.

Permissions do not follow the umask: every file this target writes gets `file_mode` (default 0600) and every
folder it creates `dir_mode` (default 0700), the staging folder included, so a failed run's dumps are no more
readable than a published backup. A staging folder that is a symlink is refused: staging and gc would act
wherever it points.
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
from pg_backup_dagster.files import (
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    Digest,
    atomic_path,
    fsync_dir,
    make_dirs,
    parse_mode,
    remove_path,
)
from pg_backup_dagster.storage.base import FolderExists, ObjectStore, PendingFolder, StoredObject

log = logging.getLogger(__name__)

SCRATCH_NAME = ".staging"


def _os_error(action: str, path: Path, exc: OSError) -> BackupError:
    return BackupError(f"cannot {action} {path}: {exc.strerror or exc}")


class LocalStorage(ObjectStore):
    """Backups under a local (or mounted) directory; a key is a path relative to it."""

    def __init__(
        self, root: Path, *, file_mode: int = PRIVATE_FILE_MODE, dir_mode: int = PRIVATE_DIR_MODE, create: bool = True
    ) -> None:
        """create=False opens an existing target only (list, verify, restore, status): a mistyped path is then an
        error, not a new empty folder that makes it look as if there were no backups."""
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        self.file_mode = parse_mode("file_mode", file_mode, directory=False)
        self.dir_mode = parse_mode("dir_mode", dir_mode, directory=True)
        if create:
            self._check_writable()
        elif not self.root.is_dir():
            why = "not a folder" if self.root.exists() else "no such folder; nothing was created"
            raise BackupError(f"no backup target at {self.root} ({why}): check PG_BACKUP_TARGET or the source's target")

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
        """The source's `.staging`, created with dir_mode; BackupError if it is a symlink (never followed)."""
        folder = self.path(parent) / SCRATCH_NAME
        if folder.is_symlink():
            raise BackupError(
                f"{folder} is a symlink to {os.readlink(folder)}: refusing to stage or sweep through it "
                "(replace it with a real folder)"
            )
        try:
            make_dirs(folder, self.dir_mode)
        except OSError as exc:
            raise _os_error("create", folder, exc) from None
        return folder

    def begin_folder(self, prefix: str) -> PendingFolder:
        return LocalPendingFolder(self.path(prefix), self.file_mode, self.dir_mode)

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self.path(key)
        try:
            make_dirs(path.parent, self.dir_mode)
            with atomic_path(path, fsync=True) as tmp:
                tmp.write_bytes(data)
                os.chmod(tmp, self.file_mode)
        except OSError as exc:
            raise _os_error("write", path, exc) from None

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
                    stat = path.lstat()  # a link is listed as itself, never followed
                    found.append(StoredObject(path.relative_to(self.root).as_posix(), stat.st_mtime, stat.st_size))
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

    def __init__(self, final: Path, file_mode: int = PRIVATE_FILE_MODE, dir_mode: int = PRIVATE_DIR_MODE) -> None:
        self.final = final
        self.pending = final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self.file_mode = file_mode
        self.dir_mode = dir_mode

    def put_file(self, relpath: str, src: Path, digest: Digest, *, data_file: bool = True) -> None:
        """Hard-link the staged file (same filesystem, no copy; a copy where links are not supported), fsync it,
        and check its size against the hash taken when it was staged."""
        dest = self.pending / relpath
        try:
            make_dirs(dest.parent, self.dir_mode)
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
            os.chmod(dest, self.file_mode)  # a hard link: the staged copy is covered too
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
            make_dirs(self.pending, self.dir_mode)
            with atomic_path(self.pending / relpath, fsync=True) as tmp:
                tmp.write_bytes(data)
                os.chmod(tmp, self.file_mode)
            os.rename(self.pending, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            raise _os_error("publish", self.final, exc) from None

    def discard(self) -> None:
        try:
            remove_path(self.pending)
        except OSError as exc:
            log.warning("could not remove %s (gc will): %s", self.pending, exc)
