"""S3 failing under a real backup: a part answered 5xx or reset, a bucket that is missing, access denied.

boto3 talks real HTTP to moto's server through a fault-injecting proxy (pg_backup_dagster_tests/s3_proxy.py).
The source's full dump is ~6 MiB of random bytes, so with 5 MiB parts it goes up as a real two-part multipart upload.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import dagster as dg
import pytest
from botocore.config import Config

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.storage import BackupRepository, S3Storage, open_storage
from pg_backup_dagster.storage.s3 import make_client
from pg_backup_dagster_tests.faults.helpers import (
    assert_failed_naming,
    assert_gc_cleans,
    assert_only_published,
    backup,
    leftovers,
    make_source,
)
from pg_backup_dagster_tests.helpers import create_database, free_port, moto_command, wait_until_up
from pg_backup_dagster_tests.s3_proxy import RESET, FaultProxy, Rule, running_proxy

MiB = 1024 * 1024
# 1,500 rows of 4 KiB random bytes: incompressible, so the full dump is ~6 MiB = two 5 MiB parts.
BULK_SQL = """
CREATE SCHEMA blob;
CREATE TABLE blob.chunks (id int PRIMARY KEY, body bytea NOT NULL);
INSERT INTO blob.chunks
SELECT g, decode(string_agg(md5(g || '/' || x), '' ORDER BY x), 'hex')
FROM generate_series(1, 1500) g, generate_series(1, 256) x GROUP BY g;
"""
SMALL_SQL = (
    "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;"
)


@dataclass
class S3World:
    source: SourceConfig
    storage: BackupRepository
    proxy: FaultProxy
    instance: dg.DagsterInstance
    small_dsn: str
    restore_url: str
    published: list[str] = field(default_factory=list)


def _aws_env(mp: pytest.MonkeyPatch, endpoint: str, work: Path, key: str = "testing", secret: str = "testing") -> None:
    """Credentials and endpoint from the environment only; boto3's default session caches them, so drop it."""
    mp.setattr(boto3, "DEFAULT_SESSION", None)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            mp.delenv(name)
    mp.setenv("AWS_ENDPOINT_URL", endpoint)
    mp.setenv("AWS_ACCESS_KEY_ID", key)
    mp.setenv("AWS_SECRET_ACCESS_KEY", secret)
    mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mp.setenv("AWS_CONFIG_FILE", str(work / "no-aws-config"))
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(work / "no-aws-credentials"))
    mp.setenv("PG_BACKUP_WORK_DIR", str(work / "staging"))


@pytest.fixture(scope="module")
def s3world(moto_endpoint, pg18, tmp_path_factory) -> Iterator[S3World]:
    """A bucket behind the proxy, a bulky source, and one good backup in it."""
    work = tmp_path_factory.mktemp("faults-s3")
    with pytest.MonkeyPatch.context() as mp, running_proxy(moto_endpoint) as proxy:
        _aws_env(mp, proxy.url, work)
        bucket = f"pgbd-faults-{uuid.uuid4().hex[:12]}"
        make_client().create_bucket(Bucket=bucket)
        dsn = create_database(pg18, "s3faults", BULK_SQL)
        source = make_source(mp, "s3bulk", dsn, f"s3://{bucket}/faults", pg18.dsn(), part_size=5 * MiB)
        with dg.instance_for_test() as instance:
            world = S3World(
                source,
                open_storage(source.target),
                proxy,
                instance,
                create_database(pg18, "s3small", SMALL_SQL),
                pg18.dsn(),
            )
            good = backup(source, instance)
            assert good.success, good.errors
            full = world.storage.read_manifest("s3bulk", good.backup_id).entries("full")[0]
            assert full.size > 5 * MiB, "the full dump must need a multipart upload"
            world.published.append(good.backup_id)
            yield world


def _no_uploads_left(world: S3World) -> None:
    store = world.storage.store
    assert isinstance(store, S3Storage)
    assert not store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads"), "multipart not aborted"


