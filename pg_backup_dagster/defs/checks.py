"""The blocking checks of one source's backup. Each records its result in staging for the manifest.

A failing check has ERROR severity and is blocking: the manifest step is skipped, nothing is published,
latest.json stays on the previous good backup. An unverified check (no server can restore the backup and the
source chose `unverifiable: warn`) has WARN severity: it does not block, and the manifest records it.
"""

import warnings
from collections.abc import Callable
from functools import partial

import dagster as dg

from pg_backup_dagster.backup.step import StepContext
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import (
    postgres_key,
    target_key,
)
from pg_backup_dagster.defs import in_process
from pg_backup_dagster.defs.assets import asset_key
from pg_backup_dagster.defs.context import step_context
from pg_backup_dagster.defs.metadata import row_counts_table
from pg_backup_dagster.pg.profiles import get_profile, roles_created
from pg_backup_dagster.tiers.registry import FULL, ROLES, SCHEMA, TABLE, Tier, tiers_of
from pg_backup_dagster.verify import tiers as verify_tiers


def _result(context, step: StepContext, name: str, outcome: verify_tiers.CheckOutcome) -> dg.AssetCheckResult:
    """ERROR when the check failed (blocking); a passed check with a warning (a restore over its RTO budget) is a
    WARN result, which Dagster shows as a warning and which blocks nothing; the manifest records it as passed."""
    step.staging.save_check(name, outcome.record())
    metadata = {k: row_counts_table(v) if k == "row_counts" else v for k, v in outcome.metadata.items()}
    if outcome.unverified:
        context.log.warning(f"check {name} unverified: {outcome.description}")
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=outcome.description)
    if not outcome.passed:
        context.log.error(f"check {name} failed: {outcome.description}")
    elif outcome.warning:
        context.log.warning(f"check {name}: {outcome.warning}")
        return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
                                   description=f"warning: {outcome.warning}; {outcome.description}")
    return dg.AssetCheckResult(passed=outcome.passed, severity=dg.AssetCheckSeverity.ERROR,
                               description=outcome.description, metadata=metadata)


def stub_roles(source: SourceConfig, step: StepContext) -> tuple[str, ...]:
    """Roles the scratch database gets as NOLOGIN stand-ins: the platform's (Supabase's anon, authenticated, …)
    and every role the backup's own roles.sql creates, so policies and grants naming them restore."""
    roles_file = step.staging.roles_file
    backup_roles = roles_created(roles_file.read_text(encoding="utf-8")) if roles_file.is_file() else []
    return tuple(dict.fromkeys([*get_profile(source.profile).reserved_roles, *backup_roles]))


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
    return [_tier_check(source, tier, common) for tier in tiers_of(source.tiers)]


def _tier_check(source: SourceConfig, tier: Tier, common: dict) -> dg.AssetChecksDefinition:
    @dg.asset_check(asset=asset_key(source, tier.asset), name=tier.check, description=tier.check_description,
                    **common)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        step = step_context(context, source)
        if in_process.shares_process(context) and tier.name in RESTORE_CHECKS:
            return _result(context, step, tier.check, _side_by_side(context.run.run_id, tier.name, step, source))
        return _result(context, step, tier.check, RUN_CHECK[tier.name](step, source))

    return _check


# The two checks that restore (a scratch database each) need nothing from each other: in an in-process run the
# first of them to run starts both (defs/in_process.py), and each step waits for its own.
RESTORE_CHECKS = (FULL.name, TABLE.name)


def _side_by_side(run_id: str, tier: str, step: StepContext, source: SourceConfig) -> verify_tiers.CheckOutcome:
    for name in RESTORE_CHECKS:
        if name in source.tiers:
            in_process.start(run_id, name, partial(RUN_CHECK[name], step, source))
    started = in_process.take(run_id, tier)
    return started.result() if started else RUN_CHECK[tier](step, source)


# What each tier's check proves lives in verify/tiers.py; this maps a tier to it.
RUN_CHECK: dict[str, Callable[[StepContext, SourceConfig], verify_tiers.CheckOutcome]] = {
    ROLES.name: lambda step, source: verify_tiers.check_roles_file(step),
    FULL.name: lambda step, source: verify_tiers.check_full_restore(step, source, stub_roles(source, step)),
    SCHEMA.name: lambda step, source: verify_tiers.check_schema_archives(step),
    TABLE.name: lambda step, source: verify_tiers.check_table_files(step, source, stub_roles(source, step)),
}
