"""`python -m benchmarks.regress_corpus --pg-src DIR`: PostgreSQL's own regression database as a backup corpus.

Builds the database PostgreSQL's regression suite leaves behind (src/test/regress/sql run in parallel_schedule
order against a scratch PostgreSQL 18 server, as pg_regress and pg_upgrade's test do), backs it up with the
project's CLI and default settings, then restores every table alone (with its inheritance/partition parents)
from the per-table files into a fresh database, and prints what failed. See benchmarks/README.md.

Nothing of PostgreSQL's source is shipped here: pass a source tree (--pg-src) or a git directory (--pg-git).
The tests that load `regress.so` (PostgreSQL's C test module) need it prebuilt for the bundled server
(--regress-lib); without it those statements fail and the database has fewer objects.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.errors import BackupError, one_line
from pg_backup_dagster.pg.conninfo import child_env
from pg_backup_dagster.pg.local_server import LocalPostgres
from pg_backup_dagster.pg.tools import find_tools
from pg_backup_dagster.restore.run import (
    OpenedBackup,
    RestoreRequest,
    restore_backup,
    restore_roles_file,
    table_dumps,
)
from pg_backup_dagster.restore.tables import restore_tables
from pg_backup_dagster.storage import open_storage
from pg_backup_dagster.tiers.table_split import TableDump

REGRESS_SUBDIR = Path("src/test/regress")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "regress_corpus"
SOURCE_NAME = "main"
# pg_regress: CREATE DATABASE … TEMPLATE=template0, then these per-database settings (create_database()).
DATABASE_SETTINGS = {"lc_messages": "C", "lc_monetary": "C", "lc_numeric": "C", "lc_time": "C",
                     "bytea_output": "hex", "timezone_abbreviations": "Default"}
# pg_regress's temp instance appends max_prepared_transactions = 2 (prepared_xacts needs it).
SERVER_SETTINGS = {"max_prepared_transactions": "2", "max_connections": "100"}

COUNT_QUERIES = {
    "schemas": "SELECT count(*) FROM pg_namespace WHERE nspname !~ '^pg_' AND nspname <> 'information_schema'",
    "tables (r, p)": "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                     "WHERE c.relkind IN ('r', 'p') AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
    "partitioned tables": "SELECT count(*) FROM pg_class WHERE relkind = 'p'",
    "partitions": "SELECT count(*) FROM pg_class WHERE relispartition AND relkind IN ('r', 'p', 'f')",
    "inheritance children": "SELECT count(DISTINCT i.inhrelid) FROM pg_inherits i JOIN pg_class c "
                            "ON c.oid = i.inhrelid WHERE NOT c.relispartition AND c.relkind IN ('r', 'p', 'f')",
    "foreign tables": "SELECT count(*) FROM pg_class WHERE relkind = 'f'",
    "unlogged tables": "SELECT count(*) FROM pg_class WHERE relpersistence = 'u' AND relkind IN ('r', 'p')",
    "typed tables": "SELECT count(*) FROM pg_class WHERE reloftype <> 0 AND relkind IN ('r', 'p')",
    "views": "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
             "WHERE c.relkind = 'v' AND n.nspname !~ '^pg_' AND n.nspname <> 'information_schema'",
    "materialized views": "SELECT count(*) FROM pg_class WHERE relkind = 'm'",
    "sequences": "SELECT count(*) FROM pg_class WHERE relkind = 'S'",
    "rules (not _RETURN)": "SELECT count(*) FROM pg_rewrite WHERE rulename <> '_RETURN'",
    "policies": "SELECT count(*) FROM pg_policy",
    "tables with RLS": "SELECT count(*) FROM pg_class WHERE relrowsecurity",
    "triggers (user)": "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal",
    "event triggers": "SELECT count(*) FROM pg_event_trigger",
    "custom access methods": "SELECT count(*) FROM pg_am WHERE oid >= 16384",
    "C functions (user)": "SELECT count(*) FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
                          "WHERE l.lanname = 'c' AND p.oid >= 16384",
    "user functions": "SELECT count(*) FROM pg_proc WHERE oid >= 16384",
    "user types": "SELECT count(*) FROM pg_type WHERE oid >= 16384 AND typtype <> 'c' AND typelem = 0",
    "statistics objects": "SELECT count(*) FROM pg_statistic_ext",
    "publications": "SELECT count(*) FROM pg_publication",
    "large objects": "SELECT count(*) FROM pg_largeobject_metadata",
    "roles (cluster)": "SELECT count(*) FROM pg_roles WHERE rolname !~ '^pg_'",
    "database size (MB)": "SELECT pg_database_size(current_database()) / 1048576",
}


# --- the PostgreSQL sources -----------------------------------------------------------------------


def regress_dir_from(args: argparse.Namespace, work: Path) -> Path:
    """src/test/regress copied under the work dir (the unprivileged server user must read its data files)."""
    dest = work / "regress"
    if (dest / "parallel_schedule").exists():
        return dest
    if args.pg_git:
        rev = args.pg_rev or "HEAD"
        dest.parent.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "--git-dir", str(args.pg_git), "archive", rev, str(REGRESS_SUBDIR)],
                                 capture_output=True, check=True).stdout
        unpack = work / "pg-src"
        unpack.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(unpack)], input=archive, check=True)
        shutil.move(str(unpack / REGRESS_SUBDIR), dest)
        shutil.rmtree(unpack)
        return dest
    if not args.pg_src:
        raise SystemExit("pass --pg-src DIR (a PostgreSQL source tree or its src/test/regress) or --pg-git GITDIR")
    src = Path(args.pg_src).resolve()
    candidates = [src / REGRESS_SUBDIR, src]
    found = next((c for c in candidates if (c / "parallel_schedule").exists() and (c / "sql").is_dir()), None)
    if found is None:
        raise SystemExit(f"no src/test/regress with parallel_schedule and sql/ under {src}")
    shutil.copytree(found, dest, symlinks=False,
                    ignore=shutil.ignore_patterns("results", "tmp_check", "*.o", "*.so", "log"))
    return dest


def parse_schedule(path: Path) -> list[list[str]]:
    """The groups of parallel_schedule, in order (`test: a b c` lines)."""
    groups = []
    for line in path.read_text().splitlines():
        if line.startswith("test:"):
            groups.append(line.split(":", 1)[1].split())
    return groups


def make_world_readable(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)


# --- building the regression database -------------------------------------------------------------


def psql_env(server: LocalPostgres, regress: Path, build: Path, libdir: Path) -> dict[str, str]:
    """What pg_regress sets for its psql children (PGTZ, PGDATESTYLE, the PG_ABS_* paths), over TCP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGHOST="127.0.0.1", PGPORT=str(server.port), PGUSER="postgres", PGPASSWORD=server.password,
               PGTZ="America/Los_Angeles", PGDATESTYLE="Postgres, MDY", PG_ABS_SRCDIR=str(regress),
               PG_ABS_BUILDDIR=str(build), PG_LIBDIR=str(libdir), PG_DLSUFFIX=".so")
    return env


