"""funnelwatch.dbt_vars: the --vars dict passed to dbt and the cohort configuration."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from funnelwatch.dbt_vars import (
    ALLOWED_DIMENSIONS,
    DEFAULT_COHORTS_PATH,
    LEAF_DIMENSIONS,
    REPO_ROOT,
    CohortConfig,
    build_dbt_vars,
    dbt_vars_json,
    format_dbt_time,
    load_cohort_config,
)

CFG = CohortConfig(dimensions=("os",), combinations=(("os", "browser"),))


def test_window_formatting_utc():
    out = build_dbt_vars(
        datetime(2026, 11, 1, 13, tzinfo=UTC), datetime(2026, 11, 1, 14, tzinfo=UTC), CFG
    )
    assert out["window_start"] == "2026-11-01 13:00:00"
    assert out["window_end"] == "2026-11-01 14:00:00"


def test_tz_aware_inputs_converted_to_utc():
    cet = timezone(timedelta(hours=1))
    out = build_dbt_vars(
        datetime(2026, 11, 1, 14, 30, tzinfo=cet), datetime(2026, 11, 2, 0, 0, tzinfo=cet), CFG
    )
    assert out["window_start"] == "2026-11-01 13:30:00"
    assert out["window_end"] == "2026-11-01 23:00:00"


def test_naive_inputs_taken_as_utc():
    out = build_dbt_vars(datetime(2026, 3, 29, 1), datetime(2026, 3, 29, 2), CFG)
    assert (out["window_start"], out["window_end"]) == (
        "2026-03-29 01:00:00",
        "2026-03-29 02:00:00",
    )
    assert format_dbt_time(datetime(2026, 1, 2, 3, 4, 5, 678)) == "2026-01-02 03:04:05"


@pytest.mark.parametrize(
    "start,end",
    [
        (datetime(2026, 1, 1, 2, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)),
        (datetime(2026, 1, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, 1, tzinfo=UTC)),
        # equal instants in different zones
        (datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=1))), datetime(2026, 1, 1, 1)),
    ],
)
def test_end_must_be_after_start(start, end):
    with pytest.raises(ValueError, match="window_end"):
        build_dbt_vars(start, end, CFG)


def test_non_datetime_rejected():
    with pytest.raises(TypeError):
        build_dbt_vars("2026-01-01", datetime(2026, 1, 2), CFG)  # type: ignore[arg-type]


def test_cohort_vars_singles_then_combinations():
    cfg = CohortConfig(
        dimensions=("device_type", "os", "category"),
        combinations=(("device_type", "os"), ("os", "browser", "utm_campaign"), ("os",)),
        min_sessions_per_hour=12.5,
        monitor_window_days=14,
        session_lookback_hours=2,
    )
    out = build_dbt_vars(datetime(2026, 1, 1), datetime(2026, 1, 1, 1), cfg)
    assert out["cohort_dimension_sets"] == [
        ["device_type"],
        ["os"],
        ["category"],
        ["device_type", "os"],
        ["os", "browser", "utm_campaign"],
    ]  # ["os"] again is not repeated
    assert out["cohort_min_sessions_per_hour"] == 12.5
    assert out["monitor_window_days"] == 14
    assert out["session_lookback_hours"] == 2
    assert set(out) == {
        "window_start",
        "window_end",
        "cohort_dimension_sets",
        "cohort_min_sessions_per_hour",
        "monitor_window_days",
        "session_lookback_hours",
    }


def test_unknown_dimension_lists_allowed():
    with pytest.raises(ValueError) as err:
        CohortConfig(dimensions=("os", "planet"))
    message = str(err.value)
    assert "planet" in message
    for name in ALLOWED_DIMENSIONS:
        assert name in message


def test_unknown_dimension_in_combination():
    with pytest.raises(ValueError, match="colour"):
        CohortConfig(dimensions=("os",), combinations=(("os", "colour"),))


def test_category_only_as_single_dimension():
    CohortConfig(dimensions=("category",))  # fine alone
    with pytest.raises(ValueError, match="single dimension"):
        CohortConfig(dimensions=("os",), combinations=(("os", "category"),))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dimensions": ("os", "os")},
        {"dimensions": ("os",), "combinations": (("os", "os"),)},
        {"dimensions": ("os",), "combinations": ((),)},
        {"min_sessions_per_hour": -1},
        {"monitor_window_days": 0},
        {"monitor_window_days": 1.5},
        {"session_lookback_hours": -1},
        {"session_lookback_hours": "3"},
        {"dimensions": "os"},
    ],
)
def test_invalid_configs(kwargs):
    with pytest.raises(ValueError):
        CohortConfig(**kwargs)


def test_unknown_config_key(tmp_path: Path):
    path = tmp_path / "cohorts.yml"
    path.write_text("dimensions: [os]\nmin_session_per_hour: 5\n")
    with pytest.raises(ValueError, match="min_session_per_hour"):
        load_cohort_config(path)


def test_load_from_file(tmp_path: Path):
    path = tmp_path / "cohorts.yml"
    path.write_text(
        "dimensions: [country]\ncombinations:\n  - [country, device_type]\n"
        "min_sessions_per_hour: 5\nmonitor_window_days: 3\nsession_lookback_hours: 1\n"
    )
    cfg = load_cohort_config(path)
    assert cfg == CohortConfig(
        dimensions=("country",),
        combinations=(("country", "device_type"),),
        min_sessions_per_hour=5,
        monitor_window_days=3,
        session_lookback_hours=1,
    )


def test_default_file_round_trip():
    cfg = load_cohort_config()
    raw = yaml.safe_load(DEFAULT_COHORTS_PATH.read_text())
    assert list(cfg.dimensions) == raw["dimensions"]
    assert [list(c) for c in cfg.combinations] == raw["combinations"]
    assert cfg.dimension_sets() == [[d] for d in raw["dimensions"]] + raw["combinations"]
    assert cfg.min_sessions_per_hour == raw["min_sessions_per_hour"]
    assert cfg.monitor_window_days == raw["monitor_window_days"]
    assert cfg.session_lookback_hours == raw["session_lookback_hours"]
    assert {d for s in cfg.dimension_sets() for d in s} <= set(ALLOWED_DIMENSIONS)

    text = dbt_vars_json(datetime(2026, 11, 1, 13), datetime(2026, 11, 1, 14))
    again = json.loads(text)
    assert again == build_dbt_vars(datetime(2026, 11, 1, 13), datetime(2026, 11, 1, 14), cfg)
    assert again["cohort_dimension_sets"] == cfg.dimension_sets()


def test_dbt_project_defaults_match_config_file():
    """The var defaults in dbt_project.yml (used by a plain `dbt build`) mirror config/cohorts.yml."""
    project = yaml.safe_load((REPO_ROOT / "dbt_project" / "dbt_project.yml").read_text())
    defaults = project["vars"]
    expected = build_dbt_vars(datetime(2026, 1, 1), datetime(2026, 1, 2), load_cohort_config())
    for key in (
        "cohort_dimension_sets",
        "cohort_min_sessions_per_hour",
        "monitor_window_days",
        "session_lookback_hours",
    ):
        assert defaults[key] == expected[key], key
    assert defaults["window_start"] <= "1970-01-01 00:00:00"
    assert defaults["window_end"] >= "2100-01-01 00:00:00"


def test_leaf_dimensions_match_dbt_macro():
    macro = (REPO_ROOT / "dbt_project" / "macros" / "cohorts.sql").read_text()
    assert str(list(LEAF_DIMENSIONS)) in macro
