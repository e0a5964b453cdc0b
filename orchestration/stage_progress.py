"""One line per step of a headless run (`funnelwatch run`): which stage, over how many
partitions, how long it took. Dagster's console logger stays at WARNING beside it unless
`funnelwatch --verbose`; runs launched from the UI do not configure this logger (Dagster then
uses its default console logger only).

    [5/9] dbt build of the hourly models (staging, intermediate, marts): 336 partitions ... 41 s (CPU 33 s)

The CPU seconds (this process and the subprocesses it waited for, such as dbt) tell a slow
step from a busy machine: on a shared machine the wall time grows, the CPU time much less.

Steps of assets that are not partitioned (reference tables, views and dimensions built whole)
say so instead of a partition count: they run once per run whatever its range.
"""

from __future__ import annotations

import logging
import os
import sys

import dagster as dg

# Step keys of the jobs `funnelwatch run` runs, as a person reads them.
STAGE_LABELS = {
    "ingest_events": "ingest landing files",
    "ingest_reference": "ingest reference data (deploys, campaigns, holidays)",
    "raw_events_quality": "data-quality checks on raw events (GE)",
    "raw_events_events_unknown_values": "values the contract does not know (warning check)",
    "funnelwatch_dbt_whole": "dbt build of the views and dimensions built whole",
    "funnelwatch_dbt_hourly": "dbt build of the hourly models (staging, intermediate, marts)",
    "cohort_metrics_quality": "data-quality checks on the cohort metrics mart (GE)",
    "analyst_snapshot": "publish the analyst snapshot",
    "cohort_anomalies": "detection (ensemble incl. Prophet)",
    "incidents": "incidents, root cause, reports",
    "incident_alerts": "alerts through the outbox",
    "checkout_fast_lane": "checkout fast lane",
}

_FINISHED = {
    dg.DagsterEventType.STEP_SUCCESS: "",
    dg.DagsterEventType.STEP_FAILURE: " FAILED",
    dg.DagsterEventType.STEP_SKIPPED: " skipped",
}


def _cpu_seconds() -> float:
    """User + system CPU of this process and of its finished child processes."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class StageProgressHandler(logging.Handler):
    """Prints a line when a step finishes, numbered in the order steps started."""

    def __init__(self, total_steps: int, partitions: int, whole_steps=()):
        super().__init__(level=logging.DEBUG)
        self.total_steps = total_steps
        self.partitions = partitions
        self.whole_steps = set(whole_steps)
        self.number: dict[str, int] = {}
        self.started_at: dict[str, float] = {}
        self.cpu_at: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        # Dagster puts the event a log record reports on the record's `dagster_meta`.
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        if event is None or event.step_key is None:
            return
        step = event.step_key
        if event.event_type == dg.DagsterEventType.STEP_START:
            self.number.setdefault(step, len(self.number) + 1)
            self.started_at[step] = record.created
            self.cpu_at[step] = _cpu_seconds()
            return
        if event.event_type not in _FINISHED:
            return
        number = self.number.setdefault(step, len(self.number) + 1)
        seconds = record.created - self.started_at.get(step, record.created)
        cpu_now = _cpu_seconds()
        cpu = cpu_now - self.cpu_at.get(step, cpu_now)
        if step in self.whole_steps:
            scope = "built whole"
        else:
            scope = f"{self.partitions} partition{'s' if self.partitions != 1 else ''}"
        sys.stdout.write(
            f"[{number}/{self.total_steps}] {STAGE_LABELS.get(step, step)}: {scope} ... "
            f"{seconds:.0f} s (CPU {cpu:.0f} s){_FINISHED[event.event_type]}\n"
        )
        sys.stdout.flush()


@dg.logger(
    config_schema={
        "total_steps": dg.Field(int),
        "partitions": dg.Field(int),
        "whole_steps": dg.Field([str], default_value=[],
                                description="Steps of unpartitioned assets (built whole)."),
    },
    description="One line per finished step, for headless runs (funnelwatch run).",
)
def stage_progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    # A fresh logger per run (as Dagster's console logger): a shared one would keep the
    # handlers of earlier runs in the process and print their lines again.
    logger = logging.Logger("funnelwatch_stage_progress", level=logging.DEBUG)  # noqa: LOG001
    config = init_context.logger_config
    logger.addHandler(StageProgressHandler(config["total_steps"], config["partitions"],
                                           config["whole_steps"]))
    return logger
