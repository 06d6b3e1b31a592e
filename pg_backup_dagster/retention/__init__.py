"""Which backups to keep (a pure policy) and applying it to storage and the Dagster instance."""
