"""The `funnelwatch` command: what a user does outside the Dagster UI."""

from __future__ import annotations

import os
import socket
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from funnelwatch import cluster_commands, replay_commands
from funnelwatch.command_support import (
    LandingOption,
    fail,
    parse_day,
    settings_for,
    simulate_store,
)
from funnelwatch.incidents import commands as incident_commands
from funnelwatch.incidents import feedback_commands
from funnelwatch.privacy import commands as privacy_commands
from funnelwatch.settings import Settings
from funnelwatch.sources import commands as source_commands
from funnelwatch.verbosity import set_cli_output, verbose

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
import_app = typer.Typer(no_args_is_help=True, help="Convert a public data set into landing files.")
app.add_typer(import_app, name="import")


@app.callback()
def main(
    verbose_output: Annotated[bool, typer.Option(
        "--verbose", "-v",
        help="Show everything the libraries print: Dagster's per-event log lines and its beta / "
             "preview warnings, Great Expectations' progress bars, dbt's line per model.")] = False,
):
    """The `funnelwatch` command: what a user does outside the Dagster UI."""
    set_cli_output(verbose_output)


# The incident, feedback, privacy, replay and source commands live beside their code.
for _commands in (incident_commands, feedback_commands, privacy_commands, replay_commands,
                  source_commands, cluster_commands):
    _commands.register(app)


@app.command()
def simulate(
    days: Annotated[int, typer.Option(help="Days of history to generate.")] = 14,
    end: Annotated[str | None, typer.Option(help="End (exclusive, UTC), default today 00:00.")] = None,
    sessions_per_hour: Annotated[int, typer.Option(help="Mean sessions per hour.")] = 1500,
    seed: Annotated[int, typer.Option()] = 42,
    scenario: Annotated[str, typer.Option(help="Incident scenario: default, none, or a YAML path.")] = "default",
    ground_truth: Annotated[Path | None, typer.Option(help="Where to write the incident labels.")] = None,
    landing: LandingOption = None,
):
    """Generate a simulated store's clickstream (with labelled incidents) into the landing folder."""
    from simulator import write_simulation

    settings = settings_for(landing)
    start_time, end_time, result = simulate_store(days, end, sessions_per_hour, seed, scenario)
    truth = ground_truth or settings.landing.parent / "ground_truth.json"
    write_simulation(result, settings.landing, truth)
    typer.echo(
        f"simulated {len(result.events):,} events, {start_time:%Y-%m-%d %H:%M} .. "
        f"{end_time:%Y-%m-%d %H:%M} UTC, {len(result.incidents)} incidents\n"
        f"landing: {settings.landing}\nground truth: {truth}"
    )


def _import(importer, src: Path, landing: Path | None) -> None:
    settings = settings_for(landing)
    try:
        report = importer(src, settings.landing)
    except (OSError, ValueError) as exc:
        fail(str(exc))
    typer.echo(str(report))
    typer.echo(f"landing: {settings.landing}")


@import_app.command("ga4")
def import_ga4_cmd(src: Path, landing: LandingOption = None):
    """Import a GA4 BigQuery raw export (a Parquet file or a folder of them)."""
    from funnelwatch.importers import import_ga4

    _import(import_ga4, src, landing)


@import_app.command("rees46")
def import_rees46_cmd(src: Path, landing: LandingOption = None):
    """Import REES46 raw events (CSV, optionally .csv.gz)."""
    from funnelwatch.importers import import_rees46

    _import(import_rees46, src, landing)


def _landed_window() -> tuple[datetime, datetime]:
    from funnelwatch.landing import landed_hours

    landing = Settings.from_env().landing
    hours = list(landed_hours(landing))
    if not hours:
        fail(f"the landing folder {landing} has no event hours: run `funnelwatch simulate`")
    return hours[0], hours[-1] + timedelta(hours=1)