@pytest.mark.parametrize(
    ("action", "cause", "transient"),
    [(500, "InternalError", 503), (RESET, "Connection was closed", RESET)],
    ids=["part-answers-500", "part-connection-reset"],
)
def test_one_part_failing_publishes_nothing_and_a_transient_fault_is_retried(s3world, action, cause, transient):
    """Every retry of part 2 fails: nothing published, upload aborted. Next run, part 2 fails once: retried, published."""
    with s3world.proxy.inject(Rule("PUT", action, part_number=2)):
        failed = backup(s3world.source, s3world.instance)
    assert s3world.proxy.hits >= 2, "boto3 should have retried the part before giving up"
    text = assert_failed_naming(failed, cause)
    assert "backup_manifest" in text and "upload_part" in text
    _no_uploads_left(s3world)
    assert leftovers(s3world.storage, "s3bulk") == [str(s3world.storage.staging_dir("s3bulk", failed.backup_id))]
    assert_only_published(s3world.storage, "s3bulk", s3world.published)
    assert_gc_cleans(s3world.storage, "s3bulk", s3world.published)

    with s3world.proxy.inject(Rule("PUT", transient, part_number=2, times=1)):
        nxt = backup(s3world.source, s3world.instance)
    assert s3world.proxy.hits == 1
    assert nxt.success, nxt.errors
    s3world.published.append(nxt.backup_id)
    assert_only_published(s3world.storage, "s3bulk", s3world.published)
    _no_uploads_left(s3world)
    assert leftovers(s3world.storage, "s3bulk") == []


def test_bucket_missing(s3world, monkeypatch):
    bucket = f"pgbd-missing-{uuid.uuid4().hex[:12]}"
    source = make_source(monkeypatch, "nobucket", s3world.small_dsn, f"s3://{bucket}/p", s3world.restore_url)
    failed = backup(source, s3world.instance)
    assert_failed_naming(failed, f"S3 bucket '{bucket}' does not exist")
    assert not (Path(os.environ["PG_BACKUP_WORK_DIR"]) / "nobucket").exists(), "nothing staged before the check"
    make_client().create_bucket(Bucket=bucket)
    nxt = backup(source, s3world.instance)
    assert nxt.success, nxt.errors
    assert_only_published(open_storage(source.target), "nobucket", [nxt.backup_id])


@pytest.fixture
def moto_with_iam(tmp_path) -> Iterator[tuple[str, dict[str, tuple[str, str]]]]:
    """A moto server that enforces IAM after its first 7 actions: a bucket, an admin and a read-only user."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "7"}
    with open(tmp_path / "moto-iam.log", "wb") as log:
        proc = subprocess.Popen(moto_command(port), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_up(url, proc)
        kw = {"endpoint_url": url, "region_name": "us-east-1", "aws_access_key_id": "x", "aws_secret_access_key": "x"}
        boto3.client("s3", config=Config(s3={"addressing_style": "path"}), **kw).create_bucket(Bucket="guarded")
        iam = boto3.client("iam", **kw)
        keys = {}
        for user, actions in (("admin", ["s3:*"]), ("reader", ["s3:Get*", "s3:List*", "s3:HeadBucket"])):
            iam.create_user(UserName=user)
            policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}]}
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
            key = iam.create_access_key(UserName=user)["AccessKey"]
            keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
        yield url, keys
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_access_denied_on_upload(s3world, moto_with_iam, monkeypatch, tmp_path):
    """Real IAM in moto: read-only credentials pass the bucket check and are refused at the first upload."""
    url, keys = moto_with_iam
    source = make_source(monkeypatch, "denied", s3world.small_dsn, "s3://guarded/p", s3world.restore_url)
    _aws_env(monkeypatch, url, tmp_path, *keys["admin"])
    good = backup(source, s3world.instance)
    assert good.success, good.errors

    _aws_env(monkeypatch, url, tmp_path, *keys["reader"])
    failed = backup(source, s3world.instance)
    assert_failed_naming(failed, "access denied to s3://guarded/")
    assert "AccessDenied" in " ".join(failed.errors)

    _aws_env(monkeypatch, url, tmp_path, *keys["admin"])
    storage = open_storage(source.target)
    assert_only_published(storage, "denied", [good.backup_id])
    assert_gc_cleans(storage, "denied", [good.backup_id])
    nxt = backup(source, s3world.instance)
    assert nxt.success, nxt.errors
    assert_only_published(storage, "denied", [good.backup_id, nxt.backup_id])
