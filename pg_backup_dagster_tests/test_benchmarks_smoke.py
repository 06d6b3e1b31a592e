"""The benchmark command runs end to end on tiny databases and writes every measurement (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PER_DATASET = (
    "bare_pg_dump",
    "bare_pg_restore",
    "restore_check_ephemeral",
    "restore_check_server",
    "restore_check_server_counts_only",
    "split",
    "schema_dumps_alone",
    "job_checks_off",
    "job_checks_on",
    "job_checks_on_s3",
    "restore_local",
    "restore_s3",
)
MAIN_ONLY = ("per_object", "compression")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return out, result


def test_command_succeeds_and_prints_the_ratio_table(quick_run):
    _, result = quick_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert "per-object baseline / all tiers" in result.stdout
    assert "peak memory MB" in result.stdout


def test_json_holds_every_measurement(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["datasets"]) == {"main", "large"}
    assert results["datasets"]["large"]["tables"] > results["datasets"]["main"]["tables"]
    for name, measurements in results["measurements"].items():
        expected = PER_DATASET + (MAIN_ONLY if name == "main" else ())
        assert set(expected) <= set(measurements), name
        for key in PER_DATASET:
            assert measurements[key]["seconds"] > 0, (name, key)
        for job in ("job_checks_on", "job_checks_on_s3"):
            assert measurements[job]["success"], measurements[job]["errors"]
            assert all(measurements[job]["checks"].values())
        assert measurements["job_checks_on_s3"]["s3_requests"] > measurements["job_checks_on"]["s3_requests"] == 0
        assert measurements["restore_s3"]["s3_requests"] > 0
        assert measurements["job_checks_off"]["success"] and not measurements["job_checks_off"]["checks"]
        assert measurements["restore_check_ephemeral"]["passed"] and measurements["restore_check_server"]["passed"]
        assert measurements["restore_check_server"]["tables_content_identical"] == results["datasets"][name]["tables"]
        assert measurements["restore_check_server_counts_only"]["tables_content_identical"] == 0
        assert measurements["split"]["tables"] == results["datasets"][name]["tables"]
        assert measurements["job_checks_on"]["peak_rss_mb"] > 0
    gzip = results["measurements"]["main"]["compression"]["gzip"]
    assert gzip["supported"] and gzip["bytes"] > 0
    targets = [r for r in results["ratios"] if r["met"] is not None]
    assert len(targets) >= 15 and all(r["ratio"] > 0 for r in targets)


def test_scaling_plot_is_a_png(quick_run):
    out, _ = quick_run
    png = (out / "scaling.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_content_cost_compares_the_check_with_and_without_content():
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.content_cost", "--shape", "2x3x50", "--repeats", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "identical in content 6/6, indexes amchecked 12, heapallindexed 0)" in result.stdout
    assert "identical in content 6/6, indexes amchecked 12, heapallindexed 12)" in result.stdout
    assert "identical in content 6/6, indexes amchecked 0" in result.stdout
    assert "6 tables, 300 rows: content hashes / counts only = " in result.stdout
    assert "6 tables, 300 rows: content + amcheck / counts only = " in result.stdout
    assert "6 tables, 300 rows: ... + heapallindexed / counts only = " in result.stdout