@app.command()
def run(
    start: Annotated[str | None, typer.Option(help="First hour (UTC), default: first landed hour.")] = None,
    end: Annotated[str | None, typer.Option(help="End hour, exclusive, default: after the last landed hour.")] = None,
    job: Annotated[str, typer.Option(help="The partitioned job to run.")] = "hourly_pipeline",
    respond: Annotated[bool, typer.Option(
        help="After hourly_pipeline / detect_anomalies, run respond_to_anomalies (incidents, "
             "root cause, reports, alerts) over the same hours.")] = True,
):
    """Run the hourly pipeline (or another partitioned job) headless over a window, as ONE run
    (a single-run backfill), recorded in the Dagster instance at $DAGSTER_HOME so `make dev`
    shows it."""
    import dagster as dg

    from funnelwatch.config_check import check_pipeline_configs
    from funnelwatch.config_files import ConfigError

    Settings.from_env()
    try:
        check_pipeline_configs()
    except ConfigError as exc:  # the file, key and expectation, not a failed run's traceback
        fail(str(exc))
    first, last = _landed_window()
    start_time = parse_day(start) if start else first
    end_time = parse_day(end) if end else last
    from orchestration.definitions import defs

    try:
        job_def = defs.resolve_job_def(job)
    except dg.DagsterInvariantViolationError:
        fail(f"no job {job!r} (jobs: {sorted(j.name for j in defs.resolve_all_job_defs())})")
    partitions = job_def.partitions_def
    if not isinstance(partitions, dg.TimeWindowPartitionsDefinition):
        fail(f"{job} is not partitioned by time; launch it from the UI (make dev)")
    first_key = partitions.get_partition_key_for_timestamp(start_time.timestamp())
    first = partitions.time_window_for_partition_key(first_key)
    if end_time < start_time + (first.end - first.start):
        fail(f"no whole {job} partition between {start_time} and {end_time}")
    last_key = partitions.get_partition_key_for_timestamp(
        (end_time - (first.end - first.start)).timestamp())
    keys = partitions.get_partition_keys_in_range(dg.PartitionKeyRange(first_key, last_key))
    jobs = [job_def]
    # On the schedule, anomalies_sensor launches the respond job for every scored hour; a
    # range run is a backfill the sensor leaves to its caller, so run it here in hour order.
    if respond and job in ("hourly_pipeline", "detect_anomalies"):
        jobs.append(defs.resolve_job_def("respond_to_anomalies"))
    instance = dg.DagsterInstance.get()
    for run_id in _release_dead_runs(instance):
        typer.echo(f"released run {run_id}: left STARTED by a process that is gone (killed); "
                   "its warehouse pool slot is free again")
    if len(keys) > 1:
        _one_planned_event_per_asset()
    for one in jobs:
        typer.echo(f"running {one.name} over {len(keys)} partitions: {keys[0]} .. {keys[-1]}")
        result = one.execute_in_process(
            instance=instance,
            # One line per step (stage_progress) and Dagster's console at WARNING: a range
            # run records a materialization per hour and asset, thousands of lines nobody
            # reads in a terminal. --verbose shows them all (DEBUG); the UI keeps every event.
            run_config={"loggers": {
                "console": {"config": {"log_level": "DEBUG" if verbose() else "WARNING"}},
                "stage_progress": {"config": {"total_steps": len(one.graph.nodes),
                                              "partitions": len(keys),
                                              "whole_steps": _unpartitioned_steps(defs, one)}},
            }},
            tags={
                "dagster/asset_partition_range_start": keys[0],
                "dagster/asset_partition_range_end": keys[-1],
                # who runs it, so a later `funnelwatch run` can tell a killed run from a live one
                "funnelwatch/host": socket.gethostname(),
                "funnelwatch/pid": str(os.getpid()),
            },
            raise_on_error=False,
        )
        if one.name == "hourly_pipeline":
            _print_ingest_problems(start_time, end_time)
        if not result.success:
            typer.echo(f"run {result.run_id} failed; see `make dev` for the logs", err=True)
            raise typer.Exit(1)
        typer.echo(f"run {result.run_id} ({one.name}) succeeded")


# Dagster's switch (read by its event log storage when a run is created) for one
# "materialization planned" event per asset of a range run, carrying the range, instead of
# one per asset and hour.
PLANNED_EVENTS_AS_RANGE = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


def _one_planned_event_per_asset() -> None:
    """Creating a range run otherwise writes a planned event per asset and hour (4,000 for the
    demo's 336 hours, a minute of SQLite writes on 2 cores). The materializations stay one per
    hour (the UI's partition status and the sensors read them). What is given up, as Dagster
    says: if the run fails, its hours are not marked failed in the UI's partition view (the
    run is: its page, `funnelwatch run`'s exit code and the ops alert say so)."""
    os.environ.setdefault(PLANNED_EVENTS_AS_RANGE, "true")


