"""Retention applied to a real history: backups made through Dagster, two sources in one target, a second prefix.

The history is built once per module (real runs with backup ids spaced in days) and copied per test, so
every test may delete freely. The alpha runs go A2, A3, A1 (A1 last, as a backfill would), so latest.json
points at the oldest backup and the latest guard is exercised by a real history, not a hand-made pointer.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from pg_backup_dagster.backup.manifest import parse_manifest
from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.retention.apply import LATEST_GUARD, plan_for_source, run_retention
from pg_backup_dagster.retention.policy import RetentionPolicy
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster.storage.repository import VERIFY_NAME
from pg_backup_dagster_tests.helpers import create_database

DSN_ENV = "PGBD_TEST_RETENTION_DSN"
RESTORE_ENV = "PGBD_TEST_RETENTION_RESTORE_URL"
TINY_SQL = "CREATE TABLE items (id int PRIMARY KEY, name text); INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20) g;"
A1, A2, A3, A4 = (f"2026-01-0{day}T00-00-00Z" for day in (1, 2, 3, 4))
B1 = A2  # the same id under another source must not matter
KEEP_ONE = RetentionPolicy(keep_last=1)


def source(name: str, target: Path, **overrides) -> SourceConfig:
    return SourceConfig(
        name=name, dsn_env=DSN_ENV, target=str(target), restore_url_env=RESTORE_ENV, retention=KEEP_ONE, **overrides
    )


@pytest.fixture(scope="module")
def source_env(pg18) -> dict[str, str]:
    """The env variables the sources name: the database to back up and the server the checks restore on."""
    return {DSN_ENV: create_database(pg18, "retention", TINY_SQL), RESTORE_ENV: pg18.dsn()}


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def history(source_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real backups: alpha A2, A3, A1 (in that order) and beta B1, all in one target directory."""
    target = tmp_path_factory.mktemp("history") / "target"
    alpha, beta = source("alpha", target), source("beta", target)
    with pytest.MonkeyPatch.context() as mp, dg.instance_for_test() as instance:
        set_env(mp, source_env)
        for src, backup_id in ((alpha, A2), (alpha, A3), (alpha, A1), (beta, B1)):
            outcome = run_backup(src, [alpha, beta], instance, backup_id=backup_id)
            assert outcome.success, outcome.errors
    return target


@dataclass
class World:
    """A private copy of the history, a copy of alpha under another prefix, and an instance with the partitions."""

    target: Path
    other: Path
    alpha: SourceConfig
    beta: SourceConfig
    instance: dg.DagsterInstance

    def partitions(self, src: SourceConfig) -> set[str]:
        return set(self.instance.get_dynamic_partitions(src.partitions_name))


