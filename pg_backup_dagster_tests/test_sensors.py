"""Run-failure alerts: a real failed backup run posts one JSON alert, without secrets, to a local receiver."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import dagster as dg
import pytest

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import run_backup
from pg_backup_dagster.defs.sensors import WEBHOOK_ENV, backup_failure_webhook

DSN_ENV = "PGBD_TEST_SENSOR_DSN"


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[dict]]]:
    """An HTTP server on 127.0.0.1 that records every JSON body posted to it."""
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook?token=s3cr3t-token", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def failed_run(pg18, tmp_path, monkeypatch):
    """A real backup run that fails: its database does not exist (the DSN carries the real password)."""
    monkeypatch.setenv(DSN_ENV, pg18.dsn("no_such_database"))
    source = SourceConfig(name="broken", dsn_env=DSN_ENV, target=str(tmp_path / "target"), restore_url_env=None)
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance)
        assert not outcome.success
        run = instance.get_run_by_id(outcome.run_id)
        [failure] = instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
        yield instance, run, failure.dagster_event, outcome


def evaluate(instance, run, event):
    context = dg.build_run_status_sensor_context(
        sensor_name=backup_failure_webhook.name, dagster_event=event, dagster_instance=instance, dagster_run=run
    ).for_run_failure()
    return backup_failure_webhook(context)


def test_failed_backup_posts_one_alert_without_secrets(failed_run, receiver, monkeypatch, pg18):
    instance, run, event, outcome = failed_run
    url, received = receiver
    monkeypatch.setenv(WEBHOOK_ENV, url)
    assert evaluate(instance, run, event) is None
    [alert] = received
    assert alert["event"] == "backup_failed"
    assert alert["source"] == "broken" and alert["job"] == "backup_broken"
    assert alert["backup_id"] == outcome.backup_id and alert["run_id"] == outcome.run_id
    assert alert["failed_steps"], alert
    assert alert["message"]
    body = json.dumps(alert)
    assert pg18.password not in body
    assert "s3cr3t-token" not in body


def test_no_webhook_configured_skips(failed_run, monkeypatch):
    instance, run, event, _ = failed_run
    monkeypatch.delenv(WEBHOOK_ENV, raising=False)
    result = evaluate(instance, run, event)
    assert isinstance(result, dg.SkipReason) and WEBHOOK_ENV in result.skip_message
