"""RESTORE.md and SHA256SUMS: each backup folder explains how to restore itself without this tool."""

from __future__ import annotations

import shlex

from pg_backup_dagster.files import atomic_path, sha256_file
from pg_backup_dagster.staging import Staging


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


STRIP_META = r"sed -e '/^\\\(un\)\?restrict /d'"


def render_restore_md(source: str, staging: Staging) -> str:
    """Exact commands for every tier; `$TARGET` is a connection URL of the database to restore into."""
    dumps = staging.load("dumps")
    tables = staging.load_or("tables", {"tables": [], "schema_objects": {}})
    bid = staging.backup_id
    example_schema = dumps["schemas"][0] if dumps["schemas"] else None
    example_table = tables["tables"][0] if tables["tables"] else None
    lines = [
        f"# Restoring backup {bid} of source `{source}`",
        "",
        "Everything here restores with PostgreSQL's own programs (pg_restore, psql; version ≥ the dump's,",
        f"pg_dump {dumps['pg_dump_version']}). Set `TARGET` to a connection URL of an existing, empty database,",
        "and pass the password through `PGPASSWORD` or `~/.pgpass`, not on the command line.",
        "",
        "## 0. Check the files",
        "```sh",
        "sha256sum -c SHA256SUMS",
        "```",
        "",
        "## 1. Roles (cluster-wide; errors for roles that already exist are harmless)",
        "```sh",
        f'{STRIP_META} roles.sql | psql -X -d "$TARGET"',
        "```",
        "",
        "## 2. The whole database",
        "```sh",
        f'pg_restore --no-owner --no-privileges --jobs=4 --exit-on-error --dbname="$TARGET" {dumps["full"]["path"]}',
        "```",
        "",
        "## 3. One schema (every archive is listed in manifest.json with tier \"schema\")",
        "```sh",
    ]
    if example_schema:
        lines.append(f'pg_restore --no-owner --no-privileges --exit-on-error --dbname="$TARGET" '
                     f"{shlex.quote(example_schema['path'])}")
    lines += [
        "```",
        "",
        "## 4. One table (files listed in manifest.json with tier \"table\")",
        "Run the files of all the tables you want in phases: every schema.sql, then every data.sql,",
        "then every post.sql (indexes, constraints, triggers, policies), then every fk.sql.",
        "A table's schema must exist and any type it uses comes from `{schema}/objects.sql`.",
        "```sh",
    ]
    if example_table:
        folder = example_table["files"]["schema"].rsplit("/", 1)[0]
        create = f"CREATE SCHEMA IF NOT EXISTS {quote_ident(example_table['schema'])}"
        lines.append(f'psql -X -v ON_ERROR_STOP=1 -d "$TARGET" -c {shlex.quote(create)}')
        for kind in ("schema", "data", "post", "fk"):
            if kind in example_table["files"]:
                path = shlex.quote(f"{folder}/{kind}.sql")
                lines.append(f'{STRIP_META} {path} | psql -X -v ON_ERROR_STOP=1 -d "$TARGET"')
    lines += ["```", "", "manifest.json maps every file to its exact schema and table names.", ""]
    return "\n".join(lines)


def write_restore_doc(source: str, staging: Staging) -> None:
    with atomic_path(staging.root / "RESTORE.md") as tmp:
        tmp.write_text(render_restore_md(source, staging), encoding="utf-8")


def write_checksums(staging: Staging, paths: list[str]) -> None:
    """SHA256SUMS in `sha256sum -c` format, so files can be checked with coreutils alone."""
    body = "".join(f"{sha256_file(staging.root / rel)}  {rel}\n" for rel in sorted(paths))
    with atomic_path(staging.root / "SHA256SUMS") as tmp:
        tmp.write_text(body, encoding="utf-8")
