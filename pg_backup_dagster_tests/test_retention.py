"""Retention planner: one example per rule, then properties over generated histories.

The properties are the promises an operator relies on before letting retention delete anything; the
examples pin the exact meaning of each rule (and of its reasons, which the CLI's dry-run prints).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pg_backup_dagster.backup.backup_id import new_backup_id
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.retention.policy import (
    BackupRecord,
    RetentionPlan,
    RetentionPolicy,
    plan_retention,
    records_from_ids,
)

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def history(*specs: tuple[str, bool]) -> list[BackupRecord]:
    """Records from ('YYYY-MM-DDTHH-MM-SSZ', passed) pairs."""
    return records_from_ids(dict(specs))


def daily_history(days: int, *, failed: set[int] = frozenset(), hour: int = 2) -> list[BackupRecord]:
    """One backup a day at `hour`:00 for `days` days ending the day of NOW; index 0 is the newest."""
    ids = {}
    for back in range(days):
        moment = (NOW - timedelta(days=back)).replace(hour=hour, minute=0, second=0)
        ids[new_backup_id(moment)] = back not in failed
    return records_from_ids(ids)


def ids(records: list[BackupRecord]) -> list[str]:
    return [r.backup_id for r in records]


def newest(records: list[BackupRecord], n: int) -> list[str]:
    return sorted(ids(sorted(records, key=lambda r: r.started_at, reverse=True)[:n]))


# --- policy parsing -------------------------------------------------------------------------------


def test_from_mapping_reads_every_field_and_none_is_empty() -> None:
    policy = RetentionPolicy.from_mapping(
        {"keep_last": 3, "max_age_days": 30, "daily": 7, "weekly": 4, "monthly": 12, "minimum": 2}
    )
    assert policy == RetentionPolicy(keep_last=3, max_age_days=30.0, daily=7, weekly=4, monthly=12, minimum=2)
    assert isinstance(policy.max_age_days, float)
    assert not policy.is_empty()
    assert RetentionPolicy.from_mapping(None).is_empty()
    assert RetentionPolicy.from_mapping({}).is_empty()
    assert RetentionPolicy.from_mapping({"minimum": 5}).is_empty()  # minimum alone deletes nothing
    assert RetentionPolicy.from_mapping({"max_age_days": 0.5}).max_age_days == 0.5


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"keep_lats": 3}, "keep_lats"),
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": 0}, "keep_last"),
        ({"keep_last": "3"}, "keep_last"),
        ({"keep_last": 2.0}, "keep_last"),
        ({"max_age_days": -0.5}, "max_age_days"),
        ({"max_age_days": float("nan")}, "max_age_days"),
        ({"max_age_days": float("inf")}, "max_age_days"),
        ({"max_age_days": "30d"}, "max_age_days"),
        ({"max_age_days": True}, "max_age_days"),
        ({"daily": -1}, "daily"),
        ({"weekly": -2}, "weekly"),
        ({"monthly": -3}, "monthly"),
        ({"monthly": True}, "monthly"),
        ({"minimum": -1}, "minimum"),
    ],
)
def test_from_mapping_rejects_bad_fields_naming_them(data: dict[str, object], field: str) -> None:
    with pytest.raises(BackupError, match=field):
        RetentionPolicy.from_mapping(data)


def test_from_mapping_rejects_a_non_mapping() -> None:
    with pytest.raises(BackupError, match="mapping"):
        RetentionPolicy.from_mapping([("keep_last", 3)])  # type: ignore[arg-type]


def test_constructor_validates_too() -> None:
    with pytest.raises(BackupError, match="daily"):
        RetentionPolicy(daily=-1)


# --- examples, one per rule -----------------------------------------------------------------------


def test_empty_policy_keeps_everything_even_old_and_failed() -> None:
    backups = daily_history(400, failed={3, 50})
    plan = plan_retention(backups, RetentionPolicy(minimum=0), NOW)
    assert plan.delete == [] and ids(plan.keep) == ids(backups)
    assert set(plan.reasons.values()) == {"no retention rule set"}


def test_keep_last_keeps_the_newest_passing() -> None:
    backups = daily_history(10)
    plan = plan_retention(backups, RetentionPolicy(keep_last=3), NOW)
    assert ids(plan.keep) == newest(backups, 3)
    assert len(plan.delete) == 7
    newest_id = newest(backups, 1)[0]
    assert plan.reasons[newest_id] == "keep_last 3, minimum, newest passing"
    assert plan.reasons[newest(backups, 3)[0]] == "keep_last 3"
    assert plan.reasons[plan.delete[0].backup_id] == "not kept by any rule"


def test_keep_last_counts_only_passing_backups() -> None:
    backups = daily_history(6, failed={0, 1})  # the two newest failed
    plan = plan_retention(backups, RetentionPolicy(keep_last=2), NOW)
    # The two failed ones have no newer passing backup, so they stay; keep_last still keeps two good ones.
    assert ids(plan.keep) == newest(backups, 4)
    assert plan.reasons[newest(backups, 1)[0]] == "failed, no newer passing backup"


def test_max_age_deletes_only_old_backups() -> None:
    backups = daily_history(40)
    plan = plan_retention(backups, RetentionPolicy(max_age_days=30), NOW)
    assert all(NOW - r.started_at > timedelta(days=30) for r in plan.delete)
    assert all(NOW - r.started_at <= timedelta(days=30) for r in plan.keep)
    assert len(plan.keep) == 30  # ages 0 d 10 h ... 29 d 10 h; the next one is 30 d 10 h old
    assert plan.reasons[plan.delete[0].backup_id] == "older than 30 days"
    assert plan.reasons[plan.keep[0].backup_id] == "within 30 days"


def test_max_age_boundary_exactly_that_old_is_kept() -> None:
    """ "Older than" is strict: a backup exactly max_age_days old stays one more run."""
    backups = history(
        ("2026-11-24T12-00-00Z", True), ("2026-11-24T11-59-59Z", True), ("2026-12-01T00-00-00Z", True)
    )
    plan = plan_retention(backups, RetentionPolicy(max_age_days=7, minimum=0), NOW)
    assert ids(plan.delete) == ["2026-11-24T11-59-59Z"]
    assert plan.reasons["2026-11-24T12-00-00Z"] == "within 7 days"


def test_max_age_never_deletes_the_newest_passing_or_minimum() -> None:
    backups = history(
        ("2025-01-01T00-00-00Z", True), ("2025-01-02T00-00-00Z", True), ("2025-01-03T00-00-00Z", True)
    )
    plan = plan_retention(backups, RetentionPolicy(max_age_days=7, minimum=2), NOW)
    assert ids(plan.keep) == ["2025-01-02T00-00-00Z", "2025-01-03T00-00-00Z"]
    assert plan.reasons["2025-01-03T00-00-00Z"] == "minimum, newest passing"
    assert plan.reasons["2025-01-02T00-00-00Z"] == "minimum"
    assert plan.reasons["2025-01-01T00-00-00Z"] == "older than 7 days"


def test_max_age_with_keep_last_keeps_young_ones_beyond_keep_last() -> None:
    backups = daily_history(20)
    plan = plan_retention(backups, RetentionPolicy(keep_last=15, max_age_days=5), NOW)
    assert ids(plan.keep) == newest(backups, 15)
    plan = plan_retention(backups, RetentionPolicy(keep_last=2, max_age_days=5), NOW)
    assert ids(plan.keep) == newest(backups, 5)  # ages 0 d 10 h ... 4 d 10 h are within 5 days


def test_daily_keeps_the_newest_of_each_day() -> None:
    backups = history(
        ("2026-11-30T01-00-00Z", True),
        ("2026-11-30T13-00-00Z", True),
        ("2026-11-30T23-00-00Z", False),  # failed: does not fill the day's slot
        ("2026-11-29T05-00-00Z", True),
        ("2026-11-28T05-00-00Z", True),
        ("2026-12-01T05-00-00Z", True),
    )
    plan = plan_retention(backups, RetentionPolicy(daily=3, minimum=0), NOW)
    assert ids(plan.keep) == ["2026-11-29T05-00-00Z", "2026-11-30T13-00-00Z", "2026-12-01T05-00-00Z"]
    assert plan.reasons["2026-11-30T13-00-00Z"] == "daily 2026-11-30"
    assert plan.reasons["2026-12-01T05-00-00Z"] == "daily 2026-12-01, newest passing"
    assert plan.reasons["2026-11-30T23-00-00Z"] == "failed, not kept by any rule"


def test_daily_skips_days_without_backups() -> None:
    # A two-week pause: daily=3 still keeps three days' backups instead of none.
    backups = history(
        ("2026-11-01T05-00-00Z", True), ("2026-11-02T05-00-00Z", True), ("2026-11-03T05-00-00Z", True)
    )
    plan = plan_retention(backups, RetentionPolicy(daily=3, minimum=0), NOW)
    assert plan.delete == []


def test_weekly_uses_iso_weeks_in_utc() -> None:
    backups = history(
        ("2026-11-29T23-00-00Z", True),  # Sunday, ISO week 48
        ("2026-11-23T00-00-00Z", True),  # Monday, week 48
        ("2026-11-22T12-00-00Z", True),  # Sunday, week 47
        ("2026-11-16T12-00-00Z", True),  # Monday, week 47
        ("2026-11-15T12-00-00Z", True),  # week 46
    )
    plan = plan_retention(backups, RetentionPolicy(weekly=2, minimum=0), NOW)
    assert ids(plan.keep) == ["2026-11-22T12-00-00Z", "2026-11-29T23-00-00Z"]
    assert plan.reasons["2026-11-22T12-00-00Z"] == "weekly 2026-W47"


def test_weekly_iso_year_differs_from_calendar_year() -> None:
    backups = history(("2026-12-31T00-00-00Z", True), ("2027-01-01T00-00-00Z", True))  # both 2026-W53
    plan = plan_retention(backups, RetentionPolicy(weekly=1, minimum=0), NOW)
    assert ids(plan.keep) == ["2027-01-01T00-00-00Z"]
    assert plan.reasons["2027-01-01T00-00-00Z"].startswith("weekly 2026-W53")


def test_monthly_keeps_the_newest_of_each_month() -> None:
    backups = daily_history(100)
    plan = plan_retention(backups, RetentionPolicy(monthly=3, minimum=0), NOW)
    kept = ids(plan.keep)
    assert kept == ["2026-10-31T02-00-00Z", "2026-11-30T02-00-00Z", "2026-12-01T02-00-00Z"]
    assert plan.reasons["2026-10-31T02-00-00Z"] == "monthly 2026-10"


def test_gfs_rules_combine() -> None:
    backups = daily_history(400)
    plan = plan_retention(backups, RetentionPolicy(daily=7, weekly=4, monthly=12, minimum=0), NOW)
    # 7 days, plus up to 4 week-ends and 12 month-ends, some of which coincide with the days kept.
    assert 7 <= len(plan.keep) <= 7 + 4 + 12
    assert newest(backups, 7) == sorted(set(newest(backups, 7)) & set(ids(plan.keep)))


def test_failed_backup_is_kept_until_a_newer_passing_one_exists() -> None:
    backups = history(("2026-11-01T00-00-00Z", True), ("2026-11-02T00-00-00Z", False))
    plan = plan_retention(backups, RetentionPolicy(keep_last=1), NOW)
    assert plan.delete == []
    backups += history(("2026-11-03T00-00-00Z", True))
    plan = plan_retention(backups, RetentionPolicy(keep_last=1), NOW)
    assert ids(plan.delete) == ["2026-11-01T00-00-00Z", "2026-11-02T00-00-00Z"]
    assert plan.reasons["2026-11-02T00-00-00Z"] == "failed, not kept by any rule"


def test_failed_backup_within_max_age_is_kept() -> None:
    backups = history(("2026-11-30T00-00-00Z", False), ("2026-12-01T00-00-00Z", True))
    plan = plan_retention(backups, RetentionPolicy(max_age_days=7), NOW)
    assert plan.delete == []
    assert plan.reasons["2026-11-30T00-00-00Z"] == "within 7 days"


def test_only_failed_backups_deletes_nothing() -> None:
    backups = daily_history(30, failed=set(range(30)))
    plan = plan_retention(backups, RetentionPolicy(keep_last=1, max_age_days=1), NOW)
    assert plan.delete == []


def test_minimum_counts_passing_backups() -> None:
    backups = daily_history(6, failed={0, 2})
    plan = plan_retention(backups, RetentionPolicy(keep_last=1, minimum=3), NOW)
    passing = [r for r in plan.keep if r.passed]
    assert len(passing) == 3
    assert ids(passing) == sorted(ids([r for r in backups if r.passed])[-3:])


def test_output_is_sorted_by_backup_id_and_reasons_cover_everything() -> None:
    backups = daily_history(30, failed={4, 9})
    random.Random(7).shuffle(backups)
    plan = plan_retention(backups, RetentionPolicy(keep_last=5, weekly=2), NOW)
    assert ids(plan.keep) == sorted(ids(plan.keep)) and ids(plan.delete) == sorted(ids(plan.delete))
    assert set(plan.reasons) == set(ids(backups))


def test_bad_input_is_rejected() -> None:
    record = BackupRecord("2026-11-01T00-00-00Z", datetime(2026, 11, 1), True)  # naive
    with pytest.raises(BackupError, match="timezone-aware"):
        plan_retention([record], RetentionPolicy(keep_last=1), NOW)
    with pytest.raises(BackupError, match="timezone-aware"):
        plan_retention([], RetentionPolicy(keep_last=1), datetime(2026, 12, 1))
    twice = history(("2026-11-01T00-00-00Z", True)) * 2
    with pytest.raises(BackupError, match="twice"):
        plan_retention(twice, RetentionPolicy(keep_last=1), NOW)
    with pytest.raises(BackupError, match="invalid backup id"):
        records_from_ids({"latest": True})


def test_non_utc_times_are_compared_in_utc() -> None:
    cet = datetime(2026, 12, 1, 0, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    record = BackupRecord("2026-12-01T00-30-00Z", cet, True)
    other = BackupRecord("2026-11-30T23-30-00Z", datetime(2026, 11, 30, 23, 30, tzinfo=UTC), True)
    plan = plan_retention([record, other], RetentionPolicy(daily=2, minimum=0), NOW)
    assert plan.reasons[record.backup_id].startswith("daily 2026-12-01")
    assert plan.reasons[other.backup_id] == "daily 2026-11-30"


# --- properties over generated histories -----------------------------------------------------------

START = datetime(2025, 1, 1, tzinfo=UTC)
TWO_YEARS = 2 * 365


@st.composite
def histories(draw: st.DrawFn) -> list[BackupRecord]:
    """Up to 80 backups over ~2 years; shrinking pulls days together, so same-day/week clashes are common."""
    moments = draw(
        st.lists(
            st.tuples(st.integers(0, TWO_YEARS), st.integers(0, 86_399)),
            max_size=80,
            unique=True,
        )
    )
    records = []
    for day, second in moments:
        started = START + timedelta(days=day, seconds=second)
        records.append(BackupRecord(new_backup_id(started), started, draw(st.booleans())))
    return draw(st.permutations(records))


policies = st.builds(
    RetentionPolicy,
    keep_last=st.none() | st.integers(1, 12),
    max_age_days=st.none() | st.floats(0, 800, allow_nan=False) | st.integers(0, 800).map(float),
    daily=st.integers(0, 10),
    weekly=st.integers(0, 6),
    monthly=st.integers(0, 24),
    minimum=st.integers(0, 6),
)
nows = st.integers(0, TWO_YEARS + 60).map(lambda d: START + timedelta(days=d, hours=12))
FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def newest_first(records: list[BackupRecord]) -> list[BackupRecord]:
    return sorted(records, key=lambda r: (r.started_at, r.backup_id), reverse=True)


def check_shape(plan: RetentionPlan, backups: list[BackupRecord]) -> None:
    keep, delete = set(ids(plan.keep)), set(ids(plan.delete))
    assert keep | delete == set(ids(backups)) and not keep & delete
    assert len(plan.keep) + len(plan.delete) == len(backups)
    assert ids(plan.keep) == sorted(keep) and ids(plan.delete) == sorted(delete)
    assert set(plan.reasons) == set(ids(backups)) and all(plan.reasons.values())


@FAST
@given(histories(), policies, nows)
def test_plan_partitions_the_input_and_keeps_the_promises(
    backups: list[BackupRecord], policy: RetentionPolicy, now: datetime
) -> None:
    plan = plan_retention(backups, policy, now)
    check_shape(plan, backups)
    kept = set(ids(plan.keep))
    passing = [r for r in newest_first(backups) if r.passed]
    # The newest passing backup, and the `minimum` newest passing ones, always survive.
    if passing:
        assert passing[0].backup_id in kept
    assert {r.backup_id for r in passing[: policy.minimum]} <= kept
    assert sum(r.passed for r in plan.keep) >= min(max(policy.minimum, 1), len(passing))
    # keep_last keeps the N newest passing.
    if policy.keep_last is not None:
        assert {r.backup_id for r in passing[: policy.keep_last]} <= kept
    # GFS: as many distinct days/weeks/months stay covered by passing backups as asked for (or all there are).
    for count, period in (
        (policy.daily, lambda t: t.date()),
        (policy.weekly, lambda t: t.isocalendar()[:2]),
        (policy.monthly, lambda t: (t.year, t.month)),
    ):
        available = {period(r.started_at) for r in passing}
        covered = {period(r.started_at) for r in plan.keep if r.passed}
        assert len(covered) >= min(count, len(available))
    # With max_age, nothing younger than it is deleted.
    if policy.max_age_days is not None:
        assert all(now - r.started_at > timedelta(days=policy.max_age_days) for r in plan.delete)
    # A failed backup goes only when a newer passing backup exists (and that one is kept).
    for record in plan.delete:
        if not record.passed:
            assert passing and passing[0].started_at > record.started_at
    # No passing backup at all: nothing is deleted.
    if not passing:
        assert plan.delete == []


@FAST
@given(histories(), policies, nows)
def test_planning_again_on_what_was_kept_deletes_nothing(
    backups: list[BackupRecord], policy: RetentionPolicy, now: datetime
) -> None:
    plan = plan_retention(backups, policy, now)
    again = plan_retention(plan.keep, policy, now)
    assert again.delete == []
    assert again.keep == plan.keep


@FAST
@given(histories(), policies, nows, st.randoms(use_true_random=False))
def test_input_order_does_not_matter(
    backups: list[BackupRecord], policy: RetentionPolicy, now: datetime, rnd: random.Random
) -> None:
    shuffled = list(backups)
    rnd.shuffle(shuffled)
    assert plan_retention(shuffled, policy, now) == plan_retention(backups, policy, now)


@FAST
@given(histories(), st.integers(0, 6), nows)
def test_empty_policy_deletes_nothing(backups: list[BackupRecord], minimum: int, now: datetime) -> None:
    plan = plan_retention(backups, RetentionPolicy(minimum=minimum), now)
    assert plan.delete == []
    check_shape(plan, backups)


@FAST
@given(histories(), policies, nows, st.integers(0, 5), st.integers(0, 5), st.floats(0, 100))
def test_asking_for_more_never_deletes_more(
    backups: list[BackupRecord],
    policy: RetentionPolicy,
    now: datetime,
    more: int,
    more_gfs: int,
    more_age: float,
) -> None:
    """Raising any count or max_age (of a non-empty policy) can only move backups from delete to keep."""
    bigger = RetentionPolicy(
        keep_last=None if policy.keep_last is None else policy.keep_last + more,
        max_age_days=None if policy.max_age_days is None else policy.max_age_days + more_age,
        daily=policy.daily + more_gfs,
        weekly=policy.weekly + more,
        monthly=policy.monthly + more_gfs,
        minimum=policy.minimum + more,
    )
    before = plan_retention(backups, policy, now)
    after = plan_retention(backups, bigger, now)
    if not policy.is_empty():
        assert set(ids(after.delete)) <= set(ids(before.delete))


@FAST
@given(histories(), policies, nows)
def test_records_from_ids_round_trips(
    backups: list[BackupRecord], policy: RetentionPolicy, now: datetime
) -> None:
    """Records rebuilt from ids and flags plan exactly like the originals (the id carries the start time)."""
    rebuilt = records_from_ids({r.backup_id: r.passed for r in backups})
    assert plan_retention(rebuilt, policy, now) == plan_retention(backups, policy, now)
