"""Run an evaluation suite through the real pipeline.

Every (run, seed) gets its own folder under the output directory, with its own landing files,
warehouse and Dagster instance, and is driven by the same commands a user types:
`funnelwatch simulate` then `funnelwatch run` (ingest, data-quality gate, dbt, detection), as
subprocesses with that folder's environment. A folder whose pipeline already finished is
reused (`rescore=True` re-runs only the detection job over it, e.g. after a detector change).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import duckdb
import pandas as pd
from pydantic import BeforeValidator, Field, StrictInt

from funnelwatch.config_files import ConfigError, ConfigModel, display_path, load_yaml_model
from funnelwatch.evaluation import oracle_eval, scoring

ROOT = Path(__file__).resolve().parents[2]
SUITE_DIR = Path(__file__).parent / "suites"
DAGSTER_CONFIG = ROOT / "dagster_home" / "dagster.yaml"
DONE_MARKER = "pipeline.done"


@dataclass(frozen=True)
class RunSpec:
    name: str
    scenario: str
    seed: int
    end: datetime
    days: int
    sessions_per_hour: int
    calibration: bool = False  # the detectors' configuration was tuned on this run

    @property
    def key(self) -> str:
        return f"{self.name}-seed{self.seed}"

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


def _window_end(value: Any) -> Any:
    if isinstance(value, (int, float)):  # pydantic would read a number as a Unix time
        raise ValueError(f"expected a date like '2026-12-01', got {value!r}")  # noqa: TRY004 - pydantic reports ValueErrors
    return value


class SuiteRun(ConfigModel):
    """One entry of `runs:`; what it leaves out comes from `defaults:`."""

    name: str | None = None
    scenario: str | None = None  # simulator/scenarios/<name>.yaml, a YAML path, or none
    seeds: list[StrictInt] | None = None
    end: Annotated[datetime | None, BeforeValidator(_window_end)] = None  # exclusive, UTC
    days: Annotated[StrictInt, Field(ge=1)] | None = None
    sessions_per_hour: Annotated[StrictInt, Field(ge=1)] | None = None


class SuiteFile(ConfigModel):
    """funnelwatch/evaluation/suites/<name>.yaml."""

    name: str | None = None  # default: the file name
    calibrated_on: list[str] = Field(default_factory=list)  # run keys, `<name>-seed<seed>`
    defaults: SuiteRun = Field(default_factory=SuiteRun)
    runs: list[SuiteRun]


REQUIRED_RUN_KEYS = ("name", "scenario", "seeds", "end", "days", "sessions_per_hour")


def load_suite(name_or_path: str | Path) -> tuple[str, list[RunSpec]]:
    """(suite name, its runs, one per seed). A bad file raises ConfigError (one line)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"no evaluation suite {str(name_or_path)!r} (known: {known})")
    suite = load_yaml_model(path, SuiteFile)
    source = display_path(path)
    defaults = suite.defaults.model_dump(exclude_none=True)
    runs = []
    for i, item in enumerate(suite.runs):
        merged = {**defaults, **item.model_dump(exclude_none=True)}
        missing = [k for k in REQUIRED_RUN_KEYS if k not in merged]
        if missing:
            raise ConfigError(source, f"missing {', '.join(missing)} (required in the run or "
                              "in defaults)", f"runs[{i}]")
        end = merged["end"]
        end = end.replace(tzinfo=UTC) if end.tzinfo is None else end.astimezone(UTC)
        for seed in merged["seeds"]:
            spec = RunSpec(merged["name"], merged["scenario"], seed, end, merged["days"],
                           merged["sessions_per_hour"])
            runs.append(replace(spec, calibration=spec.key in suite.calibrated_on))
    unknown = set(suite.calibrated_on) - {r.key for r in runs}
    if unknown:
        raise ConfigError(source, f"names unknown runs {sorted(unknown)} (known: "
                          f"{', '.join(r.key for r in runs)})", "calibrated_on")
    if not runs:
        raise ConfigError(source, "no runs", "runs")
    return suite.name or path.stem, runs