def expected_errors(regress: Path, test: str) -> int | None:
    """ERROR lines in the test's expected output (the smallest over its alternative outputs)."""
    counts = []
    alternative = re.compile(re.escape(test) + r"(_\d+)?\.out")
    for path in sorted(p for p in (regress / "expected").glob(f"{test}*.out") if alternative.fullmatch(p.name)):
        counts.append(sum(1 for ln in path.read_text(errors="replace").splitlines() if ln.startswith("ERROR:")))
    return min(counts) if counts else None


def run_test(psql: str, test: str, regress: Path, logs: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """One test file through `psql -X -a -q -d regression < file`, like pg_regress (ON_ERROR_STOP off)."""
    started = time.monotonic()
    out = logs / f"{test}.out"
    with (regress / "sql" / f"{test}.sql").open("rb") as stdin, out.open("wb") as stdout:
        try:
            code = subprocess.run([psql, "-X", "-a", "-q", "-d", "regression", "-v", "HIDE_TABLEAM=on",
                                   "-v", "HIDE_TOAST_COMPRESSION=on"], stdin=stdin, stdout=stdout,
                                  stderr=subprocess.STDOUT, env={**env, "PGAPPNAME": f"pg_regress/{test}"},
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    lines = out.read_text(errors="replace").splitlines()
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return {"test": test, "exit": code, "seconds": round(time.monotonic() - started, 1), "errors": len(errors),
            "expected_errors": expected_errors(regress, test), "first_errors": errors[:3]}


def build_regression(server: LocalPostgres, regress: Path, work: Path, libdir: Path, parallel: int,
                     timeout: float) -> list[dict[str, Any]]:
    """CREATE DATABASE regression as pg_regress does, then every group of parallel_schedule in order."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE regression TEMPLATE = template0")
        for name, value in DATABASE_SETTINGS.items():
            conn.execute(sql.SQL("ALTER DATABASE regression SET {} TO {}").format(sql.Identifier(name),
                                                                                  sql.Literal(value)))
    build, logs = work / "build", work / "logs"
    (build / "results").mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    for folder in (build, build / "results"):
        os.chmod(folder, 0o777)  # COPY … TO :'abs_builddir/results/…' is written by the server user
    env = psql_env(server, regress, build, libdir)
    psql = find_tools().path("psql")
    results = []
    groups = parse_schedule(regress / "parallel_schedule")
    for number, group in enumerate(groups, 1):
        present = [t for t in group if (regress / "sql" / f"{t}.sql").exists()]
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(parallel, len(present)))) as pool:
            done = list(pool.map(lambda t: run_test(psql, t, regress, logs, env, timeout), present))
        results += done
        extra = [r["test"] for r in done if r["expected_errors"] is not None and r["errors"] > r["expected_errors"]]
        print(f"  group {number:>2}/{len(groups)} ({len(present)} tests, {time.monotonic() - started:5.1f} s)"
              + (f"  more errors than expected: {', '.join(extra)}" if extra else ""), flush=True)
    return results


def count_objects(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return {name: conn.execute(query).fetchone()[0] for name, query in COUNT_QUERIES.items()}


# --- the backup -----------------------------------------------------------------------------------


def run_backup_cli(server: LocalPostgres, work: Path, timeout: float) -> dict[str, Any]:
    """`python -m pg_backup_dagster.cli backup` with the single-source env variables and nothing else set."""
    target, home = work / "backups", work / "dagster_home"
    for folder in (target, home):
        if folder.exists():
            shutil.rmtree(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DAGSTER_", "AWS_"))}
    env.update(PG_BACKUP_DATABASE_URL=server.dsn("regression"), PG_BACKUP_TARGET=str(target),
               DAGSTER_HOME=str(home))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      os.environ.get("PYTHONPATH")]))
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "pg_backup_dagster.cli", "backup"], env=env,
                              capture_output=True, text=True, timeout=timeout)
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code = "timeout"
        stdout = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
    (work / "backup.stdout").write_text(stdout)
    (work / "backup.stderr").write_text(stderr)
    match = re.search(r"^backup (\S+) of source", stdout, re.M)
    backup_id = match.group(1) if match else None
    manifest = target / SOURCE_NAME / backup_id / "manifest.json" if backup_id else None
    return {
        "exit": code, "seconds": round(time.monotonic() - started, 1), "backup_id": backup_id,
        "published": bool(manifest and manifest.exists()),
        "summary": [ln for ln in stdout.splitlines() if ln.strip()][:20],
        "failed_checks": [ln.strip() for ln in stdout.splitlines() if re.match(r"\s+check .* FAILED", ln)],
        "step_errors": [ln.strip() for ln in stderr.splitlines() if ln.strip().startswith("error:")],
        "stderr_tail": [ln for ln in stderr.splitlines() if ln.strip()][-15:],
    }


# --- restoring every table alone ------------------------------------------------------------------


def with_parents(key: tuple[str, str], tables: dict[tuple[str, str], TableDump]) -> list[tuple[str, str]]:
    """The table and every ancestor it needs (partition and inheritance parents), parents first."""
    chain: list[tuple[str, str]] = []

    def visit(k: tuple[str, str], seen: frozenset) -> None:
        if k in seen or k in chain or k not in tables:
            return
        for parent in tables[k].after:
            visit(tuple(parent), seen | {k})  # type: ignore[arg-type]
        chain.append(k)

    visit(key, frozenset())
    return chain


def error_class(message: str, kind: str = "?") -> str:
    """A failure without its names and numbers, prefixed by the kind of file (or statement) it came from."""
    where = re.search(r"failed in (\S+?)(?: line \d+)?:", message)
    if where:
        file = where.group(1)
        kind = file.rsplit("/", 1)[-1] if "/tables/" in file else re.sub(r"^.*/", "", file)
    text = message.split("ERROR:", 1)[1] if "ERROR:" in message else message
    text = re.sub(r'"(?:[^"]|"")*"', '"…"', text)
    text = re.sub(r"\b\d+\b", "N", text)
    text = re.sub(r"\s+LINE N:.*", "", text)
    return f"{kind}: {one_line(text, 160)}"


def load_table_tier(work: Path, backup: dict[str, Any]) -> dict[str, Any] | None:
    """The per-table tier from the published manifest, else from the staging folder of the failed run."""
    storage = open_storage(str(work / "backups"))
    bid = backup["backup_id"]
    if not bid:
        return None
    if backup["published"]:
        folder = work / "backups" / SOURCE_NAME / bid
        manifest = json.loads((folder / "manifest.json").read_text())
        opened = OpenedBackup(SourceConfig(target=str(work / "backups")), storage, bid, manifest)
        objects = {e["schema"]: e["path"] for e in opened.entries("schema_objects")}
        return {"mode": "published", "folder": folder, "tables": table_dumps(opened), "schema_objects": objects}
    folder = storage.staging_dir(SOURCE_NAME, bid)
    state = folder / ".state" / "tables.json"
    if not state.exists():
        return None
    tier = json.loads(state.read_text())
    tables = {(t["schema"], t["table"]): TableDump(t["schema"], t["table"], t["files"], t.get("rows") or 0,
                                                   after=[tuple(p) for p in t.get("after", [])]) for t in tier["tables"]}
    return {"mode": "staging", "folder": folder, "tables": tables, "schema_objects": tier.get("schema_objects") or {}}


def full_archive_errors(tools, archive: Path, dsn: str) -> dict[str, Any]:
    """pg_restore of the full archive with the flags the check uses, but going on past errors: all of them."""
    safe, env = child_env(dsn)
    done = subprocess.run([tools.path("pg_restore"), "--no-owner", "--no-privileges", "--dbname", safe, str(archive)],
                          env=env, capture_output=True, text=True)
    errors, lines = [], done.stderr.splitlines()
    for i, line in enumerate(lines):
        if ("error:" in line or "ERROR:" in line) and "errors ignored on restore" not in line:
            command = lines[i + 1] if i + 1 < len(lines) and lines[i + 1].startswith("Command was:") else ""
            statement = command.removeprefix("Command was:").split()
            kind = " ".join(statement[:2]) if statement[:1] != ["ALTER"] else " ".join(statement[:4:3] or statement)
            errors.append({"error": line, "command": one_line(command, 300),
                           "class": error_class(line, kind or "?")})
    classes = Counter(e["class"] for e in errors)
    return {"exit": done.returncode, "errors": len(errors), "classes": [
        {"class": c, "count": n, "example": next(e for e in errors if e["class"] == c)}
        for c, n in classes.most_common()]}


VARIANTS = {
    "cli": "what `pg-backup-dagster restore ID --table T` does: the table, its parents, objects.sql of its schemas",
    "globals": "RESTORE.md section 4 with global_objects.sql in OBJECTS as well (extensions, access methods, …)",
}


def summarize_failures(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    classes = Counter(f["class"] for f in failures)
    return [{"class": c, "tables": n, "example": next(f for f in failures if f["class"] == c)}
            for c, n in classes.most_common()]


def restore_each_table(work: Path, backup: dict[str, Any], jobs: int, limit: int | None,
                       variants: list[str]) -> dict[str, Any] | None:
    """Each table with its parents into a fresh database on a fresh server, once per variant (roles.sql first)."""
    tier = load_table_tier(work, backup)
    if tier is None:
        return None
    tables, folder = tier["tables"], tier["folder"]
    keys = list(tables)[: limit or None]
    tools = find_tools()
    root = work / "restore-server"
    shutil.rmtree(root, ignore_errors=True)
    outcome: dict[str, Any] = {"mode": tier["mode"], "tables": len(tables), "tried": len(keys), "variants": {}}
    with LocalPostgres(root_dir=root) as target:

        def create(dbname: str) -> str:
            with psycopg.connect(target.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return target.dsn(dbname)

        def drop(dbname: str) -> None:
            with psycopg.connect(target.dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))

        archive = folder / f"database_full_{backup['backup_id']}.dump"
        if archive.exists():  # first as the check restores it (no roles), then with roles.sql loaded
            print("  the full archive, every error (pg_restore without --exit-on-error)", flush=True)
            outcome["full_without_roles"] = full_archive_errors(tools, archive, create("full_without_roles"))
        roles = folder / "roles.sql"
        if roles.exists():
            try:
                restore_roles_file(tools, roles, target.dsn(), 18)
            except BackupError as exc:
                outcome["roles_error"] = one_line(str(exc))
            if archive.exists():
                outcome["full_with_roles"] = full_archive_errors(tools, archive, create("full_with_roles"))
        global_objects = "global_objects.sql" if (folder / "global_objects.sql").exists() else None
        source = SourceConfig(target=str(work / "backups"))

        def one(variant: str, index: int, key: tuple[str, str]) -> tuple[tuple[str, str], str | None]:
            chain = with_parents(key, tables)
            dbname = f"{variant}_{index}"
            try:
                if variant == "cli" and tier["mode"] == "published":
                    restore_backup(source, RestoreRequest(backup["backup_id"], target.dsn(dbname), tables=tuple(chain),
                                                          create_db=True, force=True))
                else:  # restore --table over the staging folder, or RESTORE.md with global_objects.sql
                    dsn = create(dbname)
                    schemas = {k[0] for k in chain}
                    objects = {s: p for s, p in tier["schema_objects"].items() if s in schemas}
                    restore_tables(folder, [tables[k] for k in chain], dsn, psql=tools.path("psql"),
                                   schema_objects=objects, server_major=18,
                                   global_objects=global_objects if variant == "globals" else None)
                error = None
            except BackupError as exc:
                error = str(exc)
            finally:
                drop(dbname)
            return key, error

        for variant in variants:
            print(f"  every table alone, variant {variant!r}: {VARIANTS[variant]}", flush=True)
            failures = []
            with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
                futures = [pool.submit(one, variant, i, k) for i, k in enumerate(keys)]
                for n, future in enumerate(concurrent.futures.as_completed(futures), 1):
                    key, error = future.result()
                    if error is not None:
                        failures.append({"table": f"{key[0]}.{key[1]}", "error": error, "class": error_class(error)})
                    if n % 100 == 0:
                        print(f"    {n}/{len(keys)} tables tried, {len(failures)} failed", flush=True)
            outcome["variants"][variant] = {"restored": len(keys) - len(failures), "failed": len(failures),
                                            "classes": summarize_failures(failures),
                                            "failures": sorted(failures, key=lambda f: f["table"])}
    return outcome


# --- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regress_corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-src", help="PostgreSQL source tree, or its src/test/regress directory")
    parser.add_argument("--pg-git", help="a PostgreSQL git directory (bare is fine) to take src/test/regress from")
    parser.add_argument("--pg-rev", help="revision for --pg-git (default HEAD; use a REL_18 one for PostgreSQL 18)")
    parser.add_argument("--regress-lib", help="a regress.so built for the bundled server, or the folder holding it "
                        "(without it, statements that load it fail)")
    parser.add_argument("--work", type=Path, help="work directory (default: a new temp dir); a work dir that already "
                        "holds a built regression database is reused: the schedule is not run again")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server data, backup, logs)")
    parser.add_argument("--parallel", type=int, default=8, help="tests of one schedule group run at once (default 8)")
    parser.add_argument("--test-timeout", type=float, default=900, help="seconds per test file (default 900)")
    parser.add_argument("--backup-timeout", type=float, default=3600, help="seconds for the backup (default 3600)")
    parser.add_argument("--restore-jobs", type=int, default=2, help="tables restored at once (default 2)")
    parser.add_argument("--restore-limit", type=int, help="restore only the first N tables")
    parser.add_argument("--variants", default="cli,globals", help="per-table restore variants, comma-separated: "
                        + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()) + " (default: %(default)s)")
    parser.add_argument("--skip-backup", action="store_true", help="only build the database and count objects")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where results.json goes (default: %(default)s)")
    return parser.parse_args(argv)


def prepare_libdir(work: Path, regress_lib: str | None) -> Path:
    libdir = work / "lib"
    libdir.mkdir(parents=True, exist_ok=True)
    if regress_lib:
        path = Path(regress_lib).resolve()
        path = path / "regress.so" if path.is_dir() else path
        if not path.is_file():
            raise SystemExit(f"--regress-lib: no file {path}")
        shutil.copy2(path, libdir / "regress.so")
    make_world_readable(libdir)
    return libdir


def print_summary(results: dict[str, Any]) -> None:
    counts, build, backup, restore = (results.get(k) for k in ("objects", "schedule", "backup", "restore"))
    print("\n== regression database ==")
    if build:
        extra = [r for r in build if r["expected_errors"] is not None and r["errors"] > r["expected_errors"]]
        print(f"  {len(build)} test files, {sum(r['errors'] for r in build)} ERROR lines "
              f"({sum(r['expected_errors'] or 0 for r in build)} expected); more than expected in {len(extra)} file(s)"
              + (f": {', '.join(r['test'] for r in extra)}" if extra else ""))
    for name, value in (counts or {}).items():
        print(f"  {name:<24} {value:>7}")
    if backup:
        print("\n== backup (CLI, default settings) ==")
        print(f"  exit {backup['exit']}, {backup['seconds']} s, published: {'yes' if backup['published'] else 'NO'}")
        for line in backup["failed_checks"] + backup["step_errors"]:
            print(f"  {line[:600]}")
    for key, title in (("full_without_roles", "no roles, as the check"), ("full_with_roles", "roles.sql loaded")):
        probe = (restore or {}).get(key)
        if probe:
            print(f"\n== full archive, pg_restore past errors ({title}): {probe['errors']} error(s) ==")
            for item in probe["classes"][:15]:
                print(f"  {item['count']:>5}  {item['class']}")
                print(f"         e.g. {one_line(item['example']['error'], 200)}")
                print(f"              {one_line(item['example']['command'], 200)}")
    for variant, result in (restore or {}).get("variants", {}).items():
        print(f"\n== every table alone ({variant}: {VARIANTS[variant]}; from {restore['mode']}) ==")
        print(f"  {restore['tried']} of {restore['tables']} tables tried: {result['restored']} restored, "
              f"{result['failed']} failed" + (f"; roles.sql: {restore['roles_error']}" if restore.get("roles_error")
                                              else ""))
        for item in result["classes"][:15]:
            print(f"  {item['tables']:>5}  {item['class']}")
            print(f"         e.g. {item['example']['table']}: {one_line(item['example']['error'], 300)}")
    if backup and not restore:
        print("\n  no per-table tier to restore (neither published nor in staging)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="regress-corpus-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    results: dict[str, Any] = {"work": str(work)}
    server = LocalPostgres(root_dir=work / "server", settings=SERVER_SETTINGS)
    marker = work / "schedule.json"
    try:
        regress = regress_dir_from(args, work)
        make_world_readable(regress)
        libdir = prepare_libdir(work, args.regress_lib)
        if marker.exists() and (server.data_dir / "PG_VERSION").exists():
            server.password = json.loads(marker.read_text())["password"]  # the data dir keeps its verifier
            server.start()
            results["schedule"] = json.loads(marker.read_text())["tests"]
            print(f"reusing the regression database in {work}")
        else:
            server.start()
            print(f"running {regress / 'parallel_schedule'} against PostgreSQL 18 on port {server.port}", flush=True)
            started = time.monotonic()
            results["schedule"] = build_regression(server, regress, work, libdir, args.parallel, args.test_timeout)
            results["schedule_seconds"] = round(time.monotonic() - started, 1)
            marker.write_text(json.dumps({"password": server.password, "tests": results["schedule"]}))
            marker.chmod(0o600)
        results["objects"] = count_objects(server.dsn("regression"))
        if not args.skip_backup:
            print("running `python -m pg_backup_dagster.cli backup` (default settings)", flush=True)
            results["backup"] = run_backup_cli(server, work, args.backup_timeout)
            print("restoring every table alone", flush=True)
            results["restore"] = restore_each_table(work, results["backup"], args.restore_jobs, args.restore_limit,
                                                    args.variants.split(","))
    finally:
        server.stop()
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        print_summary(results)
        print(f"\nresults: {args.out / 'results.json'}")
        if args.keep:
            print(f"kept {work} (start again with --work {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
