"""Prophet per series: daily + weekly seasonality, holiday / promotion calendar, cached models.

* ``holidays``: DataFrame with ``holiday_date`` and ``name`` (extra columns ``lower_window`` /
  ``upper_window`` are passed through), given to Prophet's ``holidays``.
* Models are cached in ``self.models_`` (an in-memory dict series_id -> :class:`CachedModel` with
  ``fitted_at`` = last history timestamp used, naive UTC). ``fit(history)`` refits a series only
  when it has no model, its model is older than ``refit_every`` (last history ts - fitted_at), or
  its model is newer than the history (fitted on later data, e.g. a stored model met by a
  backfill: never score a point with a model that has seen it); ``score`` reuses the cached model
  and calls ``predict`` once per series for all its current timestamps. ``n_fits_`` counts the
  fits this instance has done (imported models are not fits).
* The cache can outlive the process: ``export_models()`` gives a DataFrame (series_id,
  fitted_at, sigma, fit_seconds, model_json: ``prophet.serialize.model_to_json``, which keeps
  what ``predict`` needs but not the Stan fit) and ``import_models(frame)`` puts such rows back
  (``model_from_json``; predictions identical to the exported model's). Rows whose model was
  fitted with another configuration (seasonalities, holiday calendar, ``uncertainty_samples``,
  and ``interval_width`` when sampling) are not imported, so those series are refitted. Storage
  is the caller's business (funnelwatch.detection.model_store keeps them in DuckDB).
* Band: with ``uncertainty_samples=0`` (default, fast) the band is yhat +- z sigma, sigma = the
  in-sample residual standard deviation and z matched to ``interval_width`` (from sensitivity);
  with ``uncertainty_samples > 0`` Prophet's own yhat_lower / yhat_upper at ``interval_width``.
* Score scale: |value - yhat| / sigma (sigma units). p_value NaN.
* Series with fewer than ``min_history`` points are left unscored (NaN expected, no anomaly).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from detectors.base import Detector, direction_of, normalize_ts


def silence_prophet_logging() -> None:
    for name in ("cmdstanpy", "prophet", "prophet.plot"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.ERROR)
        lg.propagate = False
        lg.disabled = True


MODEL_COLUMNS = ["series_id", "fitted_at", "sigma", "fit_seconds", "model_json"]


@dataclass
class CachedModel:
    model: Any
    fitted_at: pd.Timestamp
    sigma: float
    fit_seconds: float


class ProphetDetector(Detector):
    name = "prophet"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        holidays: pd.DataFrame | None = None,
        refit_every: str | pd.Timedelta = "7D",
        history_days: int = 56,
        min_history: int = 24 * 7,
        uncertainty_samples: int = 0,
        series: list[str] | None = None,
        rate_floor: float = 0.01,
    ):
        super().__init__(sensitivity)
        self.holidays = holidays
        self.refit_every = pd.Timedelta(refit_every)
        self.history_days, self.min_history = history_days, min_history
        self.uncertainty_samples = uncertainty_samples
        self.series = series
        self.rate_floor = rate_floor
        self.models_: dict[str, CachedModel] = {}
        self.n_fits_ = 0  # fits done by this instance (in this process); imports are not fits
        self.n_import_skipped_ = 0  # stored models not imported: fitted with another config
        silence_prophet_logging()

    def _holidays_frame(self) -> pd.DataFrame | None:
        if self.holidays is None or len(self.holidays) == 0:
            return None
        h = self.holidays.copy()
        if "holiday_date" not in h.columns or "name" not in h.columns:
            raise ValueError("holidays must have columns 'holiday_date' and 'name'")
        ds = normalize_ts(pd.Series(pd.to_datetime(h["holiday_date"]))).dt.normalize()
        out = pd.DataFrame({"holiday": h["name"].astype(str).to_numpy(), "ds": ds.to_numpy()})
        for col in ("lower_window", "upper_window"):
            out[col] = h[col].to_numpy() if col in h.columns else 0
        return out

    def _new_model(self):
        from prophet import Prophet

        silence_prophet_logging()
        return Prophet(
            daily_seasonality=True,
            weekly_seasonality=True,
            yearly_seasonality=False,
            holidays=self._holidays_frame(),
            interval_width=self.thresholds_.interval_width,
            uncertainty_samples=self.uncertainty_samples,
        )

    def _fit(self, history: pd.DataFrame) -> None:
        silence_prophet_logging()
        h = history[["series_id", "ts", "value"]].dropna(subset=["value"])
        if self.series is not None:
            h = h[h["series_id"].isin(set(self.series))]
        for sid, g in h.groupby("series_id", sort=False):
            last = g["ts"].max()
            cached = self.models_.get(sid)
            if cached is not None and cached.fitted_at > last:
                # fitted on later data (a stored model met by a backfill): unusable here
                del self.models_[sid]
            elif cached is not None and last - cached.fitted_at < self.refit_every:
                continue
            g = g[g["ts"] > last - pd.Timedelta(days=self.history_days)]
            if len(g) < self.min_history:
                continue
            df = pd.DataFrame({"ds": g["ts"].to_numpy(), "y": g["value"].to_numpy()})
            t0 = time.perf_counter()
            m = self._new_model()
            m.fit(df)
            fit_s = time.perf_counter() - t0
            yhat = (
                m.predict(df[["ds"]])["yhat"].to_numpy()
                if self.uncertainty_samples == 0
                else self._predict_mean(m, df[["ds"]])
            )
            resid = df["y"].to_numpy() - yhat
            sigma = float(np.std(resid, ddof=1)) if len(resid) > 1 else 0.0
            sigma = max(sigma, self.rate_floor * float(np.abs(df["y"]).median()), 1e-9)
            self.models_[sid] = CachedModel(m, last, sigma, fit_s)
            self.n_fits_ += 1

    # ------------------------------------------------------------------------------------------
    def _config_key(self, model) -> tuple:
        """What must match for a stored model to stand in for a fit with this configuration."""
        hol = model.holidays
        if hol is None or len(hol) == 0:
            days: tuple = ()
        else:
            lo = hol["lower_window"] if "lower_window" in hol.columns else pd.Series(0, hol.index)
            up = hol["upper_window"] if "upper_window" in hol.columns else pd.Series(0, hol.index)
            days = tuple(
                sorted(
                    (str(n), pd.Timestamp(d).strftime("%Y-%m-%d"), int(a), int(b))
                    for n, d, a, b in zip(hol["holiday"], hol["ds"], lo, up)
                )
            )
        samples = int(model.uncertainty_samples or 0)
        return (
            model.daily_seasonality,
            model.weekly_seasonality,
            model.yearly_seasonality,
            samples,
            round(float(model.interval_width), 12) if samples else None,
            days,
        )

    def export_models(self, series_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """The cached models (all, or those of ``series_ids``) as rows of ``MODEL_COLUMNS``:
        ``fitted_at`` naive UTC, ``model_json`` from ``prophet.serialize.model_to_json``."""
        from prophet.serialize import model_to_json

        keep = None if series_ids is None else set(series_ids)
        rows = [
            (sid, c.fitted_at, c.sigma, c.fit_seconds, model_to_json(c.model))
            for sid, c in self.models_.items()
            if keep is None or sid in keep
        ]
        out = pd.DataFrame(rows, columns=MODEL_COLUMNS)
        out["series_id"] = out["series_id"].astype(object)
        out["fitted_at"] = normalize_ts(pd.Series(pd.to_datetime(out["fitted_at"])))
        out["sigma"] = out["sigma"].astype(float)
        out["fit_seconds"] = out["fit_seconds"].astype(float)
        out["model_json"] = out["model_json"].astype(object)
        return out

    def import_models(self, frame: pd.DataFrame, replace: bool = False) -> list[str]:
        """Put exported models (rows of ``MODEL_COLUMNS``) into the cache; returns the imported
        series ids. A series that already has a model keeps it unless ``replace``; a row whose
        model was fitted with another configuration (see ``_config_key``) is skipped and
        counted in ``n_import_skipped_``. ``n_fits_`` is not touched."""
        from prophet.serialize import model_from_json

        missing = [c for c in MODEL_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"model frame is missing column(s) {missing}")
        if len(frame) == 0:
            return []
        fitted_at = normalize_ts(pd.Series(pd.to_datetime(frame["fitted_at"]).to_numpy()))
        want = self._config_key(self._new_model())
        imported = []
        for sid, at, sigma, fit_s, js in zip(
            frame["series_id"].astype(str),
            fitted_at,
            frame["sigma"].astype(float),
            frame["fit_seconds"].astype(float),
            frame["model_json"],
        ):
            if sid in self.models_ and not replace:
                continue
            with warnings.catch_warnings():  # prophet 1.5's read_json(convert_dates=) on pandas 3
                warnings.filterwarnings("ignore", message=".*convert_dates.*")
                model = model_from_json(js)
            if self._config_key(model) != want:
                self.n_import_skipped_ += 1
                continue
            self.models_[sid] = CachedModel(model, pd.Timestamp(at), float(sigma), float(fit_s))
            imported.append(sid)
        return imported

    @staticmethod
    def _predict_mean(m, ds: pd.DataFrame) -> np.ndarray:
        return m.predict(ds)["yhat"].to_numpy()

    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        n = len(current)
        exp = np.full(n, np.nan)
        lo = np.full(n, np.nan)
        hi = np.full(n, np.nan)
        sig = np.full(n, np.nan)
        pos = pd.Series(np.arange(n), index=current.index)
        z_thr = stats.norm.isf((1 - self.thresholds_.interval_width) / 2)
        for sid, g in current.groupby("series_id", sort=False):
            cached = self.models_.get(sid)
            if cached is None:
                continue
            idx = pos.loc[g.index].to_numpy()
            fc = cached.model.predict(pd.DataFrame({"ds": g["ts"].to_numpy()}))
            yhat = fc["yhat"].to_numpy()
            exp[idx] = yhat
            sig[idx] = cached.sigma
            if self.uncertainty_samples > 0:
                lo[idx], hi[idx] = fc["yhat_lower"].to_numpy(), fc["yhat_upper"].to_numpy()
            else:
                lo[idx], hi[idx] = yhat - z_thr * cached.sigma, yhat + z_thr * cached.sigma
        x = current["value"].to_numpy()
        z = np.abs(x - exp) / sig
        z = np.where(np.isfinite(z), z, 0.0)
        out = pd.DataFrame(index=current.index)
        out["expected"], out["lower"], out["upper"] = exp, lo, hi
        out["score"] = z
        out["p_value"] = np.nan
        out["direction"] = direction_of(x - exp)
        out["is_anomaly"] = np.isfinite(exp) & ((x < lo) | (x > hi))
        out["reason"] = [
            f"Prophet yhat {e:.4g} [{a:.4g}, {b:.4g}], z={zz:.1f}" if np.isfinite(e) else "no model"
            for e, a, b, zz in zip(exp, lo, hi, z)
        ]
        out["sigma"] = sig
        return out
