"""What proving rows by content costs the restore check: content hashes + amcheck against counts only.

    python -m benchmarks.content_cost                      # 10×50×2,000: 500 tables, 1 M rows (≈3 min on 2 cores)
    python -m benchmarks.content_cost --shape 2x5x100      # a smoke run

One generated database (benchmarks/dataset.py), one `pg_dump -Fc` of it, then `restore_and_compare` on a restore
server alternately with and without content comparison (each after a CHECKPOINT), `--repeats` rounds, the
fastest of each kept. Prints the ratio (goal: ≤ 1.15×); never asserted anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import baselines, ours
from benchmarks.dataset import DatasetSpec, create_dataset
from benchmarks.run import _shape
from pg_backup_dagster.pg.local_server import ephemeral_server
from pg_backup_dagster.pg.tools import find_tools

GOAL = 1.15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=_shape, default=(10, 50, 2000), help="schemas x tables x rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    tools = find_tools()
    spec = DatasetSpec("content_cost", *args.shape)
    with tempfile.TemporaryDirectory(prefix="pgbd-content-") as tmp, \
            ephemeral_server(Path(tmp)) as source, ephemeral_server(Path(tmp)) as restore:
        dsn = create_dataset(source.dsn(), source.dsn, spec)
        archive = Path(tmp) / "full.dump"
        baselines.bare_dump(tools, dsn, archive)
        expected = ours.expected_counts(dsn)
        runs: dict[str, list[dict]] = {"counts only": [], "content + amcheck": []}
        for round_no in range(args.repeats):
            order = list(runs) if round_no % 2 == 0 else list(reversed(runs))
            for name in order:
                baselines.checkpoint(source.dsn(), restore.dsn())
                with_content = dsn if name == "content + amcheck" else None
                runs[name].append(ours.restore_check(tools, archive, expected, restore.dsn(), args.jobs, with_content))
    best = {name: min(r, key=lambda run: run["seconds"]) for name, r in runs.items()}
    for name, run in best.items():
        rounds = ", ".join(f"{r['seconds']:.2f}" for r in runs[name])
        print(f"{name:<18} {run['seconds']:7.2f}s  (rounds {rounds}; passed={run['passed']}, identical in content {run['tables_content_identical']}/{run['tables_checked']}, "
              f"indexes amchecked {run['indexes_amchecked']})")
    ratio = best["content + amcheck"]["seconds"] / best["counts only"]["seconds"]
    print(f"{spec.tables} tables, {spec.tables * spec.rows} rows: content + amcheck / counts only = {ratio:.2f}× "
          f"(goal ≤ {GOAL}×: {'met' if ratio <= GOAL else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
