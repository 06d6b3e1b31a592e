"""Turn measurements into the ratio table with the issue's targets, the results JSON, and the scaling plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

MEMORY_LIMIT_MB = 300.0


@dataclass
class Ratio:
    """One row of the table: ours / bare (or bare / ours for 'faster than'), its target, and whether it is met."""

    name: str
    ours: float
    baseline: float
    ratio: float
    target: str
    met: bool | None  # None: informational, no target


def _row(name: str, ours: float, baseline: float, limit: float | None, at_least: bool = False) -> Ratio:
    ratio = (baseline / ours if at_least else ours / baseline) if ours and baseline else float("nan")
    if limit is None:
        return Ratio(name, ours, baseline, ratio, "-", None)
    met = ratio >= limit if at_least else ratio <= limit
    return Ratio(name, ours, baseline, ratio, f"{'≥' if at_least else '≤'} {limit:g}×", met)


def ratios(results: dict) -> list[Ratio]:
    """The issue's targets, computed from one run's measurements."""
    small, large = results["datasets"]["main"], results["datasets"]["large"]
    m, lg = results["measurements"]["main"], results["measurements"]["large"]
    n_small, n_large = small["tables"], large["tables"]
    scale_limit = round(1.2 * n_large / n_small, 2)  # 12× for 10× the tables: linear with 20% slack
    rows = []
    for meas, n in ((m, n_small), (lg, n_large)):
        dump = meas["bare_pg_dump"]["seconds"]
        rows.append(
            _row(f"all tiers, checks off / bare pg_dump -Fc ({n} tables)", meas["job_checks_off"]["seconds"], dump, 1.5)
        )
        bare_both = dump + meas["bare_pg_restore"]["seconds"]
        rows.append(
            _row(
                f"CLI backup with checks / (bare pg_dump -Fc + bare pg_restore -j2) ({n} tables)",
                meas["job_checks_on"]["seconds"],
                bare_both,
                1.5 if n == n_small else 2.0,
            )
        )
        rows.append(
            _row(
                f"CLI backup with checks, S3 at 20 ms / local folder ({n} tables)",
                meas["job_checks_on_s3"]["seconds"],
                meas["job_checks_on"]["seconds"],
                1.3 if n == n_small else 1.5,
            )
        )
        rows.append(
            _row(
                f"restore latest, S3 at 20 ms / local folder ({n} tables)",
                meas["restore_s3"]["seconds"],
                meas["restore_local"]["seconds"],
                1.3,
            )
        )
        restore = meas["bare_pg_restore"]["seconds"]
        rows.append(
            _row(
                f"restore check (ephemeral server) / bare pg_restore ({n} tables)",
                meas["restore_check_ephemeral"]["seconds"],
                restore,
                1.3,
            )
        )
        rows.append(
            _row(
                f"restore check (restore server) / bare pg_restore ({n} tables)",
                meas["restore_check_server"]["seconds"],
                restore,
                1.3,
            )
        )
        rows.append(
            _row(
                f"restore check, content hashes + amcheck / counts only ({n} tables)",
                meas["restore_check_server"]["seconds"],
                meas["restore_check_server_counts_only"]["seconds"],
                1.15,
            )
        )
        rows.append(
            _row(f"per-table split alone / bare pg_dump -Fc ({n} tables)", meas["split"]["seconds"], dump, None)
        )
    rows.append(
        _row(
            f"per-object baseline / all tiers, checks off ({n_small} tables)",
            m["job_checks_off"]["seconds"],
            m["per_object"]["seconds"],
            10,
            at_least=True,
        )
    )
    rows.append(
        _row(
            f"per-table split: {n_large} / {n_small} tables", lg["split"]["seconds"], m["split"]["seconds"], scale_limit
        )
    )
    rows.append(
        _row(
            f"all tiers, checks off: {n_large} / {n_small} tables",
            lg["job_checks_off"]["seconds"],
            m["job_checks_off"]["seconds"],
            None,
        )
    )
    for label, meas, n in (("main", m, n_small), ("large", lg, n_large)):
        job = meas["job_checks_on"]
        size = f"{n} tables, {results['datasets'][label]['db_mb']} MB db"
        rows.append(
            Ratio(
                f"peak memory MB (PSS of process tree), job with checks ({size})",
                job["peak_pss_mb"],
                MEMORY_LIMIT_MB,
                job["peak_pss_mb"] / MEMORY_LIMIT_MB,
                f"≤ {MEMORY_LIMIT_MB:g} MB",
                job["peak_pss_mb"] <= MEMORY_LIMIT_MB,
            )
        )
        rows.append(
            Ratio(
                f"peak memory MB (RSS summed, forks double-counted), same run ({size})",
                job["peak_rss_mb"],
                MEMORY_LIMIT_MB,
                job["peak_rss_mb"] / MEMORY_LIMIT_MB,
                "-",
                None,
            )
        )
    return rows


def format_table(rows: list[Ratio]) -> str:
    width = max(len(r.name) for r in rows)
    lines = [
        f"{'measurement':<{width}}  {'ours':>9}  {'baseline':>9}  {'ratio':>7}  {'target':>9}  met",
        "-" * (width + 48),
    ]
    for r in rows:
        met = "-" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.name:<{width}}  {r.ours:>9.2f}  {r.baseline:>9.2f}  {r.ratio:>6.2f}×  {r.target:>9}  {met}")
    return "\n".join(lines)


def write_json(results: dict, rows: list[Ratio], path: Path) -> None:
    path.write_text(json.dumps({**results, "ratios": [asdict(r) for r in rows]}, indent=2, default=str) + "\n")


PLOT_SERIES = (
    ("bare pg_dump -Fc", "bare_pg_dump"),
    ("bare pg_restore", "bare_pg_restore"),
    ("all tiers, checks off", "job_checks_off"),
    ("all tiers + checks + publish", "job_checks_on"),
    ("per-table split alone", "split"),
    ("restore check", "restore_check_ephemeral"),
    ("per-object pg_dump baseline", "per_object"),
)


def draw_plot(results: dict, path: Path) -> None:
    """Seconds against number of tables, one line per approach (log-log: linear cost is a 45° line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for label, key in PLOT_SERIES:
        points = sorted(
            (results["datasets"][name]["tables"], meas[key]["seconds"])
            for name, meas in results["measurements"].items()
            if key in meas
        )
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tables in the database")
    ax.set_ylabel("seconds (wall clock)")
    ax.set_title("Backup cost against number of tables (one run, same machine)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
