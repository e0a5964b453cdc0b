"""The cluster mode: the same assets on a DuckLake warehouse, Dagster's instance on Postgres and
the Celery executor (docs/scale-out.md). Nothing here is imported by the embedded default
(`orchestration.definitions`)."""
