"""The Dagster graph for a fixed two-source config, as plain text compared with a committed snapshot.

Any change to assets (keys, deps, groups, partitions), asset checks (blocking or not), jobs, schedules,
sensors or resource keys shows up as a diff of snapshots/definitions.txt in review. After an intended change:

    UPDATE_SNAPSHOTS=1 pytest pg_backup_dagster_tests/test_definitions_snapshot.py

and commit the rewritten file.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pg_backup_dagster.config import load_sources
from pg_backup_dagster.definitions import build_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.txt"
UPDATE_ENV = "UPDATE_SNAPSHOTS"

# Two sources of different shapes: a scheduled one on S3 with every tier and retention after each backup,
# and an unscheduled local one with only the roles and full tiers.
CONFIG = {
    "sources": [
        {
            "name": "orders",
            "dsn_env": "ORDERS_URL",
            "target": "s3://snapshot-bucket/pg",
            "schedule": "30 2 * * *",
            "timezone": "Europe/Berlin",
            "retention_after_backup": True,
        },
        {"name": "crm", "dsn_env": "CRM_URL", "target": "/srv/backups", "tiers": ["roles", "full"]},
    ]
}


def _name(key: dg.AssetKey) -> str:
    return key.to_user_string()


def _status(status: object) -> str:
    return getattr(status, "value", str(status))


def describe(defs: dg.Definitions) -> str:
    """A stable, sorted, line-per-item listing of everything a reviewer should see change."""
    repo = defs.get_repository_def()
    graph = defs.resolve_asset_graph()
    lines = ["[assets]"]
    for key in sorted(graph.get_all_asset_keys(), key=_name):
        node = graph.get(key)
        partitions = getattr(node.partitions_def, "name", None) or node.partitions_def
        lines.append(f"{_name(key)}  group={node.group_name} partitions={partitions} kinds={','.join(sorted(node.kinds))}")
        lines.append(f"    deps: {', '.join(sorted(_name(p) for p in node.parent_keys)) or '-'}")
        freshness = getattr(node, "freshness_policy", None)
        if freshness is not None:
            lines.append(f"    freshness: {type(freshness).__name__} fail_window={freshness.fail_window.to_timedelta()}")
    lines.append("")
    lines.append("[asset checks]")
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (_name(k.asset_key), k.name)):
        check = graph.get(check_key)
        lines.append(f"{_name(check_key.asset_key)}: {check_key.name}  blocking={check.blocking}")
    lines.append("")
    lines.append("[jobs]")
    for job in sorted(repo.get_all_jobs(), key=lambda j: j.name):
        if job.name.startswith("__"):  # Dagster's implicit asset job
            continue
        partitions = getattr(job.partitions_def, "name", None) or job.partitions_def
        lines.append(f"{job.name}  partitions={partitions}")
        lines.append(f"    ops: {', '.join(sorted(node.name for node in job.nodes))}")
    lines.append("")
    lines.append("[schedules]")
    for schedule in sorted(repo.schedule_defs, key=lambda s: s.name):
        lines.append(
            f"{schedule.name}  job={schedule.job_name} cron={schedule.cron_schedule!r} "
            f"timezone={schedule.execution_timezone} default={_status(schedule.default_status)}"
        )
    lines.append("")
    lines.append("[sensors]")
    for sensor in sorted(repo.sensor_defs, key=lambda s: s.name):
        jobs = ",".join(sorted(t.job_name for t in sensor.targets)) if sensor.has_jobs else "-"
        lines.append(
            f"{sensor.name}  type={_status(sensor.sensor_type)} jobs={jobs} default={_status(sensor.default_status)}"
        )
    lines.append("")
    lines.append("[resources]")
    lines.extend(sorted(repo.get_top_level_resources()))
    return "\n".join(lines) + "\n"


def test_definitions_match_the_committed_snapshot(tmp_path: Path) -> None:
    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    sources = load_sources({"PG_BACKUP_CONFIG": str(config)})
    assert [s.name for s in sources] == ["orders", "crm"]
    text = describe(build_definitions(sources))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
        return
    if not SNAPSHOT.exists():
        pytest.fail(f"{SNAPSHOT} is missing: create it with {UPDATE_ENV}=1")
    assert text == SNAPSHOT.read_text(), (
        f"the Dagster definitions differ from {SNAPSHOT.name}; if the change is intended, rerun with "
        f"{UPDATE_ENV}=1 and commit the file"
    )