def run_environment(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "FUNNELWATCH_LANDING": str(folder / "landing"),
        "FUNNELWATCH_WAREHOUSE": str(folder / "warehouse" / "funnelwatch.duckdb"),
        "FUNNELWATCH_PUBLISH_DIR": str(folder / "warehouse" / "published"),
        "DAGSTER_HOME": str(folder / "dagster_home"),
    })
    return env


def _funnelwatch(args: list[str], folder: Path, log) -> None:
    """One CLI call with the run folder's environment; output to the run's log file (a pipe
    that nobody reads would fill up and stall the child)."""
    command = [sys.executable, "-m", "funnelwatch.cli", *args]
    log.write(f"$ funnelwatch {' '.join(args)}\n")
    log.flush()
    completed = subprocess.run(command, cwd=ROOT, env=run_environment(folder), stdout=log,
                               stderr=subprocess.STDOUT, check=False)
    if completed.returncode != 0:
        raise RuntimeError(
            f"`funnelwatch {' '.join(args)}` failed ({completed.returncode}); see {log.name}"
        )


def execute(spec: RunSpec, out: Path, rescore: bool = False, echo=print,
            regroup: bool = False) -> Path:
    """Make sure the run's folder holds a finished pipeline (and fresh detections)."""
    folder = out / spec.key
    done = folder / DONE_MARKER
    if not done.exists():
        if folder.exists():  # an interrupted build: start it again from nothing
            shutil.rmtree(folder)
        (folder / "dagster_home").mkdir(parents=True)
        shutil.copy(DAGSTER_CONFIG, folder / "dagster_home" / "dagster.yaml")
        echo(f"[{spec.key}] simulate + pipeline ({spec.days} days, {spec.scenario})")
        with open(folder / "pipeline.log", "a") as log:
            _funnelwatch(["simulate", "--days", str(spec.days), "--end", spec.end.strftime("%Y-%m-%d"),
                          "--sessions-per-hour", str(spec.sessions_per_hour), "--seed", str(spec.seed),
                          "--scenario", spec.scenario,
                          "--ground-truth", str(folder / "ground_truth.json")], folder, log)
            _funnelwatch(["run"], folder, log)
            if not _has_detections(folder):  # a pipeline without the detect step: run it
                _funnelwatch(["run", "--job", "detect_anomalies"], folder, log)
        done.write_text(datetime.now().isoformat())
    elif rescore:  # detection again, then incidents (funnelwatch run does both)
        echo(f"[{spec.key}] re-running detection")
        with open(folder / "pipeline.log", "a") as log:
            _funnelwatch(["run", "--job", "detect_anomalies"], folder, log)
    if regroup and not rescore and _has_table(folder, "incidents", "incidents"):
        # Incidents (grouping, root cause) again from the stored detections, from scratch.
        with duckdb.connect(str(_warehouse(folder))) as con:
            con.execute("DROP SCHEMA incidents CASCADE")
    if not _has_table(folder, "incidents", "incidents"):  # built before the incident layer
        echo(f"[{spec.key}] grouping anomalies into incidents")
        with open(folder / "pipeline.log", "a") as log:
            _funnelwatch(["run", "--job", "respond_to_anomalies"], folder, log)
    return folder


def _warehouse(folder: Path) -> Path:
    return folder / "warehouse" / "funnelwatch.duckdb"


def _has_table(folder: Path, schema: str, table: str) -> bool:
    with duckdb.connect(str(_warehouse(folder)), read_only=True) as con:
        return bool(con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_schema = $s AND table_name = $t", {"s": schema, "t": table},
        ).fetchone()[0])


def _has_detections(folder: Path) -> bool:
    if not _has_table(folder, "detection", "anomalies"):
        return False
    with duckdb.connect(str(_warehouse(folder)), read_only=True) as con:
        return con.execute("SELECT count(*) FROM detection.anomalies").fetchone()[0] > 0


