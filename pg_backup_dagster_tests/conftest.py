"""The shared fixtures are plugin modules in pg_backup_dagster_tests/fixtures/; plain helpers are in helpers.py."""

pytest_plugins = [
    "pg_backup_dagster_tests.fixtures.postgres",
    "pg_backup_dagster_tests.fixtures.s3",
]
