"""What proving rows by content costs the restore check: content hashes + amcheck against counts only.

    python -m benchmarks.content_cost                      # 10×50×2,000: 500 tables, 1 M rows (≈3 min on 2 cores)
    python -m benchmarks.content_cost --shape 2x5x100      # a smoke run

One generated database (benchmarks/dataset.py), one `pg_dump -Fc` of it, then `restore_and_compare` on a restore
server: counts only (the check before issue 17), with content hashes, with content hashes and amcheck (as the check
runs it: structure and order, beside the COPYs), and the same with heapallindexed on (`amcheck_heapallindexed`), in
turn (each after a CHECKPOINT), `--repeats` rounds, the fastest of each kept. Prints the ratios to counts only
(goal for content hashes + amcheck: ≤ 1.15×); never asserted anywhere.
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

GOAL = 1.15  # for the checks issue 17 added, as the full check runs them (content hashes + amcheck)
COUNTS, CONTENT, ALL, HEAP = "counts only", "content hashes", "content + amcheck", "... + heapallindexed"


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
        variants = {  # name -> (source dsn for content hashes, amcheck, heapallindexed)
            COUNTS: (None, False, False), CONTENT: (dsn, False, False), ALL: (dsn, True, False), HEAP: (dsn, True, True),
        }
        runs: dict[str, list[dict]] = {name: [] for name in variants}
        for round_no in range(args.repeats):
            order = list(runs) if round_no % 2 == 0 else list(reversed(runs))
            for name in order:
                baselines.checkpoint(source.dsn(), restore.dsn())
                content_dsn, amcheck, heap = variants[name]
                runs[name].append(ours.restore_check(tools, archive, expected, restore.dsn(), args.jobs, content_dsn,
                                                     amcheck, heap))
    best = {name: min(r, key=lambda run: run["seconds"]) for name, r in runs.items()}
    for name, run in best.items():
        rounds = ", ".join(f"{r['seconds']:.2f}" for r in runs[name])
        after = ", ".join(f"{r['seconds'] - r['pg_restore_seconds']:.2f}" for r in runs[name])
        print(f"{name:<20} {run['seconds']:7.2f}s  (rounds {rounds}; after the restore {after}; "
              f"passed={run['passed']}, identical in content "
              f"{run['tables_content_identical']}/{run['tables_checked']}, indexes amchecked {run['indexes_amchecked']}, "
              f"heapallindexed {run['indexes_heapallindexed']})")
    base = best[COUNTS]["seconds"]
    # every variant runs the same restore, whose own spread (seconds between rounds) hides the checks' cost in the
    # totals: the part after the restore, fastest of the rounds, against the fastest counts-only total
    after = {name: min(r["seconds"] - r["pg_restore_seconds"] for r in rounds) for name, rounds in runs.items()}
    for name in (CONTENT, ALL, HEAP):
        added = after[name] - after[COUNTS]
        print(f"after the restore: {name} {after[name]:.2f}s against {after[COUNTS]:.2f}s: +{added:.2f}s = "
              f"{added / base:.1%} of counts only's {base:.2f}s")
    for name in (CONTENT, ALL, HEAP):
        ratio = best[name]["seconds"] / base
        goal = f" (goal ≤ {GOAL}×: {'met' if ratio <= GOAL else 'NOT met'})" if name == ALL else ""
        print(f"{spec.tables} tables, {spec.tables * spec.rows} rows: {name} / {COUNTS} = {ratio:.2f}×{goal}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
