"""Storage behaviour both target kinds must share runs on both (moto's fixtures: fixtures/s3.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pg_backup_dagster.storage import BackupRepository, open_storage


@pytest.fixture(params=["local", "s3"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., BackupRepository]:
    """Factory for either target kind, so behaviour both must share is tested on both."""
    if request.param == "local":
        return lambda **kw: open_storage(str(tmp_path / "target"), **kw)
    bucket_name = request.getfixturevalue("bucket")
    return lambda **kw: open_storage(f"s3://{bucket_name}/backups/team-a", **kw)
