"""A real S3 API over HTTP for the storage tests: one moto server per test session (per xdist worker)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pg_backup_dagster.storage import BackupRepository, open_storage
from pg_backup_dagster.storage.s3 import make_client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    exe = str(script) if script.exists() else shutil.which("moto_server")
    if not exe:
        pytest.skip("moto_server not installed (pip install 'moto[server]')")
    return [exe, "-H", "127.0.0.1", "-p", str(port)]


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto_server did not answer on {url} within {timeout}s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto server subprocess (S3 over real HTTP), stopped at the end of the session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_moto_command(port), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def s3_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Fake credentials and the moto endpoint in the environment, nothing from the host's AWS config."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("PG_BACKUP_WORK_DIR", str(tmp_path / "work"))
    return moto_endpoint


@pytest.fixture
def s3_client(s3_env: str) -> Any:
    """A raw client on the moto server, for looking behind the storage's back."""
    return make_client()


@pytest.fixture
def bucket(s3_client: Any) -> str:
    """A fresh bucket per test (xdist-safe: a uuid in the name)."""
    name = f"pgbd-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(params=["local", "s3"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., BackupRepository]:
    """Factory for either target kind, so behaviour both must share is tested on both."""
    if request.param == "local":
        return lambda **kw: open_storage(str(tmp_path / "target"), **kw)
    bucket_name = request.getfixturevalue("bucket")
    return lambda **kw: open_storage(f"s3://{bucket_name}/backups/team-a", **kw)
