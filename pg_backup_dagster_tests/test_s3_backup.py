"""Real backups through Dagster to s3://bucket/prefix on a moto server over HTTP, with multipart parts of 5 MiB.

The failure test puts the fault proxy (s3_proxy.py) between boto3 and moto; it answers UploadPart 2 with an error,
so the publish fails in the middle of a real multipart upload, on the real wire protocol.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import dagster as dg
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from pg_backup_dagster.backup.manifest import Manifest
from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.helpers import SAMPLE_SQL, create_database, load_sql_file, table_fingerprints
from pg_backup_dagster_tests.restore_helpers import restore_full_dump
from pg_backup_dagster_tests.s3_proxy import FaultProxy, Rule, running_proxy

MiB = 1024 * 1024
DSN_ENV = "PGBD_TEST_S3_BULK_DSN"
RESTORE_ENV = "PGBD_TEST_S3_RESTORE_URL"
PREFIX = "team/pg"
# ~7.5 MB of base64 text (of md5 output: deterministic, barely compressible): the full dump is ~5.9 MiB,
# over one 5 MiB part, while the per-table data.sql stays small enough to keep the test quick.
BULK_SQL = """
CREATE SCHEMA bulk;
CREATE TABLE bulk.blobs (id int PRIMARY KEY, body text NOT NULL);
INSERT INTO bulk.blobs
SELECT g, encode(decode(md5(g || 'a') || md5(g || 'b') || md5(g || 'c') || md5(g || 'd') || md5(g || 'e')
                        || md5(g || 'f'), 'hex'), 'base64')