@pytest.fixture
def world(history: Path, source_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """The sources' env variables are set for the test (a backup run reads them)."""
    set_env(monkeypatch, source_env)
    target, other = tmp_path / "target", tmp_path / "other"
    shutil.copytree(history, target, symlinks=True)
    shutil.copytree(history / "alpha", other / "alpha", symlinks=True)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("alpha_backups", [A1, A2, A3])
        instance.add_dynamic_partitions("beta_backups", [B1])
        yield World(target, other, source("alpha", target), source("beta", target), instance)


def write_config(path: Path, sources: list[SourceConfig]) -> Path:
    entries = [{"name": s.name, "dsn_env": DSN_ENV, "target": s.target, "retention": {"keep_last": 1}} for s in sources]
    path.write_text(yaml.safe_dump({"sources": entries}))
    return path


def test_history_is_as_intended(history: Path) -> None:
    storage = open_storage(str(history))
    assert storage.list_backups("alpha") == [A1, A2, A3]
    assert storage.list_backups("beta") == [B1]
    assert storage.read_latest("alpha")["backup_id"] == A1


def test_cli_dry_run_prints_plan_with_reasons_and_deletes_nothing(world: World, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(write_config(tmp_path / "c.yaml", [world.alpha, world.beta])))
    result = CliRunner().invoke(app, ["retention"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert f"keep    {A1}  {LATEST_GUARD}" in lines
    assert f"delete  {A2}  not kept by any rule" in lines
    assert f"keep    {A3}  keep_last 1, minimum, newest passing" in lines
    assert f"keep    {B1}  keep_last 1, minimum, newest passing" in lines
    assert "dry run: 1 backup(s) would be deleted; pass --apply to delete them" in lines
    storage = open_storage(str(world.target))
    assert storage.list_backups("alpha") == [A1, A2, A3]
    assert world.partitions(world.alpha) == {A1, A2, A3}


def test_cli_apply_deletes_only_what_the_plan_says_in_its_own_source_and_prefix(world: World, tmp_path, monkeypatch):
    leftover = world.target / "alpha" / "2025-12-31T00-00-00Z"  # a folder without manifest: not retention's business
    leftover.mkdir()
    (leftover / "roles.sql").write_text("-- partial\n")
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(write_config(tmp_path / "c.yaml", [world.alpha, world.beta])))
    result = CliRunner().invoke(app, ["retention", "--source", "alpha", "--apply"])
    assert result.exit_code == 0, result.output
    assert f"deleted {A2}  not kept by any rule" in [line.strip() for line in result.output.splitlines()]

    storage = open_storage(str(world.target))
    assert storage.list_backups("alpha") == [A1, A3]
    assert not (world.target / "alpha" / A2).exists()
    assert world.partitions(world.alpha) == {A1, A3}
    assert storage.read_latest("alpha")["backup_id"] == A1
    assert leftover.is_dir()
    assert storage.list_backups("beta") == [B1] and world.partitions(world.beta) == {B1}
    assert open_storage(str(world.other)).list_backups("alpha") == [A1, A2, A3]
    for backup_id in (A1, A3):
        storage.fetch("alpha", backup_id, tmp_path / backup_id)  # what stays is intact (sha256 verified)


def test_retention_job_runs_in_dagster_and_removes_partitions(world: World) -> None:
    defs = build_definitions([world.alpha, world.beta])
    result = defs.resolve_job_def("retention_alpha").execute_in_process(instance=world.instance)
    assert result.success
    storage = open_storage(str(world.target))
    assert storage.list_backups("alpha") == [A1, A3]
    assert world.partitions(world.alpha) == {A1, A3}
    assert storage.list_backups("beta") == [B1] and world.partitions(world.beta) == {B1}
    [materialization] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert materialization.step_output_data.metadata["deleted"].value == 1


def test_retention_after_backup_runs_when_configured(world: World) -> None:
    alpha = replace(world.alpha, retention_after_backup=True)
    outcome = run_backup(alpha, [alpha, world.beta], world.instance, backup_id=A4)
    assert outcome.success, outcome.errors
    storage = open_storage(str(world.target))
    assert storage.list_backups("alpha") == [A4], "latest moved to A4, so keep_last 1 keeps only A4"
    assert world.partitions(alpha) == {A4}
    assert storage.list_backups("beta") == [B1] and world.partitions(world.beta) == {B1}
    assert open_storage(str(world.other)).list_backups("alpha") == [A1, A2, A3]


policies = st.builds(
    RetentionPolicy,
    keep_last=st.none() | st.integers(1, 4),
    max_age_days=st.none() | st.floats(0, 60),
    daily=st.integers(0, 3),
    weekly=st.integers(0, 2),
    monthly=st.integers(0, 2),
    minimum=st.integers(0, 3),
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(policy=policies, days_later=st.floats(0, 120))
def test_applied_policies_keep_their_promises_on_real_storage(world: World, policy, days_later) -> None:
    """Any policy, any time: never below the minimum, never the newest passing or latest, only alpha's own."""
    target = world.target.parent / f"copy-{uuid.uuid4().hex[:8]}"
    shutil.copytree(world.target, target, symlinks=True)
    alpha = replace(world.alpha, target=str(target), retention=policy)
    world.instance.add_dynamic_partitions("alpha_backups", [A1, A2, A3])
    now = datetime(2026, 1, 3, tzinfo=UTC) + timedelta(days=days_later)

    planned = plan_for_source(alpha, open_storage(str(target)), now)
    result = run_retention(alpha, open_storage(str(target)), world.instance, apply=True, now=now)
    assert result.plan == planned.plan
    kept = open_storage(str(target)).list_backups("alpha")
    assert kept == sorted(r.backup_id for r in planned.plan.keep)
    assert set(kept) | set(result.deleted) == {A1, A2, A3}
    assert {A1, A3} <= set(kept), "latest.json's backup and the newest passing one always stay"
    assert len(kept) >= min(policy.minimum, 3)
    assert world.partitions(alpha) == set(kept)
    assert open_storage(str(target)).list_backups("beta") == [B1]
    assert open_storage(str(world.other)).list_backups("alpha") == [A1, A2, A3]
    shutil.rmtree(target)


# --- "passed" is re-checked before anything is deleted (finding: a truncated newest dump kept, 4 intact deleted) ---


def full_dump(target: Path, backup_id: str) -> Path:
    return target / "alpha" / backup_id / f"database_full_{backup_id}.dump"


def marker(target: Path, backup_id: str) -> dict:
    return json.loads((target / "alpha" / backup_id / VERIFY_NAME).read_text())


def test_truncated_newest_dump_is_marked_never_counts_and_nothing_intact_is_deleted(
    world: World, tmp_path, monkeypatch, caplog
) -> None:
    """The newest backup's full dump is truncated to 0 bytes, its manifest intact: keep_last 1 must keep the
    newest *intact* backup (A2), not the corrupt one; A3 is marked, logged, and listed as failed."""
    full_dump(world.target, A3).write_bytes(b"")
    manifest_before = (world.target / "alpha" / A3 / "manifest.json").read_bytes()
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(write_config(tmp_path / "c.yaml", [world.alpha, world.beta])))
    with caplog.at_level(logging.ERROR, logger="pg_backup_dagster.retention.apply"):
        result = CliRunner().invoke(app, ["retention", "--source", "alpha", "--apply"])
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert f"keep    {A2}  keep_last 1, minimum, newest passing" in lines
    assert f"keep    {A3}  failed, no newer passing backup" in lines
    assert "deleted 0 backup(s) and their partitions" in lines
    assert any("fails its re-check" in r.getMessage() and A3 in r.getMessage() for r in caplog.records)

    storage = open_storage(str(world.target))
    assert storage.list_backups("alpha") == [A1, A2, A3]
    assert (world.target / "alpha" / A3 / "manifest.json").read_bytes() == manifest_before, "never edited"
    bad = marker(world.target, A3)
    assert bad["result"] == "failed" and bad["how"] == "size" and bad["by"] == "retention" and bad["checked_at"]
    assert any(f"database_full_{A3}.dump: 0 bytes stored" in p for p in bad["problems"])
    assert marker(world.target, A2)["result"] == "passed"

    listed = CliRunner().invoke(app, ["list", "--source", "alpha"])
    assert listed.exit_code == 0, listed.output
    row = {line.split()[0]: line for line in listed.output.splitlines() if line[:4].isdigit()}
    assert "checks FAILED" in row[A3] and "re-check FAILED" in row[A3] and "(size, by retention)" in row[A3]
    assert "checks passed" in row[A2] and "verified " in row[A2] and "(size, by retention)" in row[A2]
    assert "never re-checked" in row[A1] or "verified " in row[A1]

    again = run_retention(world.alpha, storage, world.instance, apply=True)  # the mark is final: A3 never passes
    assert again.deleted == [] and again.plan.reasons[A3] == "failed, no newer passing backup"
    assert A3 not in again.rechecks


def test_every_backup_corrupt_fails_the_retention_job_and_deletes_nothing(world: World) -> None:
    for backup_id in (A1, A2, A3):
        full_dump(world.target, backup_id).write_bytes(b"")
    defs = build_definitions([world.alpha, world.beta])
    result = defs.resolve_job_def("retention_alpha").execute_in_process(instance=world.instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "no backup passes its checks and a re-check of its files now" in str(failure.step_failure_data.error)
    assert open_storage(str(world.target)).list_backups("alpha") == [A1, A2, A3]
    assert world.partitions(world.alpha) == {A1, A2, A3}
    assert {marker(world.target, b)["result"] for b in (A1, A2, A3)} == {"failed"}


def test_sha256_recheck_catches_a_flipped_byte_of_the_same_size(world: World) -> None:
    """retention_verify: sha256 re-reads the newest candidate: a changed byte (size intact) demotes it."""
    dump = full_dump(world.target, A3)
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    sized = plan_for_source(world.alpha, open_storage(str(world.target)))
    assert sized.intact == A3, "a size check cannot see it (documented: set retention_verify: sha256)"
    hashed = run_retention(replace(world.alpha, retention_verify="sha256"), open_storage(str(world.target)),
                           world.instance, apply=True)
    assert hashed.intact == A2 and hashed.rechecks[A3].how == "sha256" and not hashed.rechecks[A3].passed
    assert hashed.rechecks[A2].how == "sha256" and hashed.rechecks[A1].how == "size"
    assert hashed.deleted == [] and open_storage(str(world.target)).list_backups("alpha") == [A1, A2, A3]
    assert marker(world.target, A3)["how"] == "sha256"


def test_retention_verify_setting_is_validated() -> None:
    with pytest.raises(BackupError, match="invalid config field 'retention_verify'"):
        SourceConfig(retention_verify="md5")


# --- backup ids in the future (finding: a 2099 backup held "newest" and the keep slots until 2099) ---
FUTURE = "2099-01-01T00-00-00Z"


def test_a_backup_dated_in_the_future_is_ignored_by_retention_and_flagged(world: World, tmp_path, monkeypatch):
    """A folder left by an older version under a 2099 id: retention skips it (reported), the real newest
    backup keeps its slot, and `list` flags it."""
    folder = world.target / "alpha" / FUTURE
    shutil.copytree(world.target / "alpha" / A3, folder)
    manifest = parse_manifest((folder / "manifest.json").read_bytes(), "test")
    (folder / "manifest.json").write_bytes(manifest.model_copy(update={"backup_id": FUTURE}).to_bytes())
    world.instance.add_dynamic_partitions("alpha_backups", [FUTURE])

    result = run_retention(world.alpha, open_storage(str(world.target)), world.instance, apply=True)
    assert result.skipped[FUTURE].startswith("not considered: backup id it is more than 5 minutes in the future")
    assert result.plan.reasons[A3] == "keep_last 1, minimum, newest passing"
    assert result.deleted == [A2]
    assert open_storage(str(world.target)).list_backups("alpha") == [A1, A3, FUTURE]
    assert FUTURE in world.partitions(world.alpha)

    monkeypatch.setenv("PG_BACKUP_CONFIG", str(write_config(tmp_path / "c.yaml", [world.alpha])))
    listed = CliRunner().invoke(app, ["list"])
    [row] = [line for line in listed.output.splitlines() if line.startswith(FUTURE)]
    assert "ignored by retention" in row


def test_a_partition_key_in_the_future_is_refused_by_the_backup_job_before_any_work(world: World) -> None:
    """The Dagster path (a key added in the UI, a sensor): every step validates the key first."""
    world.instance.add_dynamic_partitions("alpha_backups", [FUTURE])
    defs = build_definitions([world.alpha, world.beta])
    result = defs.resolve_job_def("backup_alpha").execute_in_process(
        instance=world.instance, partition_key=FUTURE, raise_on_error=False
    )
    assert not result.success
    failures = [str(e.step_failure_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and all("more than 5 minutes in the future" in f for f in failures)
    assert not (world.target / "alpha" / FUTURE).exists()
    assert not (world.target / "alpha" / ".staging" / FUTURE).exists()
    with pytest.raises(BackupError, match="in the future"):
        run_backup(world.alpha, [world.alpha], world.instance, backup_id=FUTURE)
