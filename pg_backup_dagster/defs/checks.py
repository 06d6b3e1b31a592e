"""The blocking checks of one source's backup. Each records its result in staging for the manifest.

A failing check has ERROR severity and is blocking: the manifest step is skipped, nothing is published,
latest.json stays on the previous good backup.
"""

import warnings

import dagster as dg

from pg_backup_dagster.backup.step import StepContext
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import (
    FULL_ASSET,
    ROLES_ASSET,
    SCHEMAS_ASSET,
    TABLES_ASSET,
    postgres_key,
    target_key,
)
from pg_backup_dagster.defs.assets import asset_key
from pg_backup_dagster.defs.context import step_context
from pg_backup_dagster.defs.metadata import row_counts_table
from pg_backup_dagster.pg.profiles import get_profile
from pg_backup_dagster.verify import tiers as verify_tiers


def _result(context, step: StepContext, name: str, outcome: verify_tiers.CheckOutcome) -> dg.AssetCheckResult:
    step.staging.save_check(name, outcome.record())
    if not outcome.passed:
        context.log.error(f"check {name} failed: {outcome.description}")
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata={k: row_counts_table(v) if k == "row_counts" else v for k, v in outcome.metadata.items()},
    )


def stub_roles(source: SourceConfig) -> tuple[str, ...]:
    """Platform roles a managed database's objects name; the scratch database gets NOLOGIN stand-ins."""
    return get_profile(source.profile).reserved_roles


def build_backup_checks(
    source: SourceConfig, partitions: dg.DynamicPartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    with warnings.catch_warnings():  # chosen knowingly: keep the preview notice out of every CLI's stderr
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return _backup_checks(source, partitions)


def _backup_checks(
    source: SourceConfig, partitions: dg.DynamicPartitionsDefinition
) -> list[dg.AssetChecksDefinition]:
    """Checks for the configured tiers of one source, partitioned like their assets so the UI ties each result to
    its backup (per-partition checks are a preview feature in Dagster 1.13; they always run with their asset)."""
    resources = {postgres_key(source), target_key(source)}
    # no pool: checks never touch the source
    common = {"blocking": True, "required_resource_keys": resources, "partitions_def": partitions}

    @dg.asset_check(asset=asset_key(source, FULL_ASSET), name="full_dump_restores",
                    description="pg_restore -j into a throwaway database; exact row counts equal dump time.", **common)
    def full_dump_restores(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        step = step_context(context, source)
        outcome = verify_tiers.check_full_restore(step, source, source.restore_url(), stub_roles(source))
        return _result(context, step, "full_dump_restores", outcome)

    @dg.asset_check(asset=asset_key(source, SCHEMAS_ASSET), name="schema_dumps_complete",
                    description="Every user schema has a readable archive, and nothing extra.", **common)
    def schema_dumps_complete(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        step = step_context(context, source)
        return _result(context, step, "schema_dumps_complete", verify_tiers.check_schema_archives(step))

    @dg.asset_check(asset=asset_key(source, TABLES_ASSET), name="table_dumps_restore",
                    description="Every table has its files; each restores its exact rows into a scratch db.", **common)
    def table_dumps_restore(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        step = step_context(context, source)
        outcome = verify_tiers.check_table_files(step, source.restore_url(), source.table_check_sample,
                                                 stub_roles(source))
        return _result(context, step, "table_dumps_restore", outcome)

    @dg.asset_check(asset=asset_key(source, ROLES_ASSET), name="roles_sql_loadable",
                    description="roles.sql present, without password hashes, and loads into a scratch server.",
                    **common)
    def roles_sql_loadable(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        step = step_context(context, source)
        return _result(context, step, "roles_sql_loadable", verify_tiers.check_roles_file(step))

    by_tier = {"full": full_dump_restores, "schema": schema_dumps_complete, "table": table_dumps_restore,
               "roles": roles_sql_loadable}
    return [check for tier, check in by_tier.items() if tier in source.tiers]
