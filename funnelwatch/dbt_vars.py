"""The `--vars` funnelwatch passes to dbt: the partition window and the cohort configuration.

The dbt project (dbt_project/) reads these vars:

- `window_start`, `window_end`: the UTC window to (re)build, 'YYYY-MM-DD HH:MM:SS', end
  exclusive. Incremental models delete the window's hours and insert them again.
- `cohort_dimension_sets`: the dimension sets whose cohorts may be monitored (singles, then
  combinations), as lists of dimension names.
- `cohort_min_sessions_per_hour`, `monitor_window_days`: which cohorts are monitored.
- `session_lookback_hours`: how far before the window a run reads events to see the earlier
  events of sessions that continue into the window.

`build_dbt_vars` is pure (no I/O); `load_cohort_config` reads `config/cohorts.yml`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictFloat, StrictInt, field_validator

from funnelwatch.config_files import ConfigModel, load_yaml_model, validate_model

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COHORTS_PATH = REPO_ROOT / "config" / "cohorts.yml"

# Session attributes of the leaf cohort grain of fct_funnel_hourly, in its column order.
LEAF_DIMENSIONS: tuple[str, ...] = (
    "device_type",
    "os",
    "browser",
    "country",
    "utm_source",
    "utm_medium",
    "utm_campaign",
)
# Dimensions that are not session attributes: allowed only as a single dimension, and
# handled separately by the dbt models (category comes from int_category_hourly).
SINGLE_ONLY_DIMENSIONS: tuple[str, ...] = ("category",)
ALLOWED_DIMENSIONS: tuple[str, ...] = LEAF_DIMENSIONS + SINGLE_ONLY_DIMENSIONS

DBT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _known_dimension(name: str) -> str:
    if name not in ALLOWED_DIMENSIONS:
        raise ValueError(
            f"unknown cohort dimension {name!r}; allowed: {', '.join(ALLOWED_DIMENSIONS)}"
        )
    return name


def _valid_combination(combo: tuple[str, ...]) -> tuple[str, ...]:
    if not combo:
        raise ValueError("a combination must name at least one dimension")
    if len(set(combo)) != len(combo):
        raise ValueError(f"duplicate dimension in combination {list(combo)}")
    single_only = [d for d in combo if d in SINGLE_ONLY_DIMENSIONS]
    if single_only and len(combo) > 1:
        raise ValueError(
            f"{single_only} can only be monitored as a single dimension, not in "
            f"combination {list(combo)}; combinable: {', '.join(LEAF_DIMENSIONS)}"
        )
    return combo


# Per element, so an error names the entry: `combinations[2]: unknown cohort dimension ...`.
Dimension = Annotated[str, AfterValidator(_known_dimension)]
Combination = Annotated[tuple[Dimension, ...], AfterValidator(_valid_combination)]


class CohortConfig(ConfigModel):
    """Which cohorts are monitored (config/cohorts.yml; unknown keys and wrong types are
    errors, funnelwatch/config_files.py)."""

    dimensions: tuple[Dimension, ...] = LEAF_DIMENSIONS
    combinations: tuple[Combination, ...] = ()
    min_sessions_per_hour: Annotated[StrictFloat, Field(ge=0)] = 20.0
    monitor_window_days: Annotated[StrictInt, Field(ge=1)] = 7
    session_lookback_hours: Annotated[StrictInt, Field(ge=0)] = 3

    @field_validator("combinations", mode="before")
    @classmethod
    def _single_name_is_a_combination(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [(c,) if isinstance(c, str) else c for c in value]
        return value

    @field_validator("dimensions")
    @classmethod
    def _unique_dimensions(cls, dims: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(dims)) != len(dims):
            raise ValueError(f"duplicate dimension in dimensions: {list(dims)}")
        return dims

    def dimension_sets(self) -> list[list[str]]:
        """Singles, then combinations, without repeats (order kept: it is the cohort key order)."""
        sets: list[list[str]] = []
        for candidate in [[d] for d in self.dimensions] + [list(c) for c in self.combinations]:
            if candidate not in sets:
                sets.append(candidate)
        return sets

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, source: str = "cohort config") -> CohortConfig:
        """A parsed cohorts document (None: the defaults); a problem is one ConfigError line."""
        return validate_model({} if data is None else data, cls, source)


def load_cohort_config(path: Path | str | None = None) -> CohortConfig:
    """Read the cohort configuration (default: config/cohorts.yml at the repo root). A bad
    file raises ConfigError (one line: file, key, what was expected)."""
    return load_yaml_model(path if path is not None else DEFAULT_COHORTS_PATH, CohortConfig)


def _utc(value: datetime, name: str) -> datetime:
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)  # naive times are UTC (project rule)
    return value.astimezone(UTC)


def format_dbt_time(value: datetime) -> str:
    """'YYYY-MM-DD HH:MM:SS' in UTC (sub-second precision is dropped)."""
    return _utc(value, "value").strftime(DBT_TIME_FORMAT)


def build_dbt_vars(
    window_start: datetime, window_end: datetime, cohorts: CohortConfig
) -> dict[str, Any]:
    """The dict for `dbt build --vars` for the UTC window [window_start, window_end)."""
    start = _utc(window_start, "window_start")
    end = _utc(window_end, "window_end")
    if start.replace(microsecond=0) >= end.replace(microsecond=0):
        raise ValueError(
            f"window_end ({end.isoformat()}) must be after window_start ({start.isoformat()})"
        )
    return {
        "window_start": start.strftime(DBT_TIME_FORMAT),
        "window_end": end.strftime(DBT_TIME_FORMAT),
        **cohort_vars(cohorts),
    }


def cohort_vars(cohorts: CohortConfig) -> dict[str, Any]:
    """The cohort configuration's vars alone (no window: models built whole)."""
    return {
        "cohort_dimension_sets": cohorts.dimension_sets(),
        "cohort_min_sessions_per_hour": cohorts.min_sessions_per_hour,
        "monitor_window_days": cohorts.monitor_window_days,
        "session_lookback_hours": cohorts.session_lookback_hours,
    }


def dbt_vars_json(
    window_start: datetime, window_end: datetime, cohorts: CohortConfig | None = None
) -> str:
    """`build_dbt_vars` as the JSON string for `--vars` (cohorts default: config/cohorts.yml)."""
    cohorts = cohorts if cohorts is not None else load_cohort_config()
    return json.dumps(build_dbt_vars(window_start, window_end, cohorts), sort_keys=True)


def cohort_vars_json(cohorts: CohortConfig | None = None) -> str:
    """`cohort_vars` as the JSON string for `--vars` (cohorts default: config/cohorts.yml)."""
    cohorts = cohorts if cohorts is not None else load_cohort_config()
    return json.dumps(cohort_vars(cohorts), sort_keys=True)
