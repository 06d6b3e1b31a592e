"""The backup semantics, written once over any ObjectStore: layout, publish, latest.json, list, fetch, delete, gc.

Layout: {source}/{backup_id}/… with manifest.json written last (a backup exists only once its manifest does),
and {source}/latest.json pointing at the newest backup whose checks passed. A backup is assembled in a
staging dir (`staging_dir`) and published from there; every reader looks at manifests and nothing else.

A published backup is never edited; what is learnt about it later (its files were re-checked against the
manifest, and when, how, with what result) goes into a small marker beside the manifest, `verify.json`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pg_backup_dagster.backup.manifest import (
    ENCRYPTED_SUFFIX,
    MANIFEST_NAME,
    Encryption,
    FileEntry,
    Manifest,
    parse_json_object,
    parse_manifest,
)
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import (
    Digest,
    atomic_path,
    atomic_write,
    copy_hashing,
    hash_stream,
    is_old,
    remove_path,
    sha256_file,
    staged_files,
    temp_path,
)
from pg_backup_dagster.storage.base import FolderExists, ObjectStore, PendingFolder, concurrently
from pg_backup_dagster.storage.encryption import decrypt_file, encrypt_file

log = logging.getLogger(__name__)

LATEST_NAME = "latest.json"
VERIFY_NAME = "verify.json"
RECHECK_HOWS = ("size", "sha256")
LATEST_LINK = "latest"
ENCRYPTION_DIR = ".encrypted"
# Files that hold no data and tell a person how to restore: they stay readable when encrypting.
PLAINTEXT_FILES = frozenset({"RESTORE.md"})
DEFAULT_GC_MIN_AGE = 3600.0

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.%-]*$")


def check_segment(kind: str, name: str) -> str:
    """A source name or backup id must be one plain path segment, so nothing can escape its prefix."""
    if not isinstance(name, str) or not _SEGMENT_RE.match(name) or ".." in name:
        raise BackupError(f"invalid {kind} {name!r}: use letters, digits, '_', '-', '.' (not leading)")
    return name


def planned_entries(staging: Path, declared: list[FileEntry]) -> list[FileEntry]:
    """One entry per staged file: the caller's (with the hash taken at staging) kept, missing ones hashed now."""
    on_disk = [path for path in staged_files(staging) if path != MANIFEST_NAME]
    by_path: dict[str, FileEntry] = {}
    for entry in declared:
        if entry.path in by_path:
            raise BackupError(f"manifest lists {entry.path!r} twice")
        by_path[entry.path] = entry
    missing = sorted(set(by_path) - set(on_disk))
    if missing:
        raise BackupError(f"manifest lists files missing from staging: {', '.join(missing[:5])}")
    if not on_disk:
        raise BackupError(f"nothing to publish: staging dir {staging} holds no files")
    return [by_path.get(path) or _hashed_entry(staging, path) for path in on_disk]


def _hashed_entry(staging: Path, path: str) -> FileEntry:
    digest = sha256_file(staging / path)
    return FileEntry(path=path, size=digest.size, sha256=digest.sha256)


@dataclass
class EarlyUpload:
    """Files stored into a backup's folder before its manifest, by path: the entry each was stored as (with the
    encrypted copy's size and hash when encrypting; plain_size/plain_sha256 then hold the staged file's)."""

    pending: PendingFolder
    stored: dict[str, FileEntry] = field(default_factory=dict)
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # (size, mtime_ns) of each file when hashed

    def unchanged_digests(self, staging: Path) -> dict[str, Digest]:
        """The hash of every early file not modified since, for publish to reuse instead of hashing it again."""
        return {path: _plain_digest(entry) for path, entry in self.stored.items()
                if _stat_of(staging / path) == self.stats.get(path)}

    def entry_for(self, entry: FileEntry) -> FileEntry | None:
        """The manifest entry as stored, when this file was stored early with the same content; else None."""
        early = self.stored.get(entry.path)
        if early is None or _plain_digest(early) != Digest(entry.size, entry.sha256):
            return None
        return entry if not early.encrypted else _sealed(entry, Digest(early.size, early.sha256))

    def discard(self) -> None:
        self.pending.discard()


