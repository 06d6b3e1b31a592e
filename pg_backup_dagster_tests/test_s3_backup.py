"""Real backups through Dagster to s3://bucket/prefix on a moto server over HTTP, with multipart parts of 5 MiB.

The failure test puts a small HTTP proxy between boto3 and moto that answers one UploadPart with an error,
so the publish fails in the middle of a real multipart upload, on the real wire protocol.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import psycopg
import pytest
import yaml
from typer.testing import CliRunner

from pg_backup_dagster.cli import app
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.conninfo import split_password
from pg_backup_dagster.pgtools import find_tools
from pg_backup_dagster.runner import run_backup
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster_tests.conftest import SAMPLE_SQL, create_database, load_sql_file, table_fingerprints

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


class FaultProxy(ThreadingHTTPServer):
    """Forwards every request to moto; while armed, answers UploadPart number 2 with a 400 BadDigest.

    BadDigest (a part corrupted in transit) is not retried by boto3, so the failure is immediate and the
    test does not wait on retry backoff.
    """

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = urlsplit(upstream)
        self.armed = False
        self.failures = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def should_fail(self, method: str, path: str) -> bool:
        query = parse_qs(urlsplit(path).query)
        return self.armed and method == "PUT" and "uploadId" in query and query.get("partNumber") == ["2"]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._body()
        if self.server.should_fail(self.command, self.path):
            self.server.failures += 1
            self._send(
                400,
                {"Content-Type": "application/xml"},
                b"<Error><Code>BadDigest</Code><Message>injected by test proxy</Message></Error>",
            )
            return
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "content-length", "expect")
        }
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(self.server.upstream.hostname, self.server.upstream.port, timeout=60)
        try:
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            # A HEAD answer has no body but keeps the object's Content-Length.
            dropped = ("transfer-encoding", "connection") + (() if self.command == "HEAD" else ("content-length",))
            passed = {k: v for k, v in response.getheaders() if k.lower() not in dropped}
            self._send(response.status, passed, data)
        finally:
            conn.close()

    def _send(self, status: int, headers: dict[str, str], data: bytes) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay


@pytest.fixture
def proxy(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """boto3 talks to moto through the fault proxy."""
    server = FaultProxy(s3_env)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


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


def restore_full_dump(archive: Path, dsn: str) -> None:
    safe, env = split_password(dsn)
    subprocess.run(
        [
            find_tools().path("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "--dbname",
            safe,
            str(archive),
        ],
        check=True,
        env={**os.environ, **env},
        capture_output=True,
    )


def assert_objects_match_manifest(s3_client: Any, bucket: str, storage: Any, backup_id: str) -> dict[str, Any]:
    """Download every stored object and hash it: exactly the manifest's files, with its sizes and sha256."""
    manifest = storage.read_manifest("bulk", backup_id)
    base = f"{PREFIX}/bulk/{backup_id}/"
    listed = {base + e["path"] for e in manifest["files"]} | {base + "manifest.json"}
    assert object_keys(s3_client, bucket, base) == listed
    for entry in manifest["files"]:
        body = s3_client.get_object(Bucket=bucket, Key=base + entry["path"])["Body"].read()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"]), entry["path"]
    full = f"database_full_{backup_id}.dump"
    assert next(e for e in manifest["files"] if e["path"] == full)["size"] > 5 * MiB
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

        proxy.armed = True
        failed = run_backup(bulk_source, [bulk_source], instance, backup_id=ID2)
        proxy.armed = False
        assert not failed.success
        assert proxy.failures >= 1, "the fault was never injected: no second part was uploaded"
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
