"""Round trips through `pg-backup-dagster restore` and the restore job: a real backup of the hostile database,
restored by tier into fresh databases, compared with the source table by table (rows and a content hash),
from a local target and from S3 (moto over HTTP)."""

from __future__ import annotations

import os
import uuid

import dagster as dg
import psycopg
import pytest

from pg_backup_dagster.constants import restore_job_name
from pg_backup_dagster.definitions import build_definitions
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.restore.run import parse_table_name
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import back_up, cli, hostile_database

ROLE = f"pgbd_restore_writer_{os.getpid()}"
HOSTILE_TABLES = [
    ('we"ird.sch/ema', 'ta"ble.with/slash'),
    ("new\nline", "tab\nle"),
    ("pct%2F", "100%"),
    ("..", ".."),
    ("Mixed Case", "Tab le"),
]


@pytest.fixture(scope="module")
def source_dsn(pg18) -> str:
    return hostile_database(pg18, "restore_hostile", f"CREATE ROLE {ROLE} NOLOGIN CONNECTION LIMIT 3")


@pytest.fixture(scope="module")
def published(source_dsn, pg18, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return back_up(mp, "restored", source_dsn, str(tmp_path_factory.mktemp("restore_target")), pg18.dsn())


def restore(published, target: str, *args: str):
    """The CLI as documented: the target URL in PG_BACKUP_RESTORE_TO, not in argv."""
    return cli(published, "restore", published.backup_id, *args, env={"PG_BACKUP_RESTORE_TO": target})


def sql_name(schema: str, table: str) -> str:
    return ".".join('"' + n.replace('"', '""') + '"' for n in (schema, table))


def test_verify_with_full_test_restore(published):
    result = cli(published, "verify", published.backup_id, "--full-restore")
    assert result.exit_code == 0, result.output
    assert "BAD" not in result.output and "test restore passed" in result.output


def test_full_tier(published, source_dsn, pg18):
    target = create_database(pg18, "r_full")
    result = restore(published, target, "--jobs", "3")
    assert result.exit_code == 0, result.output
    assert table_fingerprints(target) == table_fingerprints(source_dsn)


def test_schema_tier_restores_only_that_schema(published, source_dsn, pg18):
    target = create_database(pg18, "r_schema")
    result = restore(published, target, "--schema", 'we"ird.sch/ema', "--schema", "new\nline")
    assert result.exit_code == 0, result.output
    expected = table_fingerprints(source_dsn, {'we"ird.sch/ema', "new\nline"})
    assert len(expected) == 2 and table_fingerprints(target) == expected


def test_table_tier_with_hostile_names(published, source_dsn, pg18):
    target = create_database(pg18, "r_tables")
    args = [a for t in HOSTILE_TABLES for a in ("--table", sql_name(*t))]
    result = restore(published, target, *args)
    assert result.exit_code == 0, result.output
    source = table_fingerprints(source_dsn)
    assert table_fingerprints(target) == {t: source[t] for t in HOSTILE_TABLES}


def test_table_tier_partition_needs_its_parent(published, source_dsn, pg18):
    target = create_database(pg18, "r_parts")
    alone = restore(published, target, "--table", 'public."Parted us"')
    assert alone.exit_code != 0 and '"public"."Parted"' in alone.output
    with_parent = restore(published, target, "--table", 'public."Parted us"', "--table", "public.Parted")
    assert with_parent.exit_code == 0, with_parent.output
    restored = table_fingerprints(target)
    assert restored == {t: v for t, v in table_fingerprints(source_dsn).items() if t in restored}
    assert set(restored) == {("public", "Parted us")}  # the partitioned parent holds no rows of its own


def test_table_tier_into_the_existing_schema_of_a_live_database(published, source_dsn, pg18):
    """The usual bad day: one table dropped by mistake, restored into the database that still has the rest."""
    target = create_database(pg18, "r_live")
    assert restore(published, target).exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute('DROP TABLE "Mixed Case"."Tab le" CASCADE')
    result = restore(published, target, "--table", '"Mixed Case"."Tab le"')
    assert result.exit_code == 0, result.output
    assert table_fingerprints(target) == table_fingerprints(source_dsn)


def test_roles_tier_into_another_server(published):
    with ephemeral_server() as server:
        result = restore(published, server.dsn(), "--roles")
        assert result.exit_code == 0, result.output
        assert "already exist" in result.output  # the server's own superuser
        with psycopg.connect(server.dsn()) as conn:
            row = conn.execute("SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone()
    assert row == (False, 3)


def test_refuses_the_source_database_unless_forced(published, source_dsn, pg18):
    spelled_differently = source_dsn.replace("127.0.0.1", "localhost")
    for target in (source_dsn, spelled_differently):
        result = restore(published, target, "--table", "public.ruled")
        assert result.exit_code != 0 and "source database itself" in result.output
    before = table_fingerprints(source_dsn)
    with psycopg.connect(source_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE public.ruled")
    forced = restore(published, source_dsn, "--table", "public.ruled", "--force")
    assert forced.exit_code == 0, forced.output
    assert table_fingerprints(source_dsn) == before


def test_create_db_and_clean(published, source_dsn, pg18):
    target = pg18.dsn(f"r_created_{os.getpid()}")
    assert restore(published, target, "--create-db").exit_code == 0
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute('DELETE FROM "case"."t"')
    again = restore(published, target, "--clean")
    assert again.exit_code == 0, again.output
    assert table_fingerprints(target) == table_fingerprints(source_dsn)
    exists = restore(published, target, "--create-db")
    assert exists.exit_code != 0 and "already exists" in exists.output


def test_password_never_in_output(published, pg18):
    target = create_database(pg18, "r_secret")
    result = restore(published, target, "--schema", "select")
    assert result.exit_code == 0, result.output
    assert pg18.password not in result.output and "***" in result.output


def test_unknown_names_are_clear_errors(published, pg18):
    target = create_database(pg18, "r_unknown")
    assert "is not in backup" in restore(published, target, "--schema", "Select").output
    unknown = restore(published, target, "--table", "CASE.T")  # names are exact: "CASE"."t" and "case"."T" exist
    assert unknown.exit_code != 0 and 'table "CASE"."T" is not in backup' in unknown.output
    assert restore(published, target, "--table", "case.T").exit_code == 0
    assert set(table_fingerprints(target)) == {("case", "T")}


def test_restore_job_records_the_restore_in_dagster(published, source_dsn, pg18, monkeypatch):
    target = create_database(pg18, "r_job")
    monkeypatch.setenv("PGBD_TEST_JOB_TARGET", target)
    defs = build_definitions([published.source])
    job = defs.resolve_job_def(restore_job_name(published.source))
    config = {
        "backup_id": "latest",
        "tier": "table",
        "objects": ['"pct%2F"."100%"', '"case".T'],
        "target_env": "PGBD_TEST_JOB_TARGET",
    }
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(
            run_config={"ops": {f"{published.source.name}__restore": {"config": config}}}, instance=instance
        )
        assert result.success
        runs = instance.get_run_records(dg.RunsFilter(job_name=job.name))
        assert len(runs) == 1 and runs[0].dagster_run.is_success
    source = table_fingerprints(source_dsn)
    assert table_fingerprints(target) == {t: source[t] for t in [("pct%2F", "100%"), ("case", "T")]}


def test_round_trip_from_s3(s3_env, s3_client, source_dsn, pg18, monkeypatch):
    name = f"pgbd-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    from_s3 = back_up(monkeypatch, "s3restored", source_dsn, f"s3://{name}/backups", pg18.dsn())
    full = create_database(pg18, "r_s3_full")
    assert restore(from_s3, full).exit_code == 0
    assert table_fingerprints(full) == table_fingerprints(source_dsn)
    tables = create_database(pg18, "r_s3_tables")
    result = restore(from_s3, tables, *[a for t in HOSTILE_TABLES for a in ("--table", sql_name(*t))])
    assert result.exit_code == 0, result.output
    source = table_fingerprints(source_dsn)
    assert table_fingerprints(tables) == {t: source[t] for t in HOSTILE_TABLES}
    verified = cli(from_s3, "verify", "latest")
    assert verified.exit_code == 0, verified.output
    key = next(o["Key"] for o in s3_client.list_objects_v2(Bucket=name)["Contents"] if o["Key"].endswith("/data.sql"))
    body = bytearray(s3_client.get_object(Bucket=name, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3_client.put_object(Bucket=name, Key=key, Body=bytes(body))
    tampered = cli(from_s3, "verify", from_s3.backup_id)
    assert tampered.exit_code == 1 and f"BAD {key.split(from_s3.backup_id + '/', 1)[1]}: " in tampered.output
    refused = restore(from_s3, create_database(pg18, "r_s3_refused"), "--table", _table_of(key))
    assert refused.exit_code != 0 and "corrupt" in refused.output


def _table_of(key: str) -> str:
    """The --table argument for an S3 key `.../{schema}/tables/{table}/data.sql` (names percent-decoded)."""
    from pg_backup_dagster.tiers.paths import decode_segment

    schema, _, table = key.rsplit("/", 4)[1:4]
    return sql_name(decode_segment(schema), decode_segment(table))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("public.orders", ("public", "orders")),
        ('"a.b"."c"', ("a.b", "c")),
        ('"we""ird.sch/ema"."ta""ble.with/slash"', ('we"ird.sch/ema', 'ta"ble.with/slash')),
        ('Mixed."Tab le"', ("Mixed", "Tab le")),
        ('"new\nline".t', ("new\nline", "t")),
    ],
)
def test_parse_table_name(text, expected):
    assert parse_table_name(text) == expected


@pytest.mark.parametrize("text", ["orders", "a.b.c", '"a.b', '"a"b.c', "a.", ".b", '"a"x.b', ""])
def test_parse_table_name_rejects(text):
    with pytest.raises(BackupError):
        parse_table_name(text)