def _stat_of(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_size, found.st_mtime_ns


def _plain_digest(entry: FileEntry) -> Digest:
    return Digest(entry.plain_size, entry.plain_sha256 or "") if entry.encrypted else Digest(entry.size, entry.sha256)


def _sealed(entry: FileEntry, digest: Digest) -> FileEntry:
    """The entry of a file stored encrypted: the stored copy's size and hash, the plain file's kept beside."""
    return replace(
        entry, size=digest.size, sha256=digest.sha256, encrypted="age", stored_path=entry.path + ENCRYPTED_SUFFIX,
        plain_size=entry.size, plain_sha256=entry.sha256,
    )


@dataclass(frozen=True)
class Recheck:
    """One re-check of a published backup's stored files against its manifest (the verify.json marker).

    how: "size" (every file exists with the manifest's size) or "sha256" (and its content hashes to it).
    by: who re-checked ("retention", "gc", …). A failed re-check is final: the backup never counts as
    passing again (delete verify.json after repairing the files to have it re-checked).
    """

    checked_at: str
    how: str
    by: str
    passed: bool
    problems: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        document = {**asdict(self), "result": "passed" if self.passed else "failed"}
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, what: str) -> Recheck:
        document = parse_json_object(data, what)
        try:
            return cls(
                checked_at=str(document["checked_at"]), how=str(document["how"]), by=str(document.get("by", "")),
                passed=document["result"] == "passed", problems=[str(p) for p in document.get("problems", [])],
            )
        except (KeyError, TypeError):
            raise BackupError(f"{what} is not a re-check marker (checked_at, how, result)") from None

    def summary(self) -> str:
        """`verified 2026-12-02T03:00:00+00:00 (size, by retention)` or `re-check FAILED … : first problem`."""
        if self.passed:
            return f"verified {self.checked_at} ({self.how}, by {self.by})"
        first = self.problems[0] if self.problems else "no detail"
        more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        return f"re-check FAILED {self.checked_at} ({self.how}, by {self.by}): {first}{more}"