FROM generate_series(1, 60000) g;
"""
ID1, ID2, ID3 = "2026-03-01T00-00-00Z", "2026-03-02T00-00-00Z", "2026-03-03T00-00-00Z"


@pytest.fixture
def proxy(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """boto3 talks to moto through the fault proxy."""
    with running_proxy(s3_env) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        yield server


@pytest.fixture(scope="module")
def bulk_dsn(pg18) -> str:
    """The demo sample database plus one bulky table, so dumps need several 5 MiB parts."""
    dsn = create_database(pg18, "s3bulk")
    load_sql_file(dsn, SAMPLE_SQL)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(BULK_SQL)
    return dsn


@pytest.fixture
def bulk_source(bulk_dsn: str, bucket: str, pg18, monkeypatch: pytest.MonkeyPatch) -> SourceConfig:
    monkeypatch.setenv(DSN_ENV, bulk_dsn)
    monkeypatch.setenv(RESTORE_ENV, pg18.dsn())
    return SourceConfig(
        name="bulk", dsn_env=DSN_ENV, target=f"s3://{bucket}/{PREFIX}", restore_url_env=RESTORE_ENV, part_size=5 * MiB
    )


def object_keys(s3_client: Any, bucket: str, prefix: str) -> set[str]:
    pages = s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


def assert_objects_match_manifest(s3_client: Any, bucket: str, storage: Any, backup_id: str) -> Manifest:
    """Download every stored object and hash it: exactly the manifest's files, with its sizes and sha256."""
    manifest = storage.read_manifest("bulk", backup_id)
    base = f"{PREFIX}/bulk/{backup_id}/"
    listed = {base + e.path for e in manifest.files} | {base + "manifest.json"}
    assert object_keys(s3_client, bucket, base) == listed
    for entry in manifest.files:
        body = s3_client.get_object(Bucket=bucket, Key=base + entry.path)["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry.size, entry.sha256), entry.path
    full = f"database_full_{backup_id}.dump"
    assert next(e for e in manifest.files if e.path == full).size > 5 * MiB
    head = s3_client.head_object(Bucket=bucket, Key=base + full, PartNumber=1)
    assert head["PartsCount"] >= 2, "the full dump must have gone up as a multipart upload"
    return manifest


def test_multipart_backups_match_manifest_and_a_failed_upload_publishes_nothing(
    proxy, bulk_source, bulk_dsn, bucket, s3_client, pg18, tmp_path, monkeypatch
):
    """One history on S3: a good backup, one whose upload fails mid-way, the next good one, then gc."""
    with dg.instance_for_test() as instance:
        first = run_backup(bulk_source, [bulk_source], instance, backup_id=ID1)
        assert first.success, first.errors
        storage = open_storage(bulk_source.target)
        assert storage.read_latest("bulk")["backup_id"] == ID1
        assert_objects_match_manifest(s3_client, bucket, storage, ID1)
        assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads")

        with proxy.inject(Rule("PUT", 400, part_number=2)):  # BadDigest: not retried, so it fails at once
            failed = run_backup(bulk_source, [bulk_source], instance, backup_id=ID2)
        assert not failed.success
        assert proxy.hits >= 1, "the fault was never injected: no second part was uploaded"
        assert any("backup_manifest" in error and "BadDigest" in error for error in failed.errors), failed.errors
        assert not object_keys(s3_client, bucket, f"{PREFIX}/bulk/{ID2}/"), "a failed publish must leave no object"
        assert not s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads"), "the upload must be aborted"
        assert storage.list_backups("bulk") == [ID1]
        assert storage.read_latest("bulk")["backup_id"] == ID1
        staging = storage.staging_dir("bulk", ID2)
        assert staging.is_dir(), "the failed run's staging stays for gc (it is younger than min_age)"

        nxt = run_backup(bulk_source, [bulk_source], instance, backup_id=ID3)
        assert nxt.success, nxt.errors
        assert storage.list_backups("bulk") == [ID1, ID3]
        assert storage.read_latest("bulk")["backup_id"] == ID3
        assert staging.is_dir(), "the next run must not remove a leftover younger than min_age"
        assert_objects_match_manifest(s3_client, bucket, storage, ID3)

    folder = storage.fetch("bulk", ID3, tmp_path / "fetched")
    restored = create_database(pg18, "s3restored")
    restore_full_dump(folder / f"database_full_{ID3}.dump", restored)
    assert table_fingerprints(restored) == table_fingerprints(bulk_dsn)

    config = tmp_path / "sources.yaml"
    config.write_text(yaml.safe_dump({"sources": [{"name": "bulk", "dsn_env": DSN_ENV, "target": bulk_source.target}]}))
    monkeypatch.setenv("PG_BACKUP_CONFIG", str(config))
    result = CliRunner().invoke(app, ["gc", "--apply", "--min-age", "0"])
    assert result.exit_code == 0, result.output
    assert str(staging) in result.output and not staging.exists()
    assert storage.list_backups("bulk") == [ID1, ID3]
    storage.fetch("bulk", ID1, tmp_path / ID1)  # verifies size and sha256 of every file


# A real-world restore failure: a CHECK calls a function that calls another one unqualified. Inserts work on the
# live server; pg_restore loads the rows with an empty search_path, so the full-dump check fails.
UNRESTORABLE_SQL = """
SET search_path = public;
CREATE FUNCTION public.inner_fn(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT x + 1';
CREATE FUNCTION public.outer_fn(x int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$BEGIN RETURN inner_fn(x); END$$;
CREATE TABLE public.checked (x int CHECK (public.outer_fn(x) > 0));
INSERT INTO public.checked SELECT generate_series(1, 10);
"""


def test_files_stored_while_the_checks_ran_go_when_a_check_fails(
    s3_env, bucket, s3_client, pg18, monkeypatch
):
    """The CLI's run stores the tier files during the checks; a failing check removes them, a passing one
    publishes without storing them twice."""
    dsn = create_database(pg18, "s3early")
    load_sql_file(dsn, SAMPLE_SQL)
    monkeypatch.setenv(DSN_ENV, dsn)
    source = SourceConfig(name="bulk", dsn_env=DSN_ENV, target=f"s3://{bucket}/{PREFIX}", restore_url_env=None)
    with dg.instance_for_test() as instance:
        good = run_backup(source, [source], instance, backup_id=ID1)
        assert good.success, good.errors
        manifest = open_storage(source.target).read_manifest("bulk", ID1)
        late = {"RESTORE.md", "SHA256SUMS"}
        assert good.materialized["backup_manifest"]["files_stored_early"] == len(manifest.files) - len(late)

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(UNRESTORABLE_SQL)
        failed = run_backup(source, [source], instance, backup_id=ID2)
    assert not failed.success and not failed.checks["full_dump_restores"][0]
    assert "inner_fn" in failed.checks["full_dump_restores"][1]
    assert not object_keys(s3_client, bucket, f"{PREFIX}/bulk/{ID2}/"), "what was stored early must go"
    storage = open_storage(source.target)
    assert storage.list_backups("bulk") == [ID1] and storage.read_latest("bulk")["backup_id"] == ID1
