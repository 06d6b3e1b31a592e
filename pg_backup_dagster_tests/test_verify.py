"""`pg-backup-dagster verify` on a real published backup: intact passes (with a full test restore), and any
changed byte in any stored file fails, naming the file (the S3 case is in test_restore.py)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pg_backup_dagster_tests.restore_helpers import Published, back_up, cli


@pytest.fixture(scope="module")
def published(sample_dsn, pg18, tmp_path_factory) -> Published:
    with pytest.MonkeyPatch.context() as mp:
        return back_up(mp, "verified", sample_dsn, str(tmp_path_factory.mktemp("verify_target")), pg18.dsn())


def tampered_copy(published: Published, tmp_path: Path) -> tuple[Published, Path]:
    """A copy of the backup's target to damage, so other tests keep the intact one."""
    assert published.folder is not None
    target = tmp_path / "target"
    shutil.copytree(Path(published.source.target), target)
    copy = replace(
        published,
        source=replace(published.source, target=str(target)),
        folder=target / published.source.name / published.backup_id,
    )
    return copy, copy.folder


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def test_intact_backup_verifies_with_a_full_test_restore(published):
    result = cli(published, "verify", published.backup_id, "--full-restore")
    assert result.exit_code == 0, result.output
    assert "BAD" not in result.output and "test restore passed" in result.output


@pytest.mark.parametrize("victim", ["database_full_*.dump", "shop/tables/*/data.sql", "roles.sql", "RESTORE.md"])
def test_one_flipped_byte_fails_naming_the_file(published, tmp_path, victim):
    copy, folder = tampered_copy(published, tmp_path)
    path = sorted(folder.glob(victim))[0]
    flip_byte(path, path.stat().st_size // 2)
    result = cli(copy, "verify", "latest")
    assert result.exit_code == 1
    rel = path.relative_to(folder).as_posix()
    bad = [line for line in result.output.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 1 and bad[0].startswith(f"BAD {rel}: ") and "corrupt" in bad[0]


def test_missing_file_fails(published, tmp_path):
    copy, folder = tampered_copy(published, tmp_path)
    (folder / "roles.sql").unlink()
    result = cli(copy, "verify", published.backup_id)
    assert result.exit_code == 1 and "BAD roles.sql" in result.output
