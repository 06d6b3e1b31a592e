"""Our side of each comparison: the backup job through Dagster, the per-table split alone, the restore check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path

import dagster as dg
import psycopg

from benchmarks.baselines import run_pg_tool
from benchmarks.measure import Sample, measured
from pg_backup_dagster.backup.backup_id import new_backup_id
from pg_backup_dagster.backup.dumps import exact_row_counts
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import FULL_ASSET, ROLES_ASSET, SCHEMAS_ASSET, TABLES_ASSET
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.defs.assets import asset_key
from pg_backup_dagster.defs.partitions import backups_partitions_def
from pg_backup_dagster.pg.sql import quote_ident
from pg_backup_dagster.pg.tools import PgTools
from pg_backup_dagster.restore.run import RestoreRequest, restore_backup
from pg_backup_dagster.tiers.catalog import fetch_table_catalog
from pg_backup_dagster.tiers.content import archive_digests, output_settings
from pg_backup_dagster.tiers.live_split import split_archive
from pg_backup_dagster.verify.check_server import choose_check_server
from pg_backup_dagster.verify.content import ContentSpec
from pg_backup_dagster.verify.test_restore import restore_and_compare

DSN_ENV = "PGBD_BENCH_SOURCE_DSN"
REPO_ROOT = Path(__file__).resolve().parents[1]
TIER_ASSETS = (ROLES_ASSET, FULL_ASSET, SCHEMAS_ASSET, TABLES_ASSET)
TIERS_ONLY_JOB = "bench_tiers_only"
_ids = count()


@dataclass
class JobRun:
    """One backup job run: its cost, whether it succeeded, and how long each Dagster step took."""

    sample: Sample
    success: bool
    steps: dict[str, float] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            **self.sample.as_dict(),
            "success": self.success,
            "steps": self.steps,
            "checks": self.checks,
            "errors": self.errors,
        }


def bench_source(target: Path | str) -> SourceConfig:
    """The source as an operator would configure it: defaults everywhere, restore check on a local server."""
    return SourceConfig(name="bench", dsn_env=DSN_ENV, target=str(target), restore_url_env=None)


def _unique_backup_id() -> str:
    """Distinct ids even for runs within one second (the id has second resolution)."""
    return new_backup_id(datetime.now(UTC) + timedelta(seconds=next(_ids)))


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
    return {r.dagster_event.step_key: round(r.dagster_event.event_specific_data.duration_ms / 1000, 3) for r in records}


def run_job(source: SourceConfig, dsn: str, instance: dg.DagsterInstance, *, checks: bool) -> JobRun:
    """The backup job in process. With checks: `run_backup`, exactly what the CLI runs (checks, then publish).

    Without checks: a job over the same asset definitions selecting the four tier assets `.without_checks()`;
    the manifest step is left out too (publish refuses a backup whose checks did not run).
    """
    os.environ[DSN_ENV] = dsn
    backup_id = _unique_backup_id()
    if checks:
        return _run_job_in_fresh_process(source, instance, backup_id)
    with measured() as sample:
        defs = dg.Definitions.merge(build_definitions([source]), dg.Definitions(jobs=[tiers_only_job(source)]))
        instance.add_dynamic_partitions(source.partitions_name, [backup_id])
        result = defs.resolve_job_def(TIERS_ONLY_JOB).execute_in_process(
            run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
            partition_key=backup_id,
            instance=instance,
            raise_on_error=False,
        )
    evaluations = result.get_asset_check_evaluations()
    errors = [] if not evaluations else [f"{len(evaluations)} checks ran although none were selected"]
    return JobRun(sample, result.success and not evaluations, step_seconds(instance, result.run_id), {}, errors)


def _run_job_in_fresh_process(source: SourceConfig, instance: dg.DagsterInstance, backup_id: str) -> JobRun:
    """`runner.run_backup` (what the CLI runs) in a child process; only the child's process tree is sampled."""
    home = Path(os.environ["DAGSTER_HOME"])
    argv = [sys.executable, "-m", "benchmarks.job_process", str(home), source.target, backup_id]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    with measured(root=child.pid) as sample:
        stdout, stderr = child.communicate()
    if child.returncode != 0:
        return JobRun(sample, False, errors=[stderr.strip()[-500:]])
    outcome = json.loads(stdout.strip().splitlines()[-1])
    return JobRun(sample, outcome["success"], outcome["steps"], outcome["checks"], outcome["errors"])


