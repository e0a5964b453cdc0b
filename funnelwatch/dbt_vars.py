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
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

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

_CONFIG_KEYS = {
    "dimensions",
    "combinations",
    "min_sessions_per_hour",
    "monitor_window_days",
    "session_lookback_hours",
}
DBT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _check_names(names: tuple[str, ...], where: str) -> None:
    unknown = [n for n in names if n not in ALLOWED_DIMENSIONS]
    if unknown:
        raise ValueError(
            f"unknown cohort dimension(s) {unknown} in {where}; "
            f"allowed: {', '.join(ALLOWED_DIMENSIONS)}"
        )


@dataclass(frozen=True)
class CohortConfig:
    """Which cohorts are monitored (see config/cohorts.yml)."""

    dimensions: tuple[str, ...] = LEAF_DIMENSIONS
    combinations: tuple[tuple[str, ...], ...] = field(default_factory=tuple)
    min_sessions_per_hour: float = 20
    monitor_window_days: int = 7
    session_lookback_hours: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.dimensions, str) or isinstance(self.combinations, str):
            raise ValueError(  # noqa: TRY004 - one exception type for config errors
                "dimensions and combinations must be lists, not strings"
            )
        dims = tuple(self.dimensions)
        combos = tuple((c,) if isinstance(c, str) else tuple(c) for c in self.combinations)
        object.__setattr__(self, "dimensions", dims)
        object.__setattr__(self, "combinations", combos)

        _check_names(dims, "dimensions")
        if len(set(dims)) != len(dims):
            raise ValueError(f"duplicate dimension in dimensions: {list(dims)}")
        for combo in combos:
            _check_names(combo, f"combination {list(combo)}")
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

        for name in ("min_sessions_per_hour", "monitor_window_days", "session_lookback_hours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")  # noqa: TRY004
        if self.min_sessions_per_hour < 0:
            raise ValueError("min_sessions_per_hour must be >= 0")
        for name, low in (("monitor_window_days", 1), ("session_lookback_hours", 0)):
            value = getattr(self, name)
            if value != int(value) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))

    def dimension_sets(self) -> list[list[str]]:
        """Singles, then combinations, without repeats (order kept: it is the cohort key order)."""
        sets: list[list[str]] = []
        for candidate in [[d] for d in self.dimensions] + [list(c) for c in self.combinations]:
            if candidate not in sets:
                sets.append(candidate)
        return sets

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CohortConfig:
        data = dict(data or {})
        unknown = sorted(set(data) - _CONFIG_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown} in cohort config; known: {sorted(_CONFIG_KEYS)}"
            )
        return cls(
            dimensions=tuple(data.get("dimensions", LEAF_DIMENSIONS) or ()),
            combinations=tuple(data.get("combinations", ()) or ()),
            min_sessions_per_hour=data.get("min_sessions_per_hour", 20),
            monitor_window_days=data.get("monitor_window_days", 7),
            session_lookback_hours=data.get("session_lookback_hours", 3),
        )


def load_cohort_config(path: Path | str | None = None) -> CohortConfig:
    """Read the cohort configuration (default: config/cohorts.yml at the repo root)."""
    path = Path(path) if path is not None else DEFAULT_COHORTS_PATH
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return CohortConfig.from_dict(data)


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
