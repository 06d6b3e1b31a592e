"""Backup ids, path segments, redaction and config: the small contracts everything else relies on."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pg_backup_dagster.backup.backup_id import new_backup_id, parse_backup_id, validate_backup_id
from pg_backup_dagster.config import load_config_file, load_sources
from pg_backup_dagster.errors import BackupError, redact, register_secret
from pg_backup_dagster.tiers.paths import decode_segment, encode_segment


def test_backup_id_is_utc_and_round_trips():
    moment = datetime(2026, 11, 30, 9, 5, 7, tzinfo=UTC)
    assert new_backup_id(moment) == "2026-11-30T09-05-07Z"
    assert parse_backup_id("2026-11-30T09-05-07Z") == moment


@pytest.mark.parametrize("bad", ["", "latest", "2026-11-30", "2026-11-30T09:05:07Z", "2026-13-30T09-05-07Z",
                                 "2026-11-30T09-05-07Z/../x", "2026-02-30T00-00-00Z", " 2026-11-30T09-05-07Z"])
def test_invalid_backup_ids_are_rejected(bad):
    with pytest.raises(BackupError, match="invalid backup id"):
        validate_backup_id(bad)


def test_backup_ids_in_the_future_are_refused():
    now = datetime(2026, 11, 30, 9, 0, 0, tzinfo=UTC)
    assert validate_backup_id("2026-11-30T09-04-59Z", now) == "2026-11-30T09-04-59Z"  # clock skew allowed
    for future in ("2026-11-30T09-05-01Z", "2099-01-01T00-00-00Z"):
        with pytest.raises(BackupError, match="more than 5 minutes in the future"):
            validate_backup_id(future, now)
    with pytest.raises(BackupError, match="in the future"):
        validate_backup_id("2099-01-01T00-00-00Z")  # the real clock by default


@given(st.text(min_size=1, max_size=63).filter(lambda s: "\x00" not in s))
def test_segments_are_reversible_and_cannot_leave_their_folder(name):
    segment = encode_segment(name)
    assert decode_segment(segment) == name
    assert "/" not in segment and "\x00" not in segment and not segment.startswith(".")
    assert segment not in {"", ".", ".."}


def test_segments_of_different_names_differ():
    names = ["a", "A", "a b", "a%20b", "a.b", "..", "a/b", 'a"b', "é"]
    assert len({encode_segment(n) for n in names}) == len(names)
    assert encode_segment("plain_Name-1") == "plain_Name-1"


def test_redaction_removes_passwords_in_every_form():
    register_secret("s3cr3t-pw")
    text = "postgresql://bob:s3cr3t-pw@db:5432/x password=s3cr3t-pw and bare s3cr3t-pw"
    assert "s3cr3t-pw" not in redact(text)
    assert "bob" in redact(text)
    assert "s3cr3t-pw" not in str(BackupError("failed: postgresql://u:s3cr3t-pw@h/d\nsecond line"))
    assert "\n" not in str(BackupError("a\nb"))


def test_config_from_env_defaults():
    (source,) = load_sources({"PG_BACKUP_TARGET": "/tmp/x"})
    assert (source.name, source.target, source.profile, source.dsn_env) == (
        "main", "/tmp/x", "plain", "PG_BACKUP_DATABASE_URL")


def test_config_from_env_carries_every_issue_14_setting():
    (source,) = load_sources({
        "PG_BACKUP_TARGET": "/tmp/x", "PG_BACKUP_LOCK_TIMEOUT_SECONDS": "2.5", "PG_BACKUP_MAX_RUNTIME_MINUTES": "90",
        "PG_BACKUP_ACCEPTED_RESTORE_ERRORS": "extension .* does not exist\n\nrole \"x\"", "PG_BACKUP_UNVERIFIABLE": "warn",
    })
    assert (source.lock_timeout_seconds, source.max_runtime_minutes, source.unverifiable) == (2.5, 90, "warn")
    assert source.accepted_restore_errors == ("extension .* does not exist", 'role "x"')
    (unlimited,) = load_sources({"PG_BACKUP_MAX_RUNTIME_MINUTES": "off"})
    assert unlimited.max_runtime_minutes is None and unlimited.unverifiable == "fail"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PG_BACKUP_LOCK_TIMEOUT_SECONDS": "soon"}, "invalid PG_BACKUP_LOCK_TIMEOUT_SECONDS: 'soon' is not a number"),
        ({"PG_BACKUP_LOCK_TIMEOUT_SECONDS": "0"}, "invalid config field 'lock_timeout_seconds'"),
        ({"PG_BACKUP_MAX_RUNTIME_MINUTES": "1.5"}, "invalid PG_BACKUP_MAX_RUNTIME_MINUTES: '1.5' is not an integer"),
        ({"PG_BACKUP_UNVERIFIABLE": "ignore"}, "invalid config field 'unverifiable'"),
        ({"PG_BACKUP_ACCEPTED_RESTORE_ERRORS": "[a"}, "invalid config field 'accepted_restore_errors'"),
    ],
)
def test_bad_env_settings_fail_in_one_line(env, message):
    with pytest.raises(BackupError) as info:
        load_sources(env)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("sources: [{name: Bad-Name, target: /x}]", "name"),
        ("sources: [{name: a, target: /x, max_connections: 1}]", "max_connections"),
        ("sources: [{name: a, target: /x, profile: nope}]", "profile"),
        ("sources: [{name: a, target: /x, colour: red}]", "colour"),
        ("sources: [{name: a, target: /x, dsn: 'postgresql://u:pw@h/d'}]", "dsn"),
        ("sources: [{name: a, target: /x, retention: {keep_last: -1}}]", "keep_last"),
        ("sources: []", "sources"),
        ("sources: [{name: a, target: /x}, {name: a, target: /y}]", "appears twice"),
        ("sources: [{name: a\n  target: x", "YAML"),
        ("sources: [{name: a, target: /x, schedule: every night}]", "schedule"),
        ("sources: [{name: a, target: /x, schedule: '0 3 * * *', timezone: Mars/Olympus}]", "timezone"),
        ("sources: [{name: a, target: /x, tiers: [table]}]", "tiers"),
        ("sources: [{name: a, target: /x, unverifiable: maybe}]", "unverifiable"),
        ("sources: [{name: a, target: /x, accepted_restore_errors: ['(unclosed']}]", "accepted_restore_errors"),
    ],
)
def test_bad_config_names_the_field(tmp_path, body, field):
    path = tmp_path / "config.yaml"
    path.write_text(body)
    with pytest.raises(BackupError, match=field) as info:
        load_config_file(path)
    assert "\n" not in str(info.value)
    assert "pw@" not in str(info.value)


def test_table_check_sample_is_reproducible_and_brings_parents():
    from pg_backup_dagster.tiers.table_split import TableDump
    from pg_backup_dagster.verify.tiers import sample_tables

    tables = [TableDump("s", f"t{i:03d}", {}, after=[]) for i in range(100)]
    tables += [TableDump("s", f"part{i}", {}, after=[("s", "t000")]) for i in range(50)]
    assert sample_tables(tables, None, "2026-11-30T00-00-00Z") == tables  # under the limit: all
    first = sample_tables(tables, 20, "2026-11-30T00-00-00Z")
    assert first == sample_tables(tables, 20, "2026-11-30T00-00-00Z")
    names = {t.table for t in first}
    assert any(n.startswith("part") for n in names) and "t000" in names
    assert 20 <= len(first) <= 21
