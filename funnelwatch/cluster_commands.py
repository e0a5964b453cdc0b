"""`funnelwatch cluster check|run`: the cluster mode from the command line (docs/scale-out.md).

Registered on the CLI app by `funnelwatch.cli` through `register(app)`. Both commands check
every connection setting first and stop with one line per problem, naming the variable,
before any run is created.
"""

from __future__ import annotations

import os
import socket
from typing import Annotated

import typer

from funnelwatch.command_support import fail


def _checked() -> None:
    from funnelwatch.cluster_check import ClusterSettingError, check_cluster_settings

    try:
        check_cluster_settings()
    except ClusterSettingError as exc:
        fail("the cluster mode cannot start:\n  " + str(exc).replace("\n", "\n  "))


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(help="The cluster mode: Postgres instance, Celery workers, the "
                                   "lake warehouse (docs/scale-out.md).")
    app.add_typer(cluster_app, name="cluster")

    @cluster_app.command("check")
    def check() -> None:
        """Check the cluster settings (instance database, broker, lake catalog and data
        path): one line per problem, exit 2 when there is one."""
        _checked()
        typer.echo("cluster settings ok: instance database, broker, lake catalog, data path")

    @cluster_app.command("run")
    def run(
        start: Annotated[str, typer.Option(help="First hourly partition, e.g. 2026-11-02-00:00.")],
        end: Annotated[str, typer.Option(help="Last hourly partition (inclusive).")],
        job: Annotated[str, typer.Option(help="hourly_pipeline or detect_anomalies.")] = (
            "hourly_pipeline"),
    ) -> None:
        """Run a partition range as one run on the Celery workers, recorded in the Postgres
        instance at $DAGSTER_HOME."""
        _checked()
        import dagster as dg

        from orchestration.cluster import definitions

        if job not in ("hourly_pipeline", "detect_anomalies"):
            fail(f"no cluster job {job!r} (hourly_pipeline, detect_anomalies)")
        target = dg.reconstructable(getattr(definitions, job))
        with dg.DagsterInstance.get() as instance:
            result = dg.execute_job(
                target, instance=instance, raise_on_error=False,
                tags={"dagster/asset_partition_range_start": start,
                      "dagster/asset_partition_range_end": end,
                      "funnelwatch/host": socket.gethostname(),
                      "funnelwatch/pid": str(os.getpid())},
            )
            if not result.success:
                typer.echo(f"run {result.run_id} failed; see the Dagster UI for the logs",
                           err=True)
                raise typer.Exit(1)
            typer.echo(f"run {result.run_id} ({job}) succeeded")
