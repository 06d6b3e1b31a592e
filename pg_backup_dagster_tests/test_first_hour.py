"""A newcomer's first hour, through the real CLI: the demo, then every command it prints, run as printed; the
mistakes a newcomer makes (a missing database, a restore run twice, a typo in an id or a path) each answered
with the next step; and `status` telling monitoring the truth."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from typer.main import get_command

from pg_backup_dagster.cli import app
from pg_backup_dagster.cli.app import COMMANDS_HELP
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.defs.run import open_instance, run_backup
from pg_backup_dagster_tests.helpers import create_database, table_fingerprints

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER_URL = "postgresql://USER@HOST/DB"


def shell(command: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess[str]:
    """A command line as a person types it: bash, the venv's programs first on PATH, no PG* or DAGSTER_HOME
    inherited from the test run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DAGSTER_HOME"))}
    base["PATH"] = f"{Path(sys.executable).parent}:{base.get('PATH', '/usr/bin:/bin')}"
    return subprocess.run(["bash", "-c", command], cwd=cwd, env={**base, **env}, capture_output=True, text=True,
                          timeout=600, check=False)


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line of a failed command (asserts there is exactly one line and a non-zero exit)."""
    assert result.returncode != 0, result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@dataclass
class Demo:
    """One `pg-backup-dagster demo` run: its folder, what it printed, its backup id and its config."""

    directory: Path
    output: str
    errors: str
    backup_id: str

    @property
    def env(self) -> dict[str, str]:
        return {"PG_BACKUP_CONFIG": str(self.directory / "config.yaml")}

    @property
    def folder(self) -> Path:
        return self.directory / "backups" / "demo" / self.backup_id

    def hints(self) -> list[str]:
        """The commands the demo printed after "Next:" that use this tool (the UI one is checked elsewhere)."""
        after = self.output.split("\nNext:\n", 1)[1]
        return [line.strip() for line in after.splitlines() if "pg-backup-dagster " in line and "=" in line]


@pytest.fixture(scope="module")
def demo() -> Iterator[Demo]:
    """The demo, run as the README says, in a folder outside pytest's tree (its server user must enter it)."""
    directory = Path(tempfile.mkdtemp(prefix="pgbd-first-hour-"))
    try:
        result = shell(f"pg-backup-dagster demo --dir {directory}")
        assert result.returncode == 0, result.stdout + result.stderr
        match = re.search(r"^backup (\S+) of source 'demo': OK", result.stdout, flags=re.M)
        assert match, result.stdout
        yield Demo(directory, result.stdout, result.stderr, match.group(1))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_the_demo_hints_work_as_printed(demo, pg18, sample_dsn):
    hints = demo.hints()
    assert [re.search(r"pg-backup-dagster (\w+)", h).group(1) for h in hints] == ["list", "verify", "restore"]
    target = f"first_hour_{os.getpid()}"
    for hint in hints:
        command = hint.replace(PLACEHOLDER_URL, pg18.dsn(target, with_password=False))
        result = shell(command, cwd=demo.directory, PGPASSWORD=pg18.password)
        assert result.returncode == 0, f"{hint}\n{result.stdout}{result.stderr}"
    counts = {table: rows for table, (rows, _) in table_fingerprints(sample_dsn).items()}  # audit.log holds now()
    assert {table: rows for table, (rows, _) in table_fingerprints(pg18.dsn(target)).items()} == counts
    listed = shell("pg-backup-dagster list", **demo.env).stdout
    assert demo.backup_id in listed and "by verify" in listed, listed
    assert not (demo.directory / "backups" / "demo" / ".staging").exists(), "an empty .staging was left behind"


