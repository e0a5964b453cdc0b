"""The soak loop: simulated hours processed one after another on the schedule's path.

For each hour, in order, as the Dagster daemon would: evaluate `hourly_pipeline_schedule` at
five past the end of the hour (its RunRequest gives the partition key and tags), execute
`hourly_pipeline` in process for that one partition with those tags, then tick
`anomalies_sensor` (with its cursor) and execute `respond_to_anomalies` for each run request
it returns. Everything runs against one persistent DagsterInstance (DAGSTER_HOME in the work
folder) and one warehouse file. After every hour a `Sample` records the process memory, the
warehouse and instance sizes and the raw row count.

Used by `bench/soak.py` (7 days at demo volume) and `tests/test_soak.py` (a short window).
The environment (FUNNELWATCH_*, DAGSTER_HOME) must be set with `prepare_environment` before
`orchestration.definitions` is imported or any run starts; resources read it at run time.
"""

from __future__ import annotations

import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
RAW_TABLES = ("raw.events", "raw.events_quarantine", "raw.ingest_log")


@dataclass(frozen=True)
class SoakPaths:
    root: Path
    landing: Path
    warehouse: Path
    publish: Path
    feedback: Path
    dagster_home: Path

    @classmethod
    def under(cls, root: Path) -> SoakPaths:
        root = Path(root).resolve()
        return cls(root=root, landing=root / "landing",
                   warehouse=root / "warehouse" / "funnelwatch.duckdb",
                   publish=root / "warehouse" / "published", feedback=root / "feedback",
                   dagster_home=root / "dagster_home")


def prepare_environment(paths: SoakPaths, setenv=None) -> None:
    """Export the paths the resources read (EnvVar) and a DAGSTER_HOME with the repo's instance
    settings (one slot for the `duckdb_warehouse` pool). `setenv(name, value)` defaults to
    setting os.environ (a test passes monkeypatch.setenv)."""
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    paths.warehouse.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", paths.dagster_home / "dagster.yaml")
    setenv = setenv or os.environ.__setitem__
    for name, value in {
        "FUNNELWATCH_LANDING": str(paths.landing),
        "FUNNELWATCH_WAREHOUSE": str(paths.warehouse),
        "FUNNELWATCH_PUBLISH_DIR": str(paths.publish),
        "FUNNELWATCH_FEEDBACK_DIR": str(paths.feedback),
        "DAGSTER_HOME": str(paths.dagster_home),
    }.items():
        setenv(name, value)


def simulate_landing(landing: Path, start: pd.Timestamp, end: pd.Timestamp,
                     sessions_per_hour: float, seed: int = 42,
                     scenario: str = "none") -> dict[str, int]:
    """Simulate [start, end) into the landing folder; returns the simulated rows per partition
    key (the rows written for that hour, late rows included: they all land before the soak)."""
    from simulator import SimulationConfig, load_incidents, simulate, write_simulation

    config = SimulationConfig(
        start=start, end=end, sessions_per_hour=sessions_per_hour, seed=seed,
        incidents=[] if scenario == "none" else load_incidents(scenario),
    )
    result = simulate(config)
    write_simulation(result, landing, landing.parent / "ground_truth.json")
    hours = pd.to_datetime(result.events["event_time"], utc=True).dt.floor("h")
    counts = hours.value_counts()
    return {partition_key(h): int(n) for h, n in counts.items()}


def partition_key(hour: datetime | pd.Timestamp) -> str:
    return pd.Timestamp(hour).strftime("%Y-%m-%d-%H:%M")


# --- measurements ---------------------------------------------------------------------------