def _unpartitioned_steps(defs, job) -> list[str]:
    """Steps of the job whose assets are not partitioned (built whole on every run)."""
    import dagster as dg

    steps = {node.name for node in job.graph.nodes}
    return sorted(
        assets.node_def.name for assets in defs.assets
        if isinstance(assets, dg.AssetsDefinition) and assets.partitions_def is None
        and assets.node_def.name in steps
    )


def _print_ingest_problems(start: datetime, end: datetime) -> None:
    """One line per file set aside or reason for quarantine in the run's window."""
    from funnelwatch.ingest.problems import ingest_problem_lines
    from funnelwatch.warehouse import WarehouseBusyError, connect_when_free

    try:
        con = connect_when_free(Settings.from_env().warehouse, read_only=True)
    except WarehouseBusyError:
        return
    with con:
        for line in ingest_problem_lines(con, start, end):
            typer.echo(line, err=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _release_dead_runs(instance) -> list[str]:
    """A `funnelwatch run` killed mid-run (SIGKILL, OOM) leaves its run STARTED holding the
    `duckdb_warehouse` pool slot, and every later run would wait for that slot forever.
    Runs this machine's `funnelwatch run` started whose process is gone are marked failed
    and their slots freed (docs/reliability.md). Runs of other hosts or of the daemon are
    left to Dagster's run monitoring."""
    import dagster as dg

    released = []
    records = instance.get_run_records(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED], tags={"funnelwatch/host": socket.gethostname()}))
    for record in records:
        run = record.dagster_run
        pid = int(run.tags.get("funnelwatch/pid", "0") or 0)
        if pid and _process_alive(pid):
            continue
        instance.report_run_failed(
            run, f"the process (pid {pid}) running it is gone; released by funnelwatch run")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _top_anomalies_text(warehouse: Path, hours: int) -> tuple[str, str]:
    """(the most severe anomalies, the incidents) as text."""
    from funnelwatch.incidents.commands import incidents_table, list_incidents
    from funnelwatch.reports import top_anomalies
    from funnelwatch.warehouse import WarehouseBusyError, connect_when_free

    try:
        con = connect_when_free(warehouse, read_only=True)
    except WarehouseBusyError as exc:  # the pipeline held the write lock all along
        busy = f"_{exc}_"
        return busy, busy
    with con:
        frame = top_anomalies(con, hours=hours)
        has_incidents = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'incidents' AND table_name = 'incidents'").fetchall()[0][0]
        rows = list_incidents(con, "all", 0, 10)[0] if has_incidents else []
    anomalies = frame.to_markdown(index=False) if not frame.empty else "_no anomalies_"
    return anomalies, incidents_table(rows) if rows else "_no incidents_"


def _unknown_values_text(warehouse: Path, hours: int) -> str:
    """The unknown values of the last `hours` loaded hours as a table, or '' when none."""
    from funnelwatch.quality.unknown_values import unknown_values
    from funnelwatch.warehouse import WarehouseBusyError, connect_when_free

    try:
        con = connect_when_free(warehouse, read_only=True)
    except WarehouseBusyError:
        return ""  # the anomalies section already says the warehouse is busy
    with con:
        has_log = con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = 'raw' AND table_name = 'ingest_log'").fetchone()[0]
        if not has_log:
            return ""
        (last,) = con.execute("SELECT max(event_hour) FROM raw.ingest_log").fetchone()
        if last is None:
            return ""
        found = unknown_values(con, last - timedelta(hours=hours - 1), last + timedelta(hours=1))
    return found.table_markdown() if found.by_field else ""


