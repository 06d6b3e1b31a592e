"""`python -m benchmarks.run [--quick] [--out DIR]`: measure the tiers against bare pg_dump in one run.

Generates two databases on a throwaway PostgreSQL 18 server (the default shape and a many-table variant),
measures every approach on each side by side, prints the ratio table with the issue's targets, and writes
results.json and scaling.png into DIR. See benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg

from benchmarks import baselines, ours
from benchmarks.dataset import DatasetSpec, create_dataset, schema_name, table_name
from benchmarks.report import draw_plot, format_table, ratios, write_json
from benchmarks.s3_distance import distant_s3
from pg_backup_dagster.defs.run import open_instance
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.pg.tools import PgTools, find_tools

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny databases (smoke run, seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory (default: %(default)s)")
    parser.add_argument("--repeats", type=int, help="rounds of the compared measurements, fastest kept (default 2)")
    parser.add_argument("--shape", type=_shape, help="main database as SCHEMASxTABLESxROWS (default 10x50x2000)")
    parser.add_argument("--large-shape", type=_shape, help="many-table variant (default 50x100x200)")
    return parser.parse_args(argv)


def _shape(text: str) -> tuple[int, int, int]:
    try:
        schemas, tables, rows = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not SCHEMASxTABLESxROWS") from None
    return schemas, tables, rows


def dataset_specs(args: argparse.Namespace) -> tuple[DatasetSpec, DatasetSpec]:
    main = args.shape or ((2, 5, 100) if args.quick else (10, 50, 2000))
    large = args.large_shape or ((2, 25, 20) if args.quick else (50, 100, 200))
    return DatasetSpec("bench_main", *main), DatasetSpec("bench_large", *large)


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


def database_mb(dsn: str) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return round(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 2**20, 1)


def measure_dataset(
    spec: DatasetSpec,
    *,
    source_server,
    restore_server,
    tools: PgTools,
    instance: dg.DagsterInstance,
    work: Path,
    with_baselines: bool,
    repeats: int,
) -> tuple[dict, dict]:
    """Every measurement on one generated database; returns (dataset info, measurements)."""
    started = time.monotonic()
    dsn = create_dataset(source_server.dsn(), source_server.dsn, spec)
    info = {
        **spec.describe(),
        "db_mb": database_mb(dsn),
        "generate_seconds": round(time.monotonic() - started, 1),
        "load_average_before": os.getloadavg(),
    }
    log(f"{spec.name}: {spec.tables} tables, {info['total_rows']} rows, {info['db_mb']} MB")
    work.mkdir(parents=True)
    archive = work / "full.dump"
    source = ours.bench_source(work / "target")
    schemas = [schema_name(i) for i in range(spec.schemas)]
    workers = max(1, source.max_connections - 1)
    expected = ours.expected_counts(dsn)  # the counts every restore check compares with (a static database)

    def bare_dump() -> dict:
        return {**baselines.bare_dump(tools, dsn, archive).as_dict(), "bytes": archive.stat().st_size}

    def job_checks_off() -> dict:
        try:
            return ours.run_job(source, dsn, instance, checks=False).as_dict()
        finally:
            shutil.rmtree(work / "target", ignore_errors=True)

    def split() -> dict:
        try:
            return ours.split_only(tools, dsn, archive, work / "split")
        finally:
            shutil.rmtree(work / "split", ignore_errors=True)

    def schema_dumps() -> dict:
        try:
            return ours.schema_dumps_alone(tools, dsn, schemas, work / "schemas", workers)
        finally:
            shutil.rmtree(work / "schemas", ignore_errors=True)

    # Ours and bare alternate inside each round, so both see the same background load; the fastest round counts.
    measurements = {
        "bare_pg_dump": bare_dump,
        "job_checks_off": job_checks_off,
        "bare_pg_restore": lambda: baselines.bare_restore(
            tools, archive, restore_server.dsn(), restore_server.dsn("bare_restore"), source.restore_jobs
        ).as_dict(),
        "restore_check_ephemeral": lambda: ours.restore_check(
            tools, archive, expected, None, source.restore_jobs, dsn
        ),
        "restore_check_server": lambda: ours.restore_check(
            tools, archive, expected, restore_server.dsn(), source.restore_jobs, dsn
        ),
        "restore_check_server_counts_only": lambda: ours.restore_check(
            tools, archive, expected, restore_server.dsn(), source.restore_jobs, None
        ),
        "split": split,
        "schema_dumps_alone": schema_dumps,
    }
    rounds: dict[str, list[dict]] = {name: [] for name in measurements}
    for round_no in range(repeats):
        order = list(measurements) if round_no % 2 == 0 else list(reversed(measurements))  # no fixed first place
        for name in order:
            baselines.checkpoint(source_server.dsn(), restore_server.dsn())
            rounds[name].append(measurements[name]())
        log(f"  round {round_no + 1}: " + ", ".join(f"{n} {r[-1]['seconds']:.1f}s" for n, r in rounds.items()))
    results: dict = {}
    for name, runs in rounds.items():
        results[name] = {**min(runs, key=lambda r: r["seconds"]), "rounds_seconds": [r["seconds"] for r in runs]}
    results.update(at_a_distance(spec, source, dsn, instance, work, restore_server))
    shutil.rmtree(work / "target", ignore_errors=True)
    if with_baselines:
        tables = [(s, table_name(j)) for s in schemas for j in range(spec.tables_per_schema)]
        results["per_object"] = baselines.per_object_dump(tools, dsn, schemas, tables, work / "per_object").as_dict()
        shutil.rmtree(work / "per_object")
        log(
            f"  per-object baseline ({len(schemas) + 2 * len(tables)} pg_dumps, "
            f"{baselines.PER_OBJECT_WORKERS} at a time): {results['per_object']['seconds']:.1f}s"
        )
        results["compression"] = baselines.compression_choices(tools, dsn, work)
        log(f"  compression: {results['compression']}")
    info["load_average_after"] = os.getloadavg()
    with psycopg.connect(source_server.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {spec.name} WITH (FORCE)")
    shutil.rmtree(work)
    return info, results


def at_a_distance(spec: DatasetSpec, source, dsn: str, instance: dg.DagsterInstance, work: Path,
                  restore_server) -> dict:
    """The CLI's backup with its checks, to a local folder and to S3 at 20 ms per request (moto behind the latency
    proxy), then `restore latest` of each into a fresh database on the restore server: run once each."""
    results: dict = {}
    with distant_s3(work) as s3:
        s3_source = ours.bench_source(s3.target(spec.name))
        for name, target_source in (("job_checks_on", source), ("job_checks_on_s3", s3_source)):
            before, cpu_before = s3.requests, s3.server_cpu_seconds()
            run = ours.run_job(target_source, dsn, instance, checks=True)
            server_cpu = round(s3.server_cpu_seconds() - cpu_before, 1)
            results[name] = {**run.as_dict(), "s3_requests": s3.requests - before, "s3_server_cpu_seconds": server_cpu}
            log(f"  {name}: {run.sample.seconds:.1f}s, peak memory {run.sample.peak_pss_mb:.0f} MB PSS, "
                f"{s3.requests - before} S3 requests (moto + proxy CPU {server_cpu}s), success={run.success} "
                f"{'; '.join(run.errors)}")
        for name, target_source in (("restore_local", source), ("restore_s3", s3_source)):
            before = s3.requests
            database = f"{spec.name}_{name}"
            results[name] = {**ours.restore_published(target_source, restore_server.dsn(database)),
                             "s3_requests": s3.requests - before}
            with psycopg.connect(restore_server.dsn(), autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {database}")
            log(f"  {name}: {results[name]['seconds']:.1f}s")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    main_spec, large_spec = dataset_specs(args)
    tools = find_tools()
    started = time.monotonic()
    results: dict = {
        "meta": {
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "quick": args.quick,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "pg_dump": tools.version,
            "dagster": dg.__version__,
            "checks_off_method": "a job over the same asset definitions selecting the four tier assets "
            "without their checks (no manifest: publish refuses an unchecked backup)",
        },
        "datasets": {},
        "measurements": {},
    }
    with tempfile.TemporaryDirectory(prefix="pgbd-bench-") as tmp:
        instance = open_instance(Path(tmp) / "dagster_home")
        with ephemeral_server(Path(tmp)) as source_server, ephemeral_server(Path(tmp)) as restore_server:
            for label, spec, with_baselines in (("main", main_spec, True), ("large", large_spec, False)):
                info, measured = measure_dataset(
                    spec,
                    source_server=source_server,
                    restore_server=restore_server,
                    tools=tools,
                    instance=instance,
                    work=Path(tmp) / label,
                    with_baselines=with_baselines,
                    repeats=args.repeats or (1 if args.quick else 2),
                )
                results["datasets"][label], results["measurements"][label] = info, measured
        instance.dispose()
    results["meta"]["total_seconds"] = round(time.monotonic() - started, 1)
    rows = ratios(results)
    print()
    print(format_table(rows))
    write_json(results, rows, args.out / "results.json")
    draw_plot(results, args.out / "scaling.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'scaling.png'} in {results['meta']['total_seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
