"""The file primitives a backup target offers; the backup semantics live once above them (repository.py).

A target stores bytes under `/`-separated keys. Files are written into a pending folder that becomes
visible in one step (`PendingFolder.commit`): a rename for a directory, the last (conditional) PUT for S3.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import Digest


@dataclass(frozen=True)
class StoredObject:
    """One stored file: its key, when it was last written (seconds since the epoch) and its size in bytes."""

    key: str
    modified: float
    size: int = -1  # -1: the backend did not say


@dataclass(frozen=True)
class UnfinishedUpload:
    """An upload that was started and never completed or aborted (S3 multipart); invisible to listings."""

    key: str
    upload_id: str
    started: float


class FolderExists(BackupError):
    """Another writer committed this folder first."""


class PendingFolder(ABC):
    """Files being written under one prefix; nothing is visible to readers until `commit`."""

    @abstractmethod
    def put_file(self, relpath: str, src: Path, digest: Digest, *, data_file: bool = True) -> None:
        """Store src at relpath, durable and checked against digest (the hash taken when it was staged).

        data_file: backup data (gets the configured storage class), as opposed to small bookkeeping files.
        """

    @abstractmethod
    def commit(self, relpath: str, data: bytes) -> None:
        """Write data at relpath last and make the folder visible at once; FolderExists if it already was."""

    @abstractmethod
    def discard(self) -> None:
        """Forget what was put (best effort: gc sweeps what this leaves)."""


class ObjectStore(ABC):
    """A backup target's storage. Subclasses: LocalStorage (a directory) and S3Storage (s3://bucket/prefix)."""

    url: str
    transfers: int = 4  # files put or read at once (their cost is waiting: a round trip, an fsync)

    @abstractmethod
    def location(self, key: str) -> str:
        """Where a key (or a prefix ending in `/`) is, for messages and listings."""

    @abstractmethod
    def scratch_dir(self, parent: str) -> Path:
        """The local directory where folders to be stored under `parent` are assembled. For a local target it
        is on the target's filesystem (a dot-dir nothing lists), so publishing needs no copy."""

    @abstractmethod
    def begin_folder(self, prefix: str) -> PendingFolder:
        """Start writing the files of the folder `prefix` (ending in `/`)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store a small file, replacing any previous one atomically for every reader."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes | None:
        """A small file's content, or None when there is none."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A binary stream of one stored file."""

    def local_path(self, key: str) -> Path | None:
        """The file itself, when the target is a local directory (so it can be read in place)."""
        return None

    def link(self, key: str, target: str) -> None:  # noqa: B027 (optional: object stores have no links)
        """Point the alias `key` at the sibling `target`, where the target supports links (a convenience)."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_children(self, prefix: str) -> list[str]:
        """Names of the folders directly under prefix, sorted (never links)."""

    @abstractmethod
    def list_objects(self, prefix: str, *, recursive: bool = True) -> list[StoredObject]:
        """Files under prefix (with recursive=False, only those directly in it)."""

    @abstractmethod
    def delete_keys(self, keys: list[str]) -> None: ...

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete every file under prefix."""

    def unfinished_uploads(self, prefix: str) -> list[UnfinishedUpload]:
        return []

    def abort_upload(self, upload: UnfinishedUpload) -> None:  # noqa: B027 (only S3 has unfinished uploads)
        """Release what an unfinished upload holds."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


T = TypeVar("T")
R = TypeVar("R")


def concurrently(
    items: Iterable[T], work: Callable[[T], R], workers: int, on_done: Callable[[int, int], None] | None = None
) -> list[R]:
    """work(item) for every item, `workers` at a time; results in order, `on_done(n, total)` as each ends. The
    first failure is raised once the transfers already running have ended, and nothing not yet started starts."""
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="transfer") as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                if on_done is not None:
                    on_done(done, len(futures))
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            raise
