"""The staging folder of one backup: where tiers are assembled before publish, and the state steps hand on.

State lives under `.state/` (a dot-dir, so it is never published) as one JSON file per typed record.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pg_backup_dagster.backup.state import CheckRecord, StepState
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.files import atomic_write

STATE_DIR = ".state"
_CHECK_PREFIX = "check_"

State = TypeVar("State", bound=StepState)


@dataclass(frozen=True)
class Staging:
    """Paths inside one backup's staging folder, and its step state."""

    root: Path
    backup_id: str

    @property
    def roles_file(self) -> Path:
        return self.root / "roles.sql"

    @property
    def full_dump(self) -> Path:
        return self.root / f"database_full_{self.backup_id}.dump"

    def schema_dump(self, schema_segment: str) -> Path:
        return self.root / schema_segment / f"{schema_segment}_schema_{self.backup_id}.dump"

    def _state_path(self, name: str) -> Path:
        return self.root / STATE_DIR / f"{name}.json"

    def save(self, state: StepState) -> None:
        self._write(state.state_name, state.model_dump_json(indent=2))

    def load(self, kind: type[State]) -> State:
        """The record an upstream step saved; a clear error when that step has not run."""
        state = self.load_optional(kind)
        if state is None:
            raise FileNotFoundError(f"step state {kind.state_name} missing in {self.root}: run the upstream step first")
        return state

    def load_optional(self, kind: type[State]) -> State | None:
        """The record, or None when its step is not part of this backup (a tier left out)."""
        path = self._state_path(kind.state_name)
        return _parse(kind, path) if path.exists() else None

    def save_check(self, name: str, record: CheckRecord) -> None:
        self._write(_CHECK_PREFIX + name, record.model_dump_json(indent=2))

    def checks(self) -> dict[str, CheckRecord]:
        """Results the checks left in staging, keyed by check name."""
        return {
            path.stem[len(_CHECK_PREFIX) :]: _parse(CheckRecord, path)
            for path in sorted((self.root / STATE_DIR).glob(f"{_CHECK_PREFIX}*.json"))
        }

    def _write(self, name: str, text: str) -> None:
        atomic_write(self._state_path(name), text.encode("utf-8"))


Record = TypeVar("Record", bound=BaseModel)


def _parse(kind: type[Record], path: Path) -> Record:
    try:
        return kind.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BackupError(f"step state {path} is unreadable: {exc.error_count()} problem(s), first: "
                          f"{exc.errors()[0]['msg']}") from None