def rss_mb() -> float:
    """Resident set size of this process now (VmRSS), MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # KB on Linux


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if path.exists() else 0


def warehouse_bytes(path: Path) -> tuple[int, int]:
    wal = Path(str(path) + ".wal")
    return (path.stat().st_size if path.exists() else 0,
            wal.stat().st_size if wal.exists() else 0)


def raw_counts(path: Path) -> dict[str, int]:
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for table in RAW_TABLES:
            try:
                out[table] = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            except duckdb.CatalogException:
                out[table] = 0
        out["raw.events_distinct_ids"] = con.execute(
            "SELECT count(DISTINCT event_id) FROM raw.events").fetchone()[0]
        return out
    finally:
        con.close()


def hour_row_counts(path: Path, start: datetime, end: datetime) -> dict[str, int]:
    """raw.events rows per partition key in [start, end)."""
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            "SELECT date_trunc('hour', event_time) AS h, count(*) FROM raw.events "
            "WHERE event_time >= ? AND event_time < ? GROUP BY 1",
            [pd.Timestamp(start).to_pydatetime(), pd.Timestamp(end).to_pydatetime()],
        ).fetchall()
    finally:
        con.close()
    return {partition_key(pd.Timestamp(h).tz_localize("UTC") if pd.Timestamp(h).tzinfo is None
                          else pd.Timestamp(h)): n for h, n in rows}


@dataclass
class Sample:
    index: int
    partition: str
    phase: str  # "soak" or "rerun"
    wall_s: float
    pipeline_s: float
    respond_runs: int
    respond_s: float
    rss_mb: float
    peak_rss_mb: float
    children_peak_rss_mb: float
    warehouse_bytes: int
    wal_bytes: int
    raw_events: int
    raw_events_distinct: int
    raw_quarantine: int
    ingest_log_rows: int
    instance_bytes: int
    publish_bytes: int


@dataclass
class SoakState:
    """The daemon's memory between ticks: the sensor cursor (the instance holds the rest)."""

    sensor_cursor: str | None = None
    run_ids: list[str] = field(default_factory=list)
    pipeline_runs: list[tuple[str, str]] = field(default_factory=list)  # (partition, run id)
    respond_runs: list[tuple[str, str]] = field(default_factory=list)
    # hours whose run the data-quality gate stopped (a blocking check failed: the hour is a
    # data-quality incident, nothing downstream ran); the daemon goes on to the next hour
    gate_stopped: list[tuple[str, str]] = field(default_factory=list)  # (partition, run id)


# The blocking data-quality checks (orchestration/quality/checks.py): a live one-hour run
# that fails one of them stops at the gate by design.
GATE_STEPS = ("raw_events_quality", "cohort_metrics_quality")


def stopped_at_gate(result) -> bool:
    """The run failed only because a blocking data-quality check failed."""
    failures = result.get_step_failure_events()
    return bool(failures) and all(f.step_key in GATE_STEPS for f in failures)


# --- the schedule's path ----------------------------------------------------------------------

def _quiet_run_config() -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def load_history(instance, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    """History as `funnelwatch run` loads it: one range run of `hourly_pipeline`, then one of
    `respond_to_anomalies` over the same hours (the sensor leaves range runs to their caller)."""
    from orchestration.definitions import defs

    keys = [partition_key(h) for h in pd.date_range(start, end, freq="h", inclusive="left")]
    run_ids = []
    for job in ("hourly_pipeline", "respond_to_anomalies"):
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, run_config=_quiet_run_config(),
            tags={RANGE_START: keys[0], RANGE_END: keys[-1]}, raise_on_error=False,
        )
        if not result.success:
            raise RuntimeError(f"history run {result.run_id} of {job} failed")
        run_ids.append(result.run_id)
    return run_ids


def scheduled_request(instance, hour: pd.Timestamp):
    """The RunRequest `hourly_pipeline_schedule` makes at five past the end of `hour`."""
    import dagster as dg

    from orchestration.jobs import hourly_pipeline_schedule

    tick_time = (hour + pd.Timedelta(hours=1, minutes=5)).to_pydatetime()
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=tick_time)
    data = hourly_pipeline_schedule.evaluate_tick(context)
    requests = list(data.run_requests or [])
    if len(requests) != 1:
        raise RuntimeError(f"schedule at {tick_time}: expected one run request, got {requests}"
                           f" ({data.skip_message})")
    return requests[0]


def sensor_requests(instance, state: SoakState) -> list:
    """One tick of `anomalies_sensor` with the daemon's cursor; returns its run requests."""
    import dagster as dg

    from orchestration.definitions import defs
    from orchestration.respond.sensors import anomalies_sensor

    # The definitions, as the daemon has them: a partitioned RunRequest is resolved against
    # its job (without them the first anomaly of a soak raised DagsterInvariantViolationError).
    context = dg.build_sensor_context(instance=instance, cursor=state.sensor_cursor,
                                      definitions=defs)
    data = anomalies_sensor.evaluate_tick(context)
    state.sensor_cursor = data.cursor if data.cursor is not None else state.sensor_cursor
    return list(data.run_requests or [])