def test_progress_is_live_on_a_terminal_and_silent_in_a_pipe(demo, sample_dsn, pg18, tmp_path, monkeypatch):
    assert demo.errors == "", "the demo's stderr is a pipe here: no progress lines"
    monkeypatch.setenv("PGBD_TEST_PROGRESS_DSN", sample_dsn)
    monkeypatch.setenv("PGBD_TEST_PROGRESS_RESTORE_URL", pg18.dsn())
    source = SourceConfig(name="progress", dsn_env="PGBD_TEST_PROGRESS_DSN", target=str(tmp_path / "target"),
                          restore_url_env="PGBD_TEST_PROGRESS_RESTORE_URL")
    lines: list[str] = []
    with dg.instance_for_test() as instance:
        outcome = run_backup(source, [source], instance, on_progress=lines.append)
        steps = {event.step_key for event in instance.all_logs(outcome.run_id) if event.step_key}
    assert outcome.success, outcome.errors
    assert sorted(line.split()[0] for line in lines if line.endswith(" started")) == sorted(steps)
    assert {line.split()[0] for line in lines if " done (" in line} == steps
    stored = [re.fullmatch(r"  \S+backup_manifest stored (\d+)/(\d+) files", line) for line in lines]
    done = [(int(m.group(1)), int(m.group(2))) for m in stored if m]
    assert done and done[-1][0] == done[-1][1] and len(done) <= 11, lines  # every tenth of the files, then all
    # each step's end comes after its start: the lines arrive as the run goes, not as a summary
    assert all(lines.index(f"  {step} started") < next(i for i, line in enumerate(lines)
                                                       if line.startswith(f"  {step} done")) for step in steps)


def test_every_output_counts_the_tables_alike(demo, sample_dsn):
    """The sample has 14 tables holding rows and 1 partitioned parent: every output says so the same way."""
    holding_rows = len(table_fingerprints(sample_dsn))
    outputs = {
        "demo": demo.output,
        "list": shell("pg-backup-dagster list", **demo.env).stdout,
        "RESTORE.md": (demo.folder / "RESTORE.md").read_text(),
        "status": shell("pg-backup-dagster status", **demo.env).stdout,
    }
    for name, text in outputs.items():
        counts = {int(n) for n in re.findall(r"(\d+) tables\b", text)}
        assert counts == {holding_rows}, (name, counts)
    for name in ("list", "RESTORE.md", "status"):
        assert f"{holding_rows} tables + 1 partitioned parent" in outputs[name], name
    manifest = json.loads((demo.folder / "manifest.json").read_text())
    assert len(manifest["tables"]) == manifest["checks"]["table_dumps_restore"]["tables"] == holding_rows


def test_restore_doc_names_the_tools_and_how_to_get_them(demo):
    doc = (demo.folder / "RESTORE.md").read_text()
    major = int(re.search(r"pg_restore and psql of version (\d+) or newer", doc).group(1))
    assert major == int(json.loads((demo.folder / "manifest.json").read_text())["pg_dump_version"].split(".")[0])
    line = next(line.split("#")[0].strip() for line in doc.splitlines() if "pg-backup-dagster tools" in line)
    result = shell(f"{line}; pg_restore --version", cwd=demo.folder)
    assert result.returncode == 0, result.stderr
    assert int(re.search(r"\(PostgreSQL\) (\d+)", result.stdout).group(1)) >= major


def test_restore_mistakes_name_the_next_step(demo, pg18):
    restore = f"PG_BACKUP_RESTORE_TO={{url}} pg-backup-dagster restore {demo.backup_id}"
    missing = pg18.dsn(f"missing_{os.getpid()}", with_password=False)
    line = error_line(shell(restore.format(url=missing), PGPASSWORD=pg18.password, **demo.env))
    assert "does not exist" in line and "--create-db" in line, line

    existing = create_database(pg18, "first_hour_twice").replace(f":{pg18.password}@", "@")
    assert shell(restore.format(url=existing), PGPASSWORD=pg18.password, **demo.env).returncode == 0
    line = error_line(shell(restore.format(url=existing), PGPASSWORD=pg18.password, **demo.env))
    assert "already holds" in line and "--clean" in line, line
    line = error_line(shell(restore.format(url=existing) + " --create-db", PGPASSWORD=pg18.password, **demo.env))
    assert "already exists" in line and "without --create-db" in line, line
    line = error_line(shell(restore.format(url=existing) + " --table shop.orders", PGPASSWORD=pg18.password,
                            **demo.env))
    assert 'already has table(s) "shop"."orders"' in line and "Drop or rename them" in line, line

    line = error_line(shell("pg-backup-dagster verify 2020-01-01T00-00-00Z", **demo.env))
    assert "no backup '2020-01-01T00-00-00Z'" in line and "pg-backup-dagster list" in line, line


@pytest.mark.parametrize("command", ["list", "verify latest", "status", "restore latest --to postgresql://u@h/d"])
def test_read_only_commands_never_create_the_target(command, tmp_path):
    typo = tmp_path / "bakcups" / "deep" / "x"
    result = shell(f"pg-backup-dagster {command}", PG_BACKUP_TARGET=str(typo), DAGSTER_HOME=str(tmp_path / "home"))
    # status reports every source in its block (on stdout, for monitoring); the others end on one error line
    line = result.stdout.splitlines()[0] if command == "status" else error_line(result)
    assert result.returncode != 0 and f"no backup target at {typo} (no such folder" in line, line
    assert not (tmp_path / "bakcups").exists() and not (tmp_path / "home").exists()


