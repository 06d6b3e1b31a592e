"""The backup assets of one source: roles → full dump + schema dumps + table files (one snapshot) → manifest.

Each function is a thin Dagster wrapper: the work lives in backup/dumps.py, tiers/ and backup/publish.py; here we validate
the partition, call the work, and turn what it measured into metadata the UI shows.
"""


from functools import partial

import dagster as dg

from pg_backup_dagster.backup.dumps import app_name, dump_full_and_schemas, dump_roles
from pg_backup_dagster.backup.publish import publish_backup
from pg_backup_dagster.config import SourceConfig
from pg_backup_dagster.constants import (
    MANIFEST_ASSET,
    postgres_key,
    target_key,
)
from pg_backup_dagster.defs import in_process
from pg_backup_dagster.defs.context import step_context
from pg_backup_dagster.defs.metadata import dump_metadata, published_metadata, roles_metadata, table_tier_metadata
from pg_backup_dagster.errors import BackupError
from pg_backup_dagster.retention.apply import after_publish
from pg_backup_dagster.storage.repository import EarlyUpload
from pg_backup_dagster.tiers.registry import FULL, ROLES, SCHEMA, TABLE, tiers_of


def asset_key(source: SourceConfig, name: str) -> dg.AssetKey:
    return dg.AssetKey([source.name, name])


def build_backup_assets(source: SourceConfig, partitions: dg.DynamicPartitionsDefinition) -> list:
    """The asset definitions of one source's configured tiers, sharing its partitions and resources.

    Only the steps that connect to the source (roles, dumps) take a slot of the source's pool: the checks and the
    manifest work on files and scratch servers, so they need not wait for it. The per-table tier is split in the
    dumps step, beside pg_dump, from the archive it is writing (tiers/table_tier.py).
    """
    resources = {postgres_key(source), target_key(source)}
    common = {"partitions_def": partitions, "group_name": source.name, "required_resource_keys": resources}
    on_source = {**common, "pool": source.pool}

    @dg.asset(key=asset_key(source, ROLES.asset), kinds={"postgres", "sql"}, description=ROLES.asset_description,
              **on_source)
    def roles_sql(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        step = step_context(context, source)
        step.pg.server_major(app_name(step.backup_id, "roles"))
        dumped = dump_roles(step.pg, step.staging, source.profile)
        return dg.MaterializeResult(metadata=roles_metadata(step.staging, dumped))

    schema_tier, table_tier = SCHEMA.name in source.tiers, TABLE.name in source.tiers
    specs = [dg.AssetSpec(asset_key(source, FULL.asset), kinds={"postgres"}, description=FULL.asset_description)]
    if schema_tier:
        specs.append(dg.AssetSpec(asset_key(source, SCHEMA.asset), kinds={"postgres"},
                                  description=SCHEMA.asset_description))
    if table_tier:  # split while pg_dump writes the full archive, so it is made in the same step
        specs.append(dg.AssetSpec(asset_key(source, TABLE.asset), deps=[asset_key(source, FULL.asset)], kinds={"sql"},
                                  description=TABLE.asset_description))

    @dg.multi_asset(name=f"{source.name}_dumps", specs=specs, **on_source)
    def dumps(context: dg.AssetExecutionContext):
        step = step_context(context, source)
        major = step.pg.server_major(app_name(step.backup_id, "full"))
        result, tables = dump_full_and_schemas(step.pg, step.staging, source.profile, major,
                                               schema_tier=schema_tier, table_tier=table_tier)
        step.staging.save(result)
        full_meta, schema_meta = dump_metadata(result)
        yield dg.MaterializeResult(asset_key=asset_key(source, FULL.asset), metadata=full_meta)
        if schema_tier:
            yield dg.MaterializeResult(asset_key=asset_key(source, SCHEMA.asset), metadata=schema_meta)
        if tables is not None:
            step.staging.save(tables)
            yield dg.MaterializeResult(asset_key=asset_key(source, TABLE.asset),
                                       metadata=table_tier_metadata(tables, result))
        if in_process.shares_process(context):  # store the tier files while the checks run (defs/in_process.py)
            in_process.start(context.run.run_id, EARLY_UPLOAD,
                             partial(step.storage.upload_early, source.name, step.backup_id))

    chosen = {ROLES.name: roles_sql, FULL.name: dumps}
    tier_keys = [asset_key(source, tier.asset) for tier in tiers_of(source.tiers)]

    @dg.asset(key=asset_key(source, MANIFEST_ASSET), deps=tier_keys, kinds={"json"},
              description="Checksums of every file; published last, then latest.json moves.", **common)
    def backup_manifest(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        step = step_context(context, source)
        early = _early_upload(context)
        try:
            published = publish_backup(source, step.storage, step.staging, context.log, early)
        except BaseException:
            if early is not None:
                early.discard()
            raise
        after_publish(source, step.storage, context.instance, context.run.run_id, context.log)
        return dg.MaterializeResult(metadata=published_metadata(published))

    return [definition for tier, definition in chosen.items() if tier in source.tiers] + [backup_manifest]


EARLY_UPLOAD = "early_upload"


def _early_upload(context: dg.AssetExecutionContext) -> EarlyUpload | None:
    """What the dumps step of this in-process run stored while the checks ran (None: publish stores it all)."""
    started = in_process.take(context.run.run_id, EARLY_UPLOAD)
    try:
        return started.result() if started else None
    except BackupError as exc:  # it removed what it stored: publish stores every file itself
        context.log.warning(f"storing the tier files during the checks failed ({exc}); storing them now")
        return None


def discard_early_upload(run_id: str) -> None:
    """After an in-process run: remove what its dumps step stored early if its manifest step never took it."""
    started = in_process.take(run_id, EARLY_UPLOAD)
    if started is not None and started.exception() is None:
        started.result().discard()