@app.command()
def summary(
    hours: Annotated[int, typer.Option(help="Hours of the funnel to print.")] = 24,
    anomaly_hours: Annotated[int, typer.Option(help="Hours to list the most severe anomalies of.")] = 168,
):
    """Print the hourly funnel of the last day, the most severe anomalies of the last week and
    where the warehouse and snapshot are."""
    from funnelwatch.publish import open_snapshot
    from funnelwatch.reports import funnel_markdown, hourly_funnel

    settings = Settings.from_env()
    try:
        con = open_snapshot(settings.publish_dir)
    except FileNotFoundError as exc:
        fail(str(exc))
    try:
        frame = hourly_funnel(con, hours=hours, table="fct_funnel_hourly")
        info = con.execute("SELECT published_at FROM snapshot_info").fetchone()[0]
    finally:
        con.close()
    typer.echo(f"Hourly funnel, last {hours} hours (all cohorts):\n")
    typer.echo(funnel_markdown(frame))
    anomalies, incidents = _top_anomalies_text(settings.warehouse, anomaly_hours)
    typer.echo(f"\nMost severe anomalies, last {anomaly_hours} scored hours:\n")
    typer.echo(anomalies)
    typer.echo("\nIncidents (open first, then by revenue at risk; details: "
               "funnelwatch incident ID):\n")
    typer.echo(incidents)
    unknown = _unknown_values_text(settings.warehouse, hours)
    if unknown:
        typer.echo(f"\nValues the event contract does not know, last {hours} loaded hours "
                   "(kept as `other`, raw value in raw.events.unmapped_values):\n")
        typer.echo(unknown)
    typer.echo(
        f"\nwarehouse (pipeline writes):   {settings.warehouse}\n"
        f"analyst snapshot (read-only):  {settings.publish_dir / 'analytics.duckdb'} "
        f"(published {info:%Y-%m-%d %H:%M:%S} UTC)\n"
        f"query it:  funnelwatch sql \"SELECT * FROM fct_cohort_metrics_hourly LIMIT 10\""
    )


@app.command()
def sql(query: Annotated[str | None, typer.Argument(help="A query; omit for a shell.")] = None):
    """Query the analyst snapshot (read-only; safe while the pipeline runs). Files outside
    the snapshot, other databases, COPY/EXPORT, extensions and settings are refused
    (docs/security.md)."""
    import duckdb

    from funnelwatch.publish import QueryRefused, open_analyst_connection

    settings = Settings.from_env()

    def run_one(text: str) -> None:
        con = open_analyst_connection(settings.publish_dir)  # reopen: the newest snapshot
        try:
            frame = con.execute(text).df()
        finally:
            con.close()
        typer.echo(frame.to_string(index=False, max_rows=200))

    def one_line(exc: Exception) -> str:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    if query:
        try:
            run_one(query)
        except (QueryRefused, FileNotFoundError, duckdb.Error) as exc:
            fail(one_line(exc))
        return
    typer.echo("funnelwatch sql: end a query with ';', quit with Ctrl-D. Tables: SHOW TABLES;")
    buffer = ""
    for line in sys.stdin:
        buffer += line
        if buffer.strip().endswith(";"):
            try:
                run_one(buffer)
            except (QueryRefused, duckdb.Error, FileNotFoundError) as exc:  # report, go on
                typer.secho(f"error: {one_line(exc)}", err=True, fg=typer.colors.RED)
            buffer = ""


@app.command()
def evaluate(
    suite: Annotated[str, typer.Option(help="A suite in funnelwatch/evaluation/suites, or a YAML path.")] = "default",
    out: Annotated[Path, typer.Option(help="Where each run's landing files, warehouse and Dagster instance go.")] = Path("evaluation_runs"),
    report: Annotated[Path, typer.Option(help="The Markdown report to write.")] = Path("docs/evaluation.md"),
    rescore: Annotated[bool, typer.Option(help="Re-run detection on finished runs (after a detector change).")] = False,
    regroup: Annotated[bool, typer.Option(help="Re-run only incidents and root cause on finished runs (after a change there).")] = False,
):
    """Run simulator scenarios with ground truth through the real pipeline and report precision,
    recall, false alerts per day and time to detect (docs/evaluation.md)."""
    import time

    from funnelwatch.config_check import check_pipeline_configs
    from funnelwatch.evaluation.report import write_report
    from funnelwatch.evaluation.runner import collect, execute, load_suite

    try:
        name, runs = load_suite(suite)
        check_pipeline_configs()  # every run's `funnelwatch run` reads them
    except (OSError, ValueError) as exc:
        fail(str(exc))
    started = time.perf_counter()
    outcomes = []
    for spec in runs:
        try:
            folder = execute(spec, out.resolve(), rescore=rescore, echo=typer.echo,
                             regroup=regroup)
        except RuntimeError as exc:
            fail(str(exc))
        outcomes.append(collect(spec, folder))
    text = write_report(name, outcomes, report, elapsed_s=time.perf_counter() - started)
    typer.echo(text.split("## ", 2)[1] if "## " in text else text)
    typer.echo(f"report: {report}")


@app.command()
def contract():
    """Print the event contract as Markdown (the source of docs/event_contract.md)."""
    from funnelwatch.ingest.contract_doc import contract_markdown

    typer.echo(contract_markdown(), nl=False)


if __name__ == "__main__":
    app()
