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

import pytest
import yaml

from pg_backup_dagster.instance import BASE_CONFIG

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
        bin_dir = Path(sys.executable).parent
        workspace = str(self.root / "workspace.yaml")
        for name, argv in {
            "webserver": [bin_dir / "dagster-webserver", "-w", workspace, "-p", str(self.port), "-h", "127.0.0.1"],
            "daemon": [bin_dir / "dagster-daemon", "run", "-w", workspace],
        }.items():
            log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            self.processes.append(subprocess.Popen([str(a) for a in argv], env=self.env, cwd=self.root,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.graphql("{ version }")["version"]:
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError("dagster-webserver did not answer: " + (self.root / "webserver.log").read_text()[-2000:])

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
            f"{self.url}/graphql", data=json.dumps({"query": query, "variables": variables}).encode(),
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
    (root / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "pg_backup_dagster.definitions", "attribute": "defs", "location_name": LOCATION}}]}))
    (root / "sources.yaml").write_text(yaml.safe_dump({"sources": [{
        "name": SOURCE, "dsn_env": "PGBD_E2E_DSN", "target": str(root / "target"),
        "restore_url_env": "PGBD_E2E_RESTORE", "schedule": "0 3 * * *",
    }]}))
    env = {**os.environ, "DAGSTER_HOME": str(home), "PG_BACKUP_CONFIG": str(root / "sources.yaml"),
           "PGBD_E2E_DSN": sample_dsn, "PGBD_E2E_RESTORE": pg18.dsn()}
    env.pop("PG_BACKUP_WEBHOOK_URL", None)
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
    launched = service.graphql(LAUNCH, params={
        "selector": {**repo, "jobName": f"backup_{SOURCE}"}, "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    })["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = service.graphql(RUN, id=run_id)["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", (status, (service.root / "daemon.log").read_text()[-3000:])
    return key, run_id


def asset(service, name: str, partition: str) -> dict:
    return service.graphql(ASSET, key={"path": [SOURCE, name]}, partition=partition)["assetNodeOrError"]


def test_backup_now_through_graphql_materializes_every_tier(service, backup_now):
    key, run_id = backup_now
    for name in ("roles_sql", "full_dump", "schema_dumps", "table_dumps", "backup_manifest"):
        node = asset(service, name, key)
        assert key in node["partitionKeys"]
        [materialization] = node["assetMaterializations"]
        assert materialization["partition"] == key and materialization["runId"] == run_id
    labels = {m["label"] for m in asset(service, "backup_manifest", key)["assetMaterializations"][0]["metadataEntries"]}
    assert {"location", "summary", "total_bytes"} <= labels


def test_check_results_read_back_through_graphql(service, backup_now):
    key, run_id = backup_now
    checks = {}
    for name in ("roles_sql", "full_dump", "schema_dumps", "table_dumps"):
        for check in asset(service, name, key)["assetChecksOrError"]["checks"]:
            checks[check["name"]] = check["executionForLatestMaterialization"]
    assert set(checks) == {"full_dump_restores", "schema_dumps_complete", "table_dumps_restore", "roles_sql_loadable"}
    for name, execution in checks.items():
        assert execution["status"] == "SUCCEEDED" and execution["runId"] == run_id, (name, execution)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian chromium/chromium-driver not installed (apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1000",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = driver.find_element("tag name", "body").text
        if all(t in body for t in texts):
            return body
        time.sleep(0.5)
    raise AssertionError(f"{texts} not on {driver.current_url}; page shows: {body[:1500]}")


def test_browser_shows_asset_graph_and_check_results(service, backup_now, browser, tmp_path):
    browser.get(f"{service.url}/asset-groups/{SOURCE}")
    wait_for_text(browser, ["roles_sql", "full_dump", "schema_dumps", "table_dumps", "backup_manifest"])
    browser.save_screenshot(str(tmp_path / "asset_graph.png"))
    browser.get(f"{service.url}/assets/{SOURCE}/full_dump?view=checks")
    wait_for_text(browser, ["full_dump_restores"])
    browser.save_screenshot(str(tmp_path / "full_dump_checks.png"))
    assert (tmp_path / "asset_graph.png").stat().st_size > 10_000
    assert (tmp_path / "full_dump_checks.png").stat().st_size > 10_000
