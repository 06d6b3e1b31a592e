"""BackupTargetResource: where published backups live (a directory or s3://bucket/prefix)."""

from __future__ import annotations

import dagster as dg

from pg_backup_dagster.storage import BackupStorage, open_storage


class BackupTargetResource(dg.ConfigurableResource):
    """Opens the storage for one source's target; credentials come from boto3's standard chain."""

    url: str
    sse: str | None = None
    kms_key_id: str | None = None
    storage_class: str | None = None
    part_size: int | None = None
    age_recipients: list[str] = []

    def open(self) -> BackupStorage:
        return open_storage(
            self.url,
            sse=self.sse,
            kms_key_id=self.kms_key_id,
            storage_class=self.storage_class,
            part_size=self.part_size,
            recipients=self.age_recipients or None,
        )
