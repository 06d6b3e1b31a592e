from pg_backup_dagster.cli import main

main()