@dataclass
class GcReport:
    """What gc removed (or, in a dry run, would remove) and what it refused or repaired, one line each."""

    removed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class BackupRepository:
    """The backups of every source on one target."""

    def __init__(self, store: ObjectStore, *, recipients: list[str] | None = None) -> None:
        self.store = store
        self.recipients = list(recipients) if recipients else None

    @property
    def url(self) -> str:
        return self.store.url

    def __repr__(self) -> str:
        return f"BackupRepository({self.store!r})"

    # --- layout --------------------------------------------------------------------------------------
    @staticmethod
    def _source_prefix(source: str) -> str:
        return f"{check_segment('source', source)}/"

    def _backup_prefix(self, source: str, backup_id: str) -> str:
        return f"{self._source_prefix(source)}{check_segment('backup id', backup_id)}/"

    def staging_dir(self, source: str, backup_id: str) -> Path:
        """Where a backup is assembled before publish."""
        return self.store.scratch_dir(self._source_prefix(source)) / check_segment("backup id", backup_id)

    def backup_url(self, source: str, backup_id: str) -> str:
        return self.store.location(self._backup_prefix(source, backup_id))

    # --- reading -------------------------------------------------------------------------------------
    def has_backup(self, source: str, backup_id: str) -> bool:
        """True when the backup's manifest exists (the only definition of 'exists')."""
        return self.store.exists(self._backup_prefix(source, backup_id) + MANIFEST_NAME)

    def list_backups(self, source: str) -> list[str]:
        """Ids of the source's backups that have a manifest, sorted (oldest first for UTC ids)."""
        prefix = self._source_prefix(source)
        return [
            name
            for name in self.store.list_children(prefix)
            if not name.startswith(".") and self.store.exists(f"{prefix}{name}/{MANIFEST_NAME}")
        ]

    def list_sources(self) -> list[str]:
        """Source names holding at least one backup or a latest.json."""
        return [
            name
            for name in self.store.list_children("")
            if _is_segment(name) and (self.store.exists(f"{name}/{LATEST_NAME}") or self.list_backups(name))
        ]

    def read_manifest(self, source: str, backup_id: str) -> Manifest:
        """The validated manifest; BackupError if it is missing or unreadable."""
        key = self._backup_prefix(source, backup_id) + MANIFEST_NAME
        data = self.store.get_bytes(key)
        if data is None:
            raise BackupError(f"no backup {source}/{backup_id}: {self.store.location(key)} does not exist")
        return parse_manifest(data, self.store.location(key))

    def fetch_file(
        self, source: str, backup_id: str, entry: FileEntry, dest: Path, *, identity: str | None = None
    ) -> Path:
        """One file of a published backup at dest, verified (and decrypted) against its manifest entry."""
        self._fetch_entry(self._backup_prefix(source, backup_id), entry, Path(dest), identity)
        return Path(dest)

    def verified_file(
        self, source: str, backup_id: str, entry: FileEntry, dest: Path, *, identity: str | None = None
    ) -> Path:
        """One file of a published backup, verified against its manifest entry: on a local target and not
        encrypted, the stored file itself, hashed in place (no copy); otherwise a fetched copy at dest."""
        path = None if entry.encrypted else self.store.local_path(self._backup_prefix(source, backup_id) + entry.path)
        if path is None:
            return self.fetch_file(source, backup_id, entry, dest, identity=identity)
        if path.is_symlink():
            raise BackupError(f"{path} is a symlink: a backup holds regular files only")
        found = sha256_file(path)
        if found != Digest(entry.size, entry.sha256):
            raise BackupError(f"{path} is corrupt: sha256 {found.sha256} size {found.size} differ from manifest")
        return path

    def fetch(self, source: str, backup_id: str, dest_dir: Path, *, identity: str | None = None) -> Path:
        """A verified, plaintext copy of a published backup; returns the folder holding it.

        A local unencrypted backup is verified in place and its own folder returned (no copy).
        """
        manifest = self.read_manifest(source, backup_id)
        prefix = self._backup_prefix(source, backup_id)
        folder = self.store.local_path(prefix)
        if folder is not None and not manifest.is_encrypted:
            for entry in manifest.files:
                found = sha256_file(folder / entry.path)
                if found != Digest(entry.size, entry.sha256):
                    raise BackupError(f"{folder / entry.path} is corrupt: sha256 {found.sha256} size {found.size} "
                                      "differ from manifest")
            return folder
        dest_dir = Path(dest_dir)
        concurrently(manifest.files, lambda e: self._fetch_entry(prefix, e, dest_dir / e.path, identity),
                     self.store.transfers)
        atomic_write(dest_dir / MANIFEST_NAME, manifest.to_bytes())
        return dest_dir

    def _fetch_entry(self, prefix: str, entry: FileEntry, dest: Path, identity: str | None) -> None:
        """Download under a temp name, verify size+sha256, decrypt if needed; dest is complete or absent."""
        try:
            if not entry.encrypted:
                with atomic_path(dest) as tmp:
                    self._download(prefix, entry, tmp)
                return
            sealed = temp_path(dest.with_name(dest.name + ENCRYPTED_SUFFIX))
            try:
                self._download(prefix, entry, sealed)
                decrypt_file(sealed, dest, identity)
            finally:
                sealed.unlink(missing_ok=True)
            if sha256_file(dest) != Digest(entry.plain_size or 0, entry.plain_sha256 or ""):
                dest.unlink(missing_ok=True)
                raise BackupError(f"{entry.path}: decrypted content does not match the manifest's plain_sha256")
        except OSError as exc:
            raise BackupError(f"cannot fetch {entry.path} to {dest}: {exc.strerror or exc}") from None

    def _download(self, prefix: str, entry: FileEntry, dest: Path) -> None:
        key = prefix + entry.stored
        with self.store.open(key) as src:
            found = copy_hashing(src, dest)
        if found != Digest(entry.size, entry.sha256):
            raise BackupError(
                f"{self.store.location(key)}: stored copy is corrupt (size {found.size}, sha256 {found.sha256}; "
                f"manifest says {entry.size}, {entry.sha256})"
            )

    # --- publish -------------------------------------------------------------------------------------
    def publish(
        self, source: str, backup_id: str, manifest: Manifest, early: EarlyUpload | None = None,
        on_stored: Callable[[int, int], None] | None = None,
    ) -> str:
        """Store the staged files, verify them, then write manifest.json; returns the backup's URL.
        on_stored(done, total) follows each stored file (uploads to S3 can take a while).

        Files keep the hash taken when they were staged (the manifest's): storage checks against it rather
        than reading them again. Encrypted files are hashed once more, as what is stored is new bytes. Files an
        `early` upload already stored with that hash are not stored again.
        """
        staging = self.staging_dir(source, backup_id)
        url = self.backup_url(source, backup_id)
        if self.has_backup(source, backup_id):
            raise BackupError(f"backup {url} already exists; backups are immutable")
        if not staging.is_dir():
            raise BackupError(f"nothing staged for {source}/{backup_id} (expected {staging})")
        if manifest.backup_id != backup_id:
            raise BackupError(f"manifest backup_id {manifest.backup_id!r} differs from {backup_id!r}")
        entries = planned_entries(staging, manifest.files)
        pending = early.pending if early else self.store.begin_folder(self._backup_prefix(source, backup_id))
        try:
            stored = concurrently(
                entries, lambda e: (early and early.entry_for(e)) or self._store_entry(pending, staging, e),
                self.store.transfers, on_done=on_stored,
            )
            encryption = Encryption(recipients=self.recipients) if self.recipients else None
            document = manifest.model_copy(
                update={"files": sorted(stored, key=lambda e: e.path), "encryption": encryption}
            )
            pending.commit(MANIFEST_NAME, document.to_bytes())
        except FolderExists:
            pending.discard()
            raise BackupError(f"backup {url} appeared during publish") from None
        except BaseException:
            pending.discard()
            raise
        shutil.rmtree(staging, ignore_errors=True)
        return url

    def upload_early(self, source: str, backup_id: str) -> EarlyUpload:
        """Hash and store what is staged now, before the checks end: invisible until publish writes manifest.json
        into the same folder. The caller discards it when the backup is not published."""
        early = EarlyUpload(self.store.begin_folder(self._backup_prefix(source, backup_id)))
        staging = self.staging_dir(source, backup_id)
        paths = [rel for rel in staged_files(staging) if rel != MANIFEST_NAME]
        early.stats = {rel: stat for rel in paths if (stat := _stat_of(staging / rel))}
        try:
            entries = concurrently(paths, lambda rel: _hashed_entry(staging, rel), self.store.transfers)
            stored = concurrently(entries, lambda entry: self._store_entry(early.pending, staging, entry),
                                  self.store.transfers)
        except BaseException:
            early.discard()
            raise
        early.stored = {entry.path: entry for entry in stored}
        return early

    def _store_entry(self, pending: PendingFolder, staging: Path, entry: FileEntry) -> FileEntry:
        """Store one staged file (its age encryption when recipients are set); returns its manifest entry."""
        src = staging / entry.path
        if not self.recipients or entry.path in PLAINTEXT_FILES:
            pending.put_file(entry.path, src, Digest(entry.size, entry.sha256))
            return entry
        if src.stat().st_size != entry.size:
            raise BackupError(f"{entry.path}: {src.stat().st_size} bytes on disk, {entry.size} when it was hashed")
        stored_path = entry.path + ENCRYPTED_SUFFIX
        sealed = staging / ENCRYPTION_DIR / stored_path
        sealed.parent.mkdir(parents=True, exist_ok=True)
        try:
            encrypt_file(src, sealed, self.recipients)
            digest = sha256_file(sealed)
            pending.put_file(stored_path, sealed, digest)
        finally:
            sealed.unlink(missing_ok=True)
        return _sealed(entry, digest)

    # --- latest --------------------------------------------------------------------------------------
    def write_latest(self, source: str, backup_id: str, info: dict[str, Any]) -> None:
        """Point latest.json (and, where the target has links, `latest`) at a published backup."""
        if not self.has_backup(source, backup_id):
            raise BackupError(f"cannot point latest at {self.backup_url(source, backup_id)}: no manifest")
        payload = {**info, "backup_id": backup_id, "source": source}
        prefix = self._source_prefix(source)
        self.store.put_bytes(prefix + LATEST_NAME, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())
        self.store.link(prefix + LATEST_LINK, backup_id)

    def read_latest(self, source: str) -> dict[str, Any] | None:
        """latest.json of a source, or None if there is none yet."""
        key = self._source_prefix(source) + LATEST_NAME
        data = self.store.get_bytes(key)
        return None if data is None else parse_json_object(data, self.store.location(key))

    # --- re-check ------------------------------------------------------------------------------------
    def recheck(self, source: str, backup_id: str, manifest: Manifest, *, how: str) -> list[str]:
        """Problems of the stored files against the manifest, found now: one listing for existence and sizes,
        and with how="sha256" every file read back and hashed (linear: one pass, no per-file listing)."""
        if how not in RECHECK_HOWS:
            raise BackupError(f"unknown re-check {how!r}: use one of {', '.join(RECHECK_HOWS)}")
        prefix = self._backup_prefix(source, backup_id)
        stored = {obj.key[len(prefix):]: obj.size for obj in self.store.list_objects(prefix)}
        problems: list[str] = []
        for entry in manifest.files:
            size = stored.get(entry.stored)
            if size is None:
                problems.append(f"{entry.path}: missing")
            elif size >= 0 and size != entry.size:
                problems.append(f"{entry.path}: {size} bytes stored, manifest says {entry.size}")
            elif how == "sha256" or size < 0:
                try:
                    with self.store.open(prefix + entry.stored) as src:
                        found = hash_stream(src)
                except (BackupError, OSError) as exc:
                    problems.append(f"{entry.path}: unreadable: {exc}")
                    continue
                if found != Digest(entry.size, entry.sha256):
                    problems.append(f"{entry.path}: sha256 {found.sha256[:16]}… differs from the manifest")
        return problems

    def recheck_backup(
        self, source: str, backup_id: str, manifest: Manifest, *, how: str, by: str, record: bool = True
    ) -> Recheck:
        """Re-check a backup now; with record, leave the result in its verify.json marker (never in the manifest)."""
        problems = self.recheck(source, backup_id, manifest, how=how)
        result = Recheck(
            checked_at=datetime.now(UTC).isoformat(timespec="seconds"), how=how, by=by, passed=not problems,
            problems=problems,
        )
        if record:
            self.record_recheck(source, backup_id, result)
        return result

    def record_recheck(self, source: str, backup_id: str, result: Recheck) -> None:
        """Leave a re-check's result in the backup's verify.json marker (the manifest is never edited)."""
        self.store.put_bytes(self._backup_prefix(source, backup_id) + VERIFY_NAME, result.to_bytes())

    def read_recheck(self, source: str, backup_id: str) -> Recheck | None:
        """The backup's last recorded re-check, or None if it was never re-checked; BackupError if unreadable."""
        key = self._backup_prefix(source, backup_id) + VERIFY_NAME
        data = self.store.get_bytes(key)
        return None if data is None else Recheck.parse(data, self.store.location(key))

    def failed_recheck(self, source: str, backup_id: str) -> Recheck | None:
        """The recorded re-check if it failed (an unreadable marker counts as failed: it cannot vouch)."""
        try:
            found = self.read_recheck(source, backup_id)
        except BackupError as exc:
            return Recheck(checked_at="?", how="?", by="?", passed=False, problems=[str(exc)])
        return found if found is not None and not found.passed else None

    # --- delete, gc ----------------------------------------------------------------------------------
    def delete_backup(self, source: str, backup_id: str) -> None:
        """Delete one backup, manifest first so a half-deleted backup is never visible."""
        prefix = self._backup_prefix(source, backup_id)
        keys = {obj.key for obj in self.store.list_objects(prefix)}
        if not keys:
            raise BackupError(f"no backup {source}/{backup_id} at {self.backup_url(source, backup_id)}")
        try:
            if prefix + MANIFEST_NAME in keys:
                self.store.delete_keys([prefix + MANIFEST_NAME])
            self.store.delete_prefix(prefix)
        except BackupError as exc:
            raise BackupError(f"{exc} (gc will finish it)") from None

    def gc(self, source: str, *, min_age: float = DEFAULT_GC_MIN_AGE, dry_run: bool = False) -> list[str]:
        """Leftovers of failed runs removed (see `sweep`, which also says what it refused or repaired)."""
        return self.sweep(source, min_age=min_age, dry_run=dry_run).removed

    def sweep(
        self, source: str, *, min_age: float = DEFAULT_GC_MIN_AGE, dry_run: bool = False, how: str = "size"
    ) -> GcReport:
        """Remove leftovers of failed runs untouched for min_age seconds; never a backup with a manifest.

        Leftovers: staging dirs, folders without manifest (a failed publish, an interrupted delete), temp
        files and pending folders of interrupted writes, unfinished uploads. With dry_run, only list them.
        The fence: nothing is deleted through a symlink (a symlinked `.staging` is reported and left alone,
        links inside it are removed as links), and the folder latest.json names is never removed. A latest.json
        naming a backup without manifest is repointed (unless dry_run) at the newest backup that passed its
        checks and re-checks now (`how`), or reported when none does.
        """
        prefix = self._source_prefix(source)
        cutoff = time.time() - min_age
        report = GcReport()
        protected = self._check_latest(source, dry_run, how, report)
        report.removed += self._gc_staging(source, min_age, dry_run, report)
        for name in self.store.list_children(prefix):
            folder = f"{prefix}{name}/"
            is_temp = name.startswith(".") and ".tmp-" in name
            if not is_temp and (name.startswith(".") or self.store.exists(folder + MANIFEST_NAME)):
                continue
            if name == protected:
                report.notes.append(f"kept {self.store.location(folder.rstrip('/'))}: latest.json points to it")
                continue
            objects = self.store.list_objects(folder)
            if not objects or max(obj.modified for obj in objects) > cutoff:
                continue
            if not dry_run:
                self.store.delete_prefix(folder)
            report.removed.append(self.store.location(folder.rstrip("/")))
        temp_files = [obj.key for obj in self.store.list_objects(prefix, recursive=False)
                      if ".tmp-" in obj.key.rsplit("/", 1)[-1] and obj.modified <= cutoff]
        if temp_files and not dry_run:
            self.store.delete_keys(temp_files)
        report.removed += [self.store.location(key) for key in temp_files]
        for upload in self.store.unfinished_uploads(prefix):
            if upload.started <= cutoff:
                if not dry_run:
                    self.store.abort_upload(upload)
                report.removed.append(f"multipart upload {self.store.location(upload.key)}")
        for note in report.notes:
            log.warning("gc %s: %s", source, note)
        return report

    def _check_latest(self, source: str, dry_run: bool, how: str, report: GcReport) -> str | None:
        """The backup id latest.json names (its folder is never gc's); repair it when it names no backup."""
        try:
            latest = self.read_latest(source)
        except BackupError as exc:
            report.notes.append(f"latest.json unreadable ({exc}): left as is")
            return None
        named = (latest or {}).get("backup_id")
        if latest is None or (isinstance(named, str) and _is_segment(named) and self.has_backup(source, named)):
            return named if isinstance(named, str) else None
        where = self.store.location(self._source_prefix(source) + LATEST_NAME)
        if dry_run:
            report.notes.append(f"{where} names {named!r}, which has no manifest: --apply repoints it at the "
                                "newest backup that verifies")
            return named if isinstance(named, str) else None
        for backup_id in reversed(self.list_backups(source)):
            try:
                manifest = self.read_manifest(source, backup_id)
            except BackupError:
                continue
            if not manifest.passed or manifest.backup_id != backup_id or self.failed_recheck(source, backup_id):
                continue
            check = self.recheck_backup(source, backup_id, manifest, how=how, by="gc")
            if not check.passed:
                report.notes.append(f"{backup_id} fails its re-check ({check.summary()}): not a latest candidate")
                continue
            self.write_latest(source, backup_id, {
                "location": self.backup_url(source, backup_id), "repaired_at": check.checked_at,
                "repaired_from": named, "published_at": manifest.finished_at.isoformat(timespec="seconds"),
            })
            report.notes.append(f"{where} named {named!r}, which has no manifest: repointed at {backup_id}, "
                                f"the newest backup that verifies ({how})")
            return named if isinstance(named, str) else None
        report.notes.append(f"{where} names {named!r}, which has no manifest, and no backup verifies: left as is")
        return named if isinstance(named, str) else None

    def _gc_staging(self, source: str, min_age: float, dry_run: bool, report: GcReport) -> list[str]:
        """Staging dirs of runs that never published (never through a symlinked staging folder)."""
        try:
            root = self.store.scratch_dir(self._source_prefix(source))
        except BackupError as exc:
            report.notes.append(str(exc))
            return []
        removed = []
        for child in sorted(root.iterdir()) if root.is_dir() and not root.is_symlink() else []:
            if is_old(child, min_age):
                if not dry_run:
                    remove_path(child)
                removed.append(str(child))
        if not dry_run and not root.is_symlink():
            with contextlib.suppress(OSError):  # not empty: a run is staging there (or a leftover stays for later)
                root.rmdir()  # an empty staging folder is no leftover to show in the target
        return removed


def _is_segment(name: str) -> bool:
    try:
        check_segment("source", name)
    except BackupError:
        return False
    return True
