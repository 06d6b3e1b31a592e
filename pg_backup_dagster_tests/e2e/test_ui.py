"""The UI path, end to end: dagster-webserver and dagster-daemon on a test instance, "backup now" through
GraphQL exactly as the UI's sensor dialog does it, results read back through GraphQL, then a headless Chromium
looks at the asset graph and the check results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import yaml

from pg_backup_dagster.defs.instance import BASE_CONFIG

pytestmark = pytest.mark.e2e

LOCATION, REPOSITORY, SOURCE = "pg_backup_dagster", "__repository__", "web"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """dagster-webserver + dagster-daemon on one DAGSTER_HOME, stopped (by their own ids) at the end."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.port = root, env, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> None:
        """The webserver first (it creates the SQLite storage), then the daemon that dequeues runs."""
        bin_dir = Path(sys.executable).parent
        workspace = str(self.root / "workspace.yaml")
        self._spawn(
            "webserver", [bin_dir / "dagster-webserver", "-w", workspace, "-p", str(self.port), "-h", "127.0.0.1"]
        )
        deadline = time.monotonic() + 120
        while not self._answers():
            if time.monotonic() > deadline or self.processes[0].poll() is not None:
                raise AssertionError("dagster-webserver did not start: " + self.log("webserver"))
            time.sleep(0.5)
        self._spawn("daemon", [bin_dir / "dagster-daemon", "run", "-w", workspace])

    def _spawn(self, name: str, argv: list) -> None:
        with open(self.root / f"{name}.log", "wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [str(a) for a in argv],
                    env=self.env,
                    cwd=self.root,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def _answers(self) -> bool:
        try:
            return bool(self.graphql("{ version }")["version"])
        except OSError:
            return False

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def graphql(self, query: str, **variables) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"GraphQL HTTP {exc.code}: {exc.read()[:2000]!r}") from None
        assert not body.get("errors"), body["errors"]
        return body["data"]


@pytest.fixture(scope="module")
def service(pg18, sample_dsn, tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    home = root / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(BASE_CONFIG)
    (root / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "pg_backup_dagster.definitions",
                            "attribute": "defs",
                            "location_name": LOCATION,
                        }
                    }
                ]
            }
        )
    )
    (root / "sources.yaml").write_text(
        yaml.safe_dump(
            {
                "sources": [
                    {
                        "name": SOURCE,
                        "dsn_env": "PGBD_E2E_DSN",
                        "target": str(root / "target"),
                        "restore_url_env": "PGBD_E2E_RESTORE",
                        "schedule": "0 3 * * *",
                    }
                ]
            }
        )
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PG_BACKUP_CONFIG": str(root / "sources.yaml"),
        "PGBD_E2E_DSN": sample_dsn,
        "PGBD_E2E_RESTORE": pg18.dsn(),
    }
    env.pop("PG_BACKUP_WEBHOOK_URL", None)
    with dg.DagsterInstance.from_config(str(home)) as instance:  # pools are proven in test_multi_source
        instance.event_log_storage.set_concurrency_slots(f"pg_backup_{SOURCE}", 4)
    svc = Service(root, env)
    try:
        svc.start()
        yield svc
    finally:
        svc.stop()


DRY_RUN = """
mutation($selector: SensorSelector!) {
  sensorDryRun(selectorData: $selector, cursor: null) {
    __typename
    ... on DryRunInstigationTick {
      evaluationResult {
        runRequests { runKey tags { key value } }
        dynamicPartitionsRequests { partitionKeys partitionsDefName type }
        error { message }
      }
    }
    ... on PythonError { message }
  }
}"""

ADD_PARTITION = """
mutation($repo: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repo, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on PythonError { message }
  }
}"""

LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""

RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"""

ASSET = """
query($key: AssetKeyInput!, $partition: String!) {
  assetNodeOrError(assetKey: $key) {
    ... on AssetNode {
      partitionKeys
      assetMaterializations(partitions: [$partition]) { partition runId metadataEntries { label } }
      assetChecksOrError {
        ... on AssetChecks { checks { name executionForLatestMaterialization { status runId } } }
      }
    }
  }
}"""


@pytest.fixture(scope="module")
def backup_now(service):
    """What the UI does on "Preview tick result" → "Apply requests": evaluate, add the partition, launch."""
    repo = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}
    tick = service.graphql(DRY_RUN, selector={**repo, "sensorName": f"backup_{SOURCE}_now"})["sensorDryRun"]
    result = tick["evaluationResult"]
    assert result["error"] is None, result
    [request] = result["runRequests"]
    [add] = result["dynamicPartitionsRequests"]
    [key] = add["partitionKeys"]
    assert add["partitionsDefName"] == f"{SOURCE}_backups" and add["type"] == "ADD_PARTITIONS"
    added = service.graphql(ADD_PARTITION, repo=repo, name=add["partitionsDefName"], key=key)
    assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess", added
    tags = {t["key"]: t["value"] for t in request["tags"]} | {"dagster/partition": key}
    launched = service.graphql(
        LAUNCH,
        params={
            "selector": {**repo, "jobName": f"backup_{SOURCE}"},
            "runConfigData": {},
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = service.graphql(RUN, id=run_id)["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", (status, service.log("daemon"))
    return key, run_id


def asset(service, name: str, partition: str) -> dict:
    return service.graphql(ASSET, key={"path": [SOURCE, name]}, partition=partition)["assetNodeOrError"]


def assert_every_tier_materialized(service, key: str, run_id: str) -> None:
    for name in ("roles_sql", "full_dump", "schema_dumps", "table_dumps", "backup_manifest"):
        node = asset(service, name, key)
        assert key in node["partitionKeys"]
        [materialization] = node["assetMaterializations"]
        assert materialization["partition"] == key and materialization["runId"] == run_id
    labels = {m["label"] for m in asset(service, "backup_manifest", key)["assetMaterializations"][0]["metadataEntries"]}
    assert {
        "location",
        "summary",
        "total_bytes",
        "bytes_full",
        "schemas",
        "tables",
        "duration_s",
        "throughput_mib_s",
        "check_full_dump_restores_s",
    } <= labels


def assert_checks_passed(service, key: str, run_id: str) -> None:
    checks = {}
    for name in ("roles_sql", "full_dump", "schema_dumps", "table_dumps"):
        for check in asset(service, name, key)["assetChecksOrError"]["checks"]:
            checks[check["name"]] = check["executionForLatestMaterialization"]
    assert set(checks) == {"full_dump_restores", "schema_dumps_complete", "table_dumps_restore", "roles_sql_loadable"}
    for name, execution in checks.items():
        assert execution["status"] == "SUCCEEDED" and execution["runId"] == run_id, (name, execution)


def open_browser(profile: Path):
    """Debian's chromium through selenium, or None when either is missing."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        return None
    try:
        from selenium import webdriver
    except ImportError:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


COMMUNITY_DIALOG = "Join the Dagster community"


def wait_for_text(driver, texts: list[str], absent: str | None = None, timeout: float = 120) -> str:
    """Wait until the rendered page shows every text (and no longer shows `absent`), dismissing the
    first-visit community dialog if it covers the page."""
    deadline = time.monotonic() + timeout
    body = ""
    while time.monotonic() < deadline:
        for button in driver.find_elements("xpath", "//button[normalize-space()='Skip']"):
            button.click()
        body = driver.find_element("tag name", "body").text
        dialog_open = COMMUNITY_DIALOG in body  # it can open after the page has rendered: wait for the Skip
        if all(t in body for t in texts) and not (absent and absent in body) and not dialog_open:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{texts} not on {driver.current_url}; page shows: {body[:1500]}")


def assert_browser_shows_graph_and_checks(browser, service, tmp_path: Path) -> None:
    browser.get(f"{service.url}/asset-groups/{SOURCE}")
    page = wait_for_text(
        browser, ["roles_sql", "full_dump", "schema_dumps", "table_dumps", "backup_manifest"], absent="Loading..."
    )
    assert page.count("1 / 1 Passed") == 4 and "100% filled" in page  # four checked assets, one partition
    browser.save_screenshot(str(tmp_path / "asset_graph.png"))
    browser.get(f"{service.url}/assets/{SOURCE}/full_dump?view=checks")
    page = wait_for_text(browser, ["full_dump_restores", "Succeeded", "restore_duration_s"])
    browser.save_screenshot(str(tmp_path / "full_dump_checks.png"))
    assert COMMUNITY_DIALOG not in page
    assert (tmp_path / "asset_graph.png").stat().st_size > 10_000
    assert (tmp_path / "full_dump_checks.png").stat().st_size > 10_000


def test_backup_now_from_the_ui(service, backup_now, tmp_path):
    """One test, so xdist starts one webserver: GraphQL read-back first, then the browser."""
    key, run_id = backup_now
    assert_every_tier_materialized(service, key, run_id)
    assert_checks_passed(service, key, run_id)
    browser = open_browser(tmp_path / "chromium-profile")
    if browser is None:
        pytest.skip("GraphQL part passed; browser part needs Debian's chromium + chromium-driver and selenium")
    try:
        assert_browser_shows_graph_and_checks(browser, service, tmp_path)
    finally:
        browser.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)