@dataclass
class RunOutcome:
    spec: RunSpec
    events: pd.DataFrame
    incidents: pd.DataFrame
    flagged: pd.DataFrame
    days: float
    cohort_sessions: pd.DataFrame  # mean sessions/h per cohort
    checkout_ratio: tuple[float, float]  # (checkout starts per session, checkout conversion)
    folder: Path | None = None
    labels: list = field(default_factory=list)  # ground_truth.json
    incident_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # incidents.incidents
    members: pd.DataFrame = field(default_factory=pd.DataFrame)  # incidents.members
    oracle_hours: pd.DataFrame = field(default_factory=pd.DataFrame)  # simulator.oracle, per hour
    oracle: pd.DataFrame = field(default_factory=pd.DataFrame)  # oracle_eval.per_incident
    planned: pd.DataFrame = field(default_factory=pd.DataFrame)  # simulator.oracle.planned_traffic
    oracle_slots: pd.DataFrame = field(default_factory=pd.DataFrame)  # the oracle by 5-min slot


def collect(spec: RunSpec, folder: Path, rules: scoring.MatchingRules = scoring.DEFAULT_RULES,
            cold_start_hours: float = 48) -> RunOutcome:
    """Read what the pipeline produced and match it against the run's ground truth."""
    labels = json.loads((folder / "ground_truth.json").read_text())
    truth = scoring.truth_frame(labels)
    with duckdb.connect(str(_warehouse(folder)), read_only=True) as con:
        flagged = con.execute(
            "SELECT event_hour, metric, cohort, value, expected, severity, why "
            "FROM detection.anomalies WHERE is_anomaly ORDER BY event_hour, severity DESC"
        ).df()
        scored = con.execute(
            "SELECT min(event_hour), max(event_hour) FROM detection.anomalies"
        ).fetchone()
        dq_hours = [r[0] for r in con.execute(
            "SELECT DISTINCT event_hour FROM quality.incident_hours").fetchall()]
        special = con.execute(
            "SELECT holiday_date AS day, holiday_name AS name FROM marts.dim_holidays "
            "WHERE country = 'ALL'"
        ).df()
        cohort_sessions = con.execute(
            "SELECT cohort, avg(value) AS sessions_per_hour FROM marts.fct_cohort_metrics_hourly "
            "WHERE metric = 'sessions' GROUP BY cohort"
        ).df()
        starts, purchases, sessions = con.execute(
            "SELECT sum(c.denominator), sum(c.numerator), sum(s.value) "
            "FROM marts.fct_cohort_metrics_hourly c JOIN marts.fct_cohort_metrics_hourly s "
            "  ON s.event_hour = c.event_hour AND s.cohort = c.cohort AND s.metric = 'sessions' "
            "WHERE c.metric = 'checkout_conversion_rate' AND c.cohort = 'all'"
        ).fetchone()
    events, incidents = scoring.match(flagged, truth, dq_hours, special, rules)
    incident_rows = members = pd.DataFrame()
    if _has_table(folder, "incidents", "incidents"):
        with duckdb.connect(str(_warehouse(folder)), read_only=True) as con:
            # changes explained by planned traffic are context, never incidents: not counted
            incident_rows = con.execute(
                "SELECT * FROM incidents.incidents "
                "WHERE coalesce(category, 'business') <> 'context' ORDER BY started_at").df()
            if _has_table(folder, "incidents", "members"):
                members = con.execute("SELECT * FROM incidents.members").df()
    first, last = (pd.Timestamp(v) for v in scored)
    days = max(0.0, ((last - first) / pd.Timedelta(hours=1) + 1 - cold_start_hours) / 24)
    for frame in (events, incidents):
        frame.insert(0, "run", spec.key)
    seen = oracle_eval.run_oracle(spec)
    seen.hours.insert(0, "run", spec.key)
    return RunOutcome(spec, events, incidents, flagged, days, cohort_sessions,
                      (starts / sessions, purchases / starts), folder, labels, incident_rows,
                      members, seen.hours,
                      oracle_eval.per_incident(seen.incidents, incidents, spec.key),
                      seen.planned, seen.slots)