def process_hour(instance, hour: pd.Timestamp, state: SoakState) -> tuple[float, int, float]:
    """The schedule's run of `hour`, then the respond runs the sensor asks for.
    Returns (pipeline seconds, respond runs, respond seconds)."""
    from orchestration.definitions import defs

    request = scheduled_request(instance, hour)
    if request.partition_key != partition_key(hour):
        raise RuntimeError(f"schedule asked for {request.partition_key}, not {partition_key(hour)}")
    start = time.perf_counter()
    result = defs.resolve_job_def("hourly_pipeline").execute_in_process(
        instance=instance, partition_key=request.partition_key, tags=dict(request.tags),
        run_config=_quiet_run_config(), raise_on_error=False,
    )
    pipeline_s = time.perf_counter() - start
    if not result.success and stopped_at_gate(result):
        state.gate_stopped.append((request.partition_key, result.run_id))
    elif not result.success:
        raise RuntimeError(f"hourly_pipeline run {result.run_id} for {request.partition_key} failed")
    state.run_ids.append(result.run_id)
    state.pipeline_runs.append((request.partition_key, result.run_id))
    start, responded = time.perf_counter(), 0
    for respond in sensor_requests(instance, state):
        tags = {**dict(respond.tags), "dagster/run_key": respond.run_key} if respond.run_key \
            else dict(respond.tags)
        result = defs.resolve_job_def("respond_to_anomalies").execute_in_process(
            instance=instance, partition_key=respond.partition_key, tags=tags,
            run_config=_quiet_run_config(), raise_on_error=False,
        )
        if not result.success:
            raise RuntimeError(f"respond run {result.run_id} for {respond.partition_key} failed")
        state.run_ids.append(result.run_id)
        state.respond_runs.append((respond.partition_key, result.run_id))
        responded += 1
    return pipeline_s, responded, time.perf_counter() - start


def measure(paths: SoakPaths, index: int, hour: pd.Timestamp, phase: str, wall_s: float,
            pipeline_s: float, responded: int, respond_s: float) -> Sample:
    counts = raw_counts(paths.warehouse)
    db, wal = warehouse_bytes(paths.warehouse)
    return Sample(
        index=index, partition=partition_key(hour), phase=phase, wall_s=round(wall_s, 2),
        pipeline_s=round(pipeline_s, 2), respond_runs=responded, respond_s=round(respond_s, 2),
        rss_mb=round(rss_mb(), 1), peak_rss_mb=round(peak_rss_mb(), 1),
        children_peak_rss_mb=round(peak_rss_mb(resource.RUSAGE_CHILDREN), 1),
        warehouse_bytes=db, wal_bytes=wal, raw_events=counts["raw.events"],
        raw_events_distinct=counts["raw.events_distinct_ids"],
        raw_quarantine=counts["raw.events_quarantine"], ingest_log_rows=counts["raw.ingest_log"],
        instance_bytes=dir_bytes(paths.dagster_home), publish_bytes=dir_bytes(paths.publish),
    )


def soak(instance, paths: SoakPaths, hours: list[pd.Timestamp], state: SoakState,
         phase: str = "soak", on_sample=None, start_index: int = 0,
         deadline: float | None = None) -> list[Sample]:
    """Process `hours` one after another on the schedule's path, measuring after each.
    With `deadline` (time.monotonic()), stops at the first hour boundary after it."""
    samples = []
    for i, hour in enumerate(hours):
        if deadline is not None and time.monotonic() > deadline:
            break
        start = time.perf_counter()
        pipeline_s, responded, respond_s = process_hour(instance, hour, state)
        sample = measure(paths, start_index + i, hour, phase, time.perf_counter() - start,
                         pipeline_s, responded, respond_s)
        samples.append(sample)
        if on_sample is not None:
            on_sample(sample)
    return samples


def release_interrupted_runs(instance) -> list[str]:
    """Runs left STARTED/CANCELING by a soak process that was stopped mid-run: marked failed and
    their `duckdb_warehouse` pool slots freed (as `funnelwatch run` does for its own runs), so
    the next run does not wait for the slot forever. Only for a soak's private instance."""
    import dagster as dg

    released = []
    records = instance.get_run_records(filters=dg.RunsFilter(
        statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]))
    for record in records:
        instance.report_run_failed(record.dagster_run, "soak process stopped; released")
        instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
        released.append(record.dagster_run.run_id)
    return released


def materialization_counts(instance, asset: str, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """run id -> {partition: materializations of `asset` in that run}."""
    import dagster as dg

    out: dict[str, dict[str, int]] = {}
    for run_id in run_ids:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        per: dict[str, int] = {}
        for record in records:
            event = record.event_log_entry.dagster_event
            if event.asset_key == dg.AssetKey(asset):
                per[event.partition] = per.get(event.partition, 0) + 1
        out[run_id] = per
    return out


def samples_frame(samples: list[Sample]) -> pd.DataFrame:
    return pd.DataFrame([asdict(s) for s in samples])


def hours_between(start: pd.Timestamp, end: pd.Timestamp) -> list[pd.Timestamp]:
    return list(pd.date_range(start, end, freq="h", inclusive="left"))


def utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def day_of(sample_index: int) -> int:
    return sample_index // 24 + 1


__all__ = [
    "Sample",
    "SoakPaths",
    "SoakState",
    "hour_row_counts",
    "hours_between",
    "load_history",
    "materialization_counts",
    "measure",
    "partition_key",
    "prepare_environment",
    "process_hour",
    "release_interrupted_runs",
    "samples_frame",
    "simulate_landing",
    "soak",
    "timedelta",
    "utc",
]
