"""Schedules: a tick adds its partition and requests its run; the freshness window follows the cron."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.defs.schedules import freshness_window

DAILY = SourceConfig(name="daily", dsn_env="PGBD_UNUSED", schedule="30 2 * * *", timezone="Europe/Berlin")
MANUAL = SourceConfig(name="manual", dsn_env="PGBD_UNUSED")


def test_tick_adds_partition_and_requests_its_run():
    defs = build_definitions([DAILY, MANUAL])
    schedule = defs.get_repository_def().get_schedule_def("backup_daily_schedule")
    assert schedule.job_name == "backup_daily"
    assert schedule.execution_timezone == "Europe/Berlin"
    tick = datetime(2026, 7, 1, 2, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    with dg.instance_for_test() as instance:
        for _ in range(2):  # a retried tick is idempotent: same key, same run_key
            with dg.build_schedule_context(  # as a context manager: it closes what it opened on the instance
                instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
            ) as context:
                requests = schedule.evaluate_tick(context).run_requests
            assert len(requests) == 1
            request = requests[0]
            assert request.partition_key == request.run_key == "2026-07-01T00-30-00Z"  # the tick, in UTC
            assert request.tags["pg_backup/trigger"] == "schedule"
        assert instance.get_dynamic_partitions("daily_backups") == ["2026-07-01T00-30-00Z"]
        assert instance.get_dynamic_partitions("manual_backups") == []


def test_only_scheduled_sources_get_a_schedule_and_every_source_a_backup_now_sensor():
    repo = build_definitions([DAILY, MANUAL]).get_repository_def()
    assert [s.name for s in repo.schedule_defs] == ["backup_daily_schedule"]
    sensors = {s.name: s for s in repo.sensor_defs}
    assert {"backup_daily_now", "backup_manual_now", "backup_failure_webhook"} == set(sensors)
    assert sensors["backup_manual_now"].default_status == dg.DefaultSensorStatus.STOPPED


def test_backup_now_sensor_requests_a_new_partition_and_its_run():
    defs = build_definitions([MANUAL])
    sensor = defs.get_repository_def().get_sensor_def("backup_manual_now")
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def()) as context,
    ):
        result = sensor(context)  # the raw result: evaluate_tick would resolve a partition not yet added
    [request] = result.run_requests
    [add] = result.dynamic_partitions_requests
    assert add.partitions_def_name == "manual_backups"
    assert list(add.partition_keys) == [request.partition_key]
    started = datetime.strptime(request.partition_key, "%Y-%m-%dT%H-%M-%SZ").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - started) < timedelta(minutes=5)


@pytest.mark.parametrize(
    ("cron", "expected"),
    [
        ("0 * * * *", timedelta(hours=2)),  # hourly: one hour plus the one-hour minimum grace
        ("30 2 * * *", timedelta(hours=30)),  # daily: a day plus a quarter of it
        ("0 2 * * 1-5", timedelta(days=3) * 1.25),  # weekdays: the weekend is the longest gap
    ],
)
def test_freshness_window_follows_the_cron(cron, expected):
    assert freshness_window(SourceConfig(name="s", schedule=cron)) == expected


def test_freshness_policy_sits_on_the_manifest_only():
    explicit = SourceConfig(name="explicit", schedule="0 * * * *", freshness_hours=12)
    defs = build_definitions([DAILY, MANUAL, explicit])
    graph = defs.resolve_asset_graph()
    policy = graph.get(dg.AssetKey(["explicit", "backup_manifest"])).freshness_policy
    assert policy.fail_window.to_timedelta() == timedelta(hours=12)
    assert graph.get(
        dg.AssetKey(["daily", "backup_manifest"])
    ).freshness_policy.fail_window.to_timedelta() == timedelta(hours=30)
    assert graph.get(dg.AssetKey(["manual", "backup_manifest"])).freshness_policy is None
    assert graph.get(dg.AssetKey(["daily", "full_dump"])).freshness_policy is None