def tiers_only_job(source: SourceConfig) -> dg.UnresolvedAssetJobDefinition:
    """The backup job's four tier assets without their checks (an asset selection alone would pull them in)."""
    selection = dg.AssetSelection.assets(*(asset_key(source, name) for name in TIER_ASSETS)).without_checks()
    return dg.define_asset_job(TIERS_ONLY_JOB, selection=selection, partitions_def=backups_partitions_def(source))


def schema_dumps_alone(tools: PgTools, dsn: str, schemas: list[str], work: Path, workers: int) -> dict:
    """The schema tier's pg_dumps on their own (same flags and parallelism as the job, no snapshot).

    Each `pg_dump --schema` still reads the whole catalog, so this costs schemas × catalog size.
    """
    work.mkdir(parents=True, exist_ok=True)
    argvs = [
        [
            tools.path("pg_dump"),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--schema={quote_ident(s)}",
            "--strict-names",
            "--file",
            str(work / f"{i}.dump"),
        ]
        for i, s in enumerate(schemas)
    ]
    with measured() as sample, ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda argv: run_pg_tool(argv, dsn), argvs))
    return {**sample.as_dict(), "schemas": len(schemas), "workers": workers}


def expected_counts(dsn: str) -> list[dict]:
    with psycopg.connect(dsn) as conn:  # a transaction: exact_row_counts counts in savepoints
        return exact_row_counts(conn, frozenset())


def split_only(tools: PgTools, dsn: str, archive: Path, out_dir: Path) -> dict:
    """The per-table tier alone: one catalog query, then `split_archive` over a full archive."""
    with measured() as catalog_sample, psycopg.connect(dsn, autocommit=True) as conn:
        catalog = fetch_table_catalog(conn)
    with measured() as sample:
        result = split_archive(archive, out_dir, catalog, pg_restore=tools.path("pg_restore"))
    return {**sample.as_dict(), "catalog_seconds": round(catalog_sample.seconds, 3), "tables": len(result.tables)}


def restore_check(
    tools: PgTools, archive: Path, expected: list[dict], restore_url: str | None, jobs: int, source_dsn: str | None,
    amcheck: bool | None = None, heapallindexed: bool = False,
) -> dict:
    """`restore_and_compare` as the full_dump check calls it: with `source_dsn`, content hashes (taken from the
    archive before the clock starts) and amcheck (unless `amcheck` is False), as it runs since issue 17; without,
    counts only, as before it. restore_url None means an ephemeral local server."""
    spec = None
    if source_dsn is not None:
        expected, spec = with_content(source_dsn, archive, expected)
    with measured() as sample:
        server = choose_check_server(archive, restore_url, tools.major)
        report = restore_and_compare(tools, archive, expected, server=server, jobs=jobs, content=spec,
                                     amcheck=spec is not None if amcheck is None else amcheck,
                                     heapallindexed=heapallindexed)
    identical = sum(1 for row in report.tables if row.get("content") == "identical")
    return {
        **sample.as_dict(),
        "passed": report.passed and (spec is None or identical == len(report.tables)),
        "pg_restore_seconds": round(report.seconds, 3),
        "tables_checked": len(report.tables),
        "tables_content_identical": identical,
        "indexes_amchecked": report.amcheck.checked if report.amcheck else 0,
        "indexes_heapallindexed": report.amcheck.heapallindexed if report.amcheck else 0,
    }


def with_content(dsn: str, archive: Path, expected: list[dict]) -> tuple[list[dict], ContentSpec | None]:
    """The expected rows with the archive's content hashes, and what comparing them needs, as a backup records it."""
    digests = archive_digests(archive)
    with psycopg.connect(dsn, autocommit=True) as conn:
        names = {oid: (schema, table) for oid, schema, table in conn.execute(
            "SELECT c.oid::int, n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r'")}
        settings, major = output_settings(conn), conn.info.server_version // 10000
    hashes = {names[oid]: sha for oid, (sha, _) in digests.items() if oid in names}
    rows = [{**row, "sha256": hashes.get((row["schema"], row["table"]))} for row in expected]
    return rows, ContentSpec.of_archive(archive, settings, major)


def restore_published(source: SourceConfig, target_dsn: str) -> dict:
    """`pg-backup-dagster restore latest --create-db` of the source's latest backup, as the CLI runs it: open
    the target, read the manifest, fetch and verify the full archive (in place on a local folder), pg_restore -j."""
    request = RestoreRequest(backup_id="latest", target_dsn=target_dsn, full=True, create_db=True,
                             jobs=source.restore_jobs)
    with measured() as sample:
        result = restore_backup(source, request)
    return {**sample.as_dict(), "steps": result.steps}