def test_a_failing_verify_never_says_the_files_match(demo, tmp_path):
    copy = tmp_path / "backups"
    shutil.copytree(demo.directory / "backups", copy, symlinks=True)
    victim = copy / "demo" / demo.backup_id / "roles.sql"
    victim.write_text(victim.read_text() + "-- changed\n")
    config = tmp_path / "config.yaml"
    config.write_text((demo.directory / "config.yaml").read_text().replace(str(demo.directory / "backups"), str(copy)))
    result = shell(f"pg-backup-dagster verify {demo.backup_id}", PG_BACKUP_CONFIG=str(config))
    assert result.returncode == 1
    assert "match the manifest" not in result.stdout + result.stderr
    assert "BAD roles.sql" in result.stderr


def test_status_tells_monitoring_the_truth(demo, tmp_path):
    home = {"DAGSTER_HOME": str(demo.directory / "dagster_home"), **demo.env}
    ok = shell("pg-backup-dagster status --max-age 3650d", **home)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("source 'demo' at ") and ": OK" in ok.stdout.splitlines()[0]
    for label in ("latest backup", "checks", "last verified", "last run", "next run", "retention"):
        assert f"\n  {label}" in ok.stdout, label
    assert f"{demo.backup_id} SUCCESS" in ok.stdout

    # The same backup under an id from 2020 (its manifest says so): older than any --max-age below.
    old_id = "2020-01-01T00-00-00Z"
    copy = tmp_path / "backups" / "demo" / old_id
    shutil.copytree(demo.folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest.update(backup_id=old_id, started_at="2020-01-01T00:00:00+00:00", finished_at="2020-01-01T00:05:00+00:00")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    env = {"PG_BACKUP_TARGET": str(tmp_path / "backups"), "PG_BACKUP_SOURCE": "demo", "PG_BACKUP_SCHEDULE": "off",
           "DAGSTER_HOME": str(tmp_path / "no_home")}
    stale = shell("pg-backup-dagster status --max-age 30d --json", **env)
    assert stale.returncode == 1
    found = json.loads(stale.stdout)
    assert found["verdict"] == "STALE" and "more than 30 d" in found["problem"], found
    assert not (tmp_path / "no_home").exists(), "status never creates a Dagster instance"

    (tmp_path / "empty").mkdir()
    empty = shell("pg-backup-dagster status", **{**env, "PG_BACKUP_TARGET": str(tmp_path / "empty")})
    assert empty.returncode == 1 and "NO BACKUP" in empty.stdout.splitlines()[0]


def test_status_fails_when_the_newest_backup_run_failed(demo, pg18, tmp_path, monkeypatch):
    """A failed run publishes nothing, so only the instance knows: status reads it and says FAILED."""
    shutil.copytree(demo.directory / "backups", tmp_path / "backups", symlinks=True)
    monkeypatch.setenv("PGBD_TEST_GONE_DSN", pg18.dsn("no_such_database"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    source = SourceConfig(name="demo", dsn_env="PGBD_TEST_GONE_DSN", target=str(tmp_path / "backups"))
    with open_instance(tmp_path / "home") as instance:
        assert not run_backup(source, [source], instance).success
    env = {"PG_BACKUP_TARGET": str(tmp_path / "backups"), "PG_BACKUP_SOURCE": "demo", "PG_BACKUP_SCHEDULE": "off",
           "DAGSTER_HOME": str(tmp_path / "home")}
    result = shell("pg-backup-dagster status --max-age 3650d", **env)
    assert result.returncode == 1
    assert "FAILED (the newest backup run" in result.stdout.splitlines()[0] and "FAILURE" in result.stdout, result.stdout


def test_help_and_readme_name_every_command():
    names = set(get_command(app).commands)
    listed = re.search(r"through Dagster: (.*)\.$", COMMANDS_HELP).group(1).split(", ")
    assert sorted(listed) == sorted(names)
    help_text = shell("pg-backup-dagster --help").stdout
    assert all(re.search(rf"^  {name}\s", help_text, flags=re.M) for name in names), help_text
    readme = (REPO / "README.md").read_text()
    assert [name for name in names if f"pg-backup-dagster {name}" not in readme] == []
