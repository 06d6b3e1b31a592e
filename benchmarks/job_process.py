"""`python -m benchmarks.job_process HOME TARGET BACKUP_ID`: one backup job with checks, in a fresh process.

The memory figures come from this process tree alone, as a CLI or a Dagster run worker would have it: the
benchmark's own process, which has generated databases and held earlier results, is not counted. Prints the
outcome as one JSON line. The source DSN comes from the environment (benchmarks.ours.DSN_ENV).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.ours import bench_source, step_seconds
from pg_backup_dagster.defs.run import open_instance, run_backup


def main(argv: list[str]) -> int:
    home, target, backup_id = Path(argv[0]), argv[1], argv[2]
    instance = open_instance(home)
    source = bench_source(target)
    outcome = run_backup(source, [source], instance, backup_id=backup_id, log_level="ERROR")
    print(json.dumps({
        "success": outcome.success,
        "steps": step_seconds(instance, outcome.run_id),
        "checks": {name: passed for name, (passed, _) in outcome.checks.items()},
        "errors": outcome.errors,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
