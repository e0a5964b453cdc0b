"""The Prophet model cache outlives a run: export / import round trip, the DuckDB store
(detection.prophet_models) and the refit schedule across runs. Real Prophet fits on 2 short
synthetic series (~0.2 s a fit) and real DuckDB files in tmp_path; a few seconds in all."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import numpy as np
import pandas as pd

from detectors import Ensemble, ProphetDetector
from funnelwatch.detection.model_store import load_prophet_models, save_prophet_models
from funnelwatch.detection.run import score_window

START = pd.Timestamp("2024-03-04", tz="UTC")
HOLIDAYS = pd.DataFrame({"holiday_date": ["2024-03-06"], "name": ["promo"]})


def hourly(days=10, sids=("a", "b"), seed=0):
    """Hourly daily-sine + noise series, tz-aware UTC ts (the detectors normalise)."""
    rng = np.random.default_rng(seed)
    ts = pd.date_range(START, periods=24 * days, freq="h")
    frames = []
    for i, sid in enumerate(sids):
        season = 1 + 0.5 * np.sin(2 * np.pi * (ts.hour.to_numpy() - 9) / 24)
        value = 100.0 * (1 + i) * season * (1 + 0.03 * rng.standard_normal(len(ts)))
        frames.append(pd.DataFrame({"series_id": sid, "ts": ts, "value": value}))
    return pd.concat(frames, ignore_index=True)


def until(df, ts):
    return df[df["ts"] < ts]


def hour_at(df, ts):
    return df[df["ts"] == ts]


def test_export_import_round_trip_predicts_identically():
    df = hourly()
    cut = START + pd.Timedelta(days=8)
    current = df[(df["ts"] >= cut) & (df["ts"] < cut + pd.Timedelta(hours=12))]
    first = ProphetDetector(holidays=HOLIDAYS).fit(until(df, cut))
    assert first.n_fits_ == 2
    frame = first.export_models()
    assert list(frame.columns) == ["series_id", "fitted_at", "sigma", "fit_seconds", "model_json"]
    assert frame["fitted_at"].dt.tz is None
    assert set(frame["fitted_at"]) == {(cut - pd.Timedelta(hours=1)).tz_localize(None)}
    assert frame["model_json"].map(type).eq(str).all()

    second = ProphetDetector(holidays=HOLIDAYS)
    assert sorted(second.import_models(frame)) == ["a", "b"]
    second.fit(until(df, cut))  # the imported models are current: nothing to fit
    assert second.n_fits_ == 0
    pd.testing.assert_frame_equal(first.score(current), second.score(current))
    for sid in ("a", "b"):
        assert second.models_[sid].fitted_at == first.models_[sid].fitted_at
        assert second.models_[sid].sigma == first.models_[sid].sigma

    # a model fitted with another holiday calendar is not imported (the series gets refitted)
    other = ProphetDetector(holidays=HOLIDAYS.assign(holiday_date=["2024-03-07"]))
    assert other.import_models(frame) == [] and other.n_import_skipped_ == 2
    assert ProphetDetector(holidays=None).import_models(frame) == []


def test_duckdb_store_reuses_young_models_and_refits_old_ones(tmp_path):
    path = str(tmp_path / "warehouse.duckdb")
    df = hourly()
    t1 = START + pd.Timedelta(days=8)

    # run 1: first run on an empty warehouse: no table, every series fitted and saved
    with duckdb.connect(path) as con:
        assert load_prophet_models(con).empty
        run1 = ProphetDetector(refit_every="1D")
        run1.import_models(load_prophet_models(con))
        run1.fit(until(df, t1))
        assert run1.n_fits_ == 2
        assert save_prophet_models(con, run1.export_models()) == 2

    # run 2, an hour later, new process: the stored models are younger than refit_every
    t2 = t1 + pd.Timedelta(hours=1)
    with duckdb.connect(path) as con:
        stored = load_prophet_models(con)
        assert sorted(stored["series_id"]) == ["a", "b"]
        run2 = ProphetDetector(refit_every="1D")
        run2.import_models(stored)
        run2.fit(until(df, t2))
        assert run2.n_fits_ == 0
        pd.testing.assert_frame_equal(run1.score(hour_at(df, t2)), run2.score(hour_at(df, t2)))

    # run 3, refit_every later: the stored models are too old, both refitted and replaced
    t3 = t1 + pd.Timedelta(days=1)
    with duckdb.connect(path) as con:
        run3 = ProphetDetector(refit_every="1D")
        run3.import_models(load_prophet_models(con))
        run3.fit(until(df, t3))
        assert run3.n_fits_ == 2
        assert save_prophet_models(con, run3.export_models()) == 2
        stored = load_prophet_models(con)
    assert set(stored["fitted_at"]) == {(t3 - pd.Timedelta(hours=1)).tz_localize(None)}

    # a backfill of old hours: a stored model fitted on later data is never used for them,
    # and what the backfill refits does not replace the newer stored model
    with duckdb.connect(path) as con:
        backfill = ProphetDetector(refit_every="1D")
        backfill.import_models(load_prophet_models(con))
        backfill.fit(until(df, t1))
        assert backfill.n_fits_ == 2
        assert {m.fitted_at for m in backfill.models_.values()} == {
            (t1 - pd.Timedelta(hours=1)).tz_localize(None)
        }
        assert save_prophet_models(con, backfill.export_models()) == 0
        assert set(load_prophet_models(con)["fitted_at"]) == set(stored["fitted_at"])


def _warehouse(path: str, df: pd.DataFrame) -> None:
    """A marts.fct_cohort_metrics_hourly with `df`'s series as 'sessions' counts per cohort."""
    mart = pd.DataFrame(
        {
            "event_hour": df["ts"],
            "metric": "sessions",
            "cohort": df["series_id"],
            "cohort_dimensions": "{}",
            "value": df["value"].round(),
            "numerator": df["value"].round(),
            "denominator": np.nan,
        }
    )
    with duckdb.connect(path) as con:
        con.execute("CREATE SCHEMA marts")
        con.register("_mart", mart)
        con.execute("CREATE TABLE marts.fct_cohort_metrics_hourly AS SELECT * FROM _mart")


def test_score_window_loads_and_saves_models(tmp_path):
    path = str(tmp_path / "warehouse.duckdb")
    _warehouse(path, hourly())

    def make():
        return Ensemble(prophet_top_n=2, use_multivariate=False)

    def window(hour: pd.Timestamp, **kw):
        start = hour.to_pydatetime()
        with duckdb.connect(path) as con:
            return score_window(con, start, start + timedelta(hours=1), make, **kw)

    h1 = START + pd.Timedelta(days=9)
    first = window(h1)
    assert (first.prophet_fitted, first.prophet_reused, first.prophet_saved) == (2, 0, 2)
    assert len(first.scored) == 2 and first.scored["severity"].notna().all()
    second = window(h1 + pd.Timedelta(hours=1))  # next hourly run: stored models reused
    assert (second.prophet_fitted, second.prophet_reused, second.prophet_saved) == (0, 2, 0)
    assert second.scored["expected"].notna().all()
    unstored = window(h1 + pd.Timedelta(hours=1), persist_models=False)
    assert (unstored.prophet_fitted, unstored.prophet_reused, unstored.prophet_saved) == (2, 0, 0)
    with duckdb.connect(path) as con:
        stored = load_prophet_models(con)
    assert sorted(stored["series_id"]) == ["sessions|a", "sessions|b"]
    assert set(stored["fitted_at"]) == {(h1 - pd.Timedelta(hours=1)).tz_localize(None)}
