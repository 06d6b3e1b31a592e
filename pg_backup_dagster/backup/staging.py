"""The staging folder of one backup: where tiers are assembled before publish, and the state they hand on.

Steps may run in separate processes (or machines with a shared volume), so everything one step tells the
next goes through small JSON files under `.state/` here, never through memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pg_backup_dagster.files import read_json, write_json

STATE_DIR = ".state"


@dataclass(frozen=True)
class Staging:
    """Paths inside one backup's staging folder."""

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

    def state_path(self, name: str) -> Path:
        return self.root / STATE_DIR / f"{name}.json"

    def save(self, name: str, data: Any) -> None:
        write_json(self.state_path(name), data)

    def load(self, name: str) -> Any:
        path = self.state_path(name)
        if not path.exists():
            raise FileNotFoundError(f"step state {name} missing in {self.root}: run the upstream step first")
        return read_json(path)

    def load_or(self, name: str, default: Any) -> Any:
        path = self.state_path(name)
        return read_json(path) if path.exists() else default
