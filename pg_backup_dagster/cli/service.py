"""Commands about the installation: `pools` sets each source's connection-safe pool limit on the instance, `tools`
says where the PostgreSQL programs it runs are (so RESTORE.md's commands can use the same ones)."""

from __future__ import annotations

import typer

from pg_backup_dagster.cli.app import app, clean_errors


@app.command()
@clean_errors
def pools() -> None:
    """Set every configured source's pool limit on the instance in DAGSTER_HOME (see docs/service.md, "Pools")."""
    from pg_backup_dagster.config import load_sources
    from pg_backup_dagster.defs.instance import set_pool_limits
    from pg_backup_dagster.defs.run import open_instance

    sources = load_sources()
    with open_instance() as instance:
        limits = set_pool_limits(instance, sources)
    for source in sources:
        typer.echo(
            f"pool {source.pool}: {limits[source.pool]} step at a time "
            f"(each step may hold up to {source.max_connections} connections)"
        )


@app.command()
@clean_errors
def tools() -> None:
    """Print the directory of the PostgreSQL programs this tool runs (bundled 18 unless PG_BACKUP_PG_BIN):
    export PATH="$(pg-backup-dagster tools):$PATH" lets RESTORE.md's commands use them."""
    from pg_backup_dagster.pg.tools import find_tools

    typer.echo(str(find_tools().bin_dir))
