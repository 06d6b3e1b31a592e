"""The Dagster surface: assets, checks, jobs, schedules, sensors, partitions and resources built per source,
the instance config, and running a job in process. It imports the engine; the engine never imports it."""
