"""The ensemble: one ``severity`` 0..100 per point, ``detectors_fired`` and ``why``.

Rules (see docs/detectors.md):

* Shape detectors: hour-of-week median/MAD, EWMA, CUSUM, Prophet (only the ``prophet_top_n``
  highest-volume series, cached models). Each gives a normalised score e = score / threshold
  (1 = at its own threshold); only deviations in the metric's alerting direction
  (``config.METRIC_DIRECTIONS``) count. E_shape = max of those.
* Verdict (``mode='rate'``): the sequential test on counts (``detectors/sequential.py``: a
  window-limited one-sided binomial / Poisson GLR over the last 1..72 hours against the seasonal
  expectation, overdispersion from history, thresholds from a false-alarm budget per day over
  all monitored series) gives E_seq = -log10(p_seq) / -log10(p*); raw = E_seq, on its own. The
  shape detectors and the point test (beta-binomial / negative binomial on the hour alone,
  E_stat = -log10(p) / -log10(alpha)) are context: they appear in ``detectors_fired`` / ``why``
  but no longer veto. ``mode='univariate'`` (plain value series, e.g. NAB): no volume test, so
  the gate is agreement of two shape detectors: raw = the second-largest normalised shape score.
* severity = 100 * raw / (1 + raw): 50 is the alert threshold, it approaches 100 as evidence grows.
* Minimum volume: a sequential window counts only if its pooled denominator >= ``min_denominator``
  (rates) or max(observed, expected) >= ``min_count`` (counts), and a count's own hour must
  reach ``min_count`` too (tiny cohorts never page on traffic); a row with no such window ->
  severity 0, not an anomaly, reason 'low volume'.
* Cold start: a series with less than ``cold_start_hours`` of history -> severity 0, reason
  'cold start'; under ``warm_up_hours``: baselines only (no Prophet), the shape detectors'
  normalised scores divided by ``WARM_UP_BAND_FACTOR`` (bands 1.5x wider), and so is the
  sequential test's evidence on counts; on rates it is not (its variance holds the young
  expectation's error).
* Multivariate (PyOD) verdicts per (cohort, ts) are in ``multivariate_`` after ``score``; when one
  fires, 'multivariate' is added to ``detectors_fired`` of that cohort's rows at that ts (context
  only: it does not by itself make a row an anomaly).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors import config as cfg
from detectors.base import (
    SCORE_COLUMNS,
    Detector,
    direction_of,
    normalize_ts,
    validate_frame,
)
from detectors.baselines import EWMABaseline, HourOfWeekBaseline
from detectors.changepoint import CUSUMDetector
from detectors.config import log10p
from detectors.multivariate import MultivariateDetector
from detectors.prophet_detector import ProphetDetector
from detectors.sequential import SequentialTest
from detectors.stats import CountTest, RateTest

ENSEMBLE_COLUMNS = SCORE_COLUMNS + ["severity", "detectors_fired", "why", "run_start",
                                    "window_hours"]


class Ensemble(Detector):
    name = "ensemble"

    def __init__(
        self,
        sensitivity: float | str = "medium",
        mode: str = "rate",
        use_prophet: bool = True,
        prophet_top_n: int = 50,
        holidays: pd.DataFrame | None = None,
        prophet_refit_every: str = "7D",
        use_ewma: bool = True,
        use_cusum: bool = True,
        use_multivariate: bool = True,
        min_denominator: float = cfg.MIN_DENOMINATOR,
        min_count: float = cfg.MIN_COUNT,
        cold_start_hours: float = cfg.COLD_START_HOURS,
        warm_up_hours: float = cfg.WARM_UP_HOURS,
        directions: dict[str, str] | None = None,
        ewma_span: int = 48,
        weeks: int = 4,
        days: int = 7,
        cusum_lookback: int = 48,
        calendar_lift: float = cfg.CALENDAR_LIFT,
        min_count_rise: float = cfg.MIN_COUNT_RISE,
        min_count_drop: float = cfg.MIN_COUNT_DROP,
        false_alarms_per_day: float = cfg.FALSE_ALARMS_PER_DAY,
        n_series: int | None = None,
    ):
        super().__init__(sensitivity)
        if mode not in ("rate", "univariate"):
            raise ValueError(f"mode must be 'rate' or 'univariate', got {mode!r}")
        self.mode = mode
        self.use_prophet, self.prophet_top_n = use_prophet, prophet_top_n
        self.use_ewma, self.use_cusum, self.use_multivariate = use_ewma, use_cusum, use_multivariate
        self.min_denominator, self.min_count = min_denominator, min_count
        self.cold_start_hours, self.warm_up_hours = cold_start_hours, warm_up_hours
        self.directions = dict(cfg.METRIC_DIRECTIONS if directions is None else directions)
        self.ewma_span, self.weeks, self.days, self.cusum_lookback = (
            ewma_span,
            weeks,
            days,
            cusum_lookback,
        )
        self.requires_counts = False
        self.calendar_lift = calendar_lift
        self.min_count_rise, self.min_count_drop = min_count_rise, min_count_drop
        self.false_alarms_per_day, self.n_series = false_alarms_per_day, n_series
        self.calendar_days_ = _calendar_days(holidays)
        # persistent across fits: the Prophet model cache and when each series was first seen
        self.prophet_ = ProphetDetector(
            sensitivity, holidays=holidays, refit_every=prophet_refit_every
        )
        self.first_seen_: pd.Series = pd.Series(dtype="datetime64[ns]")
        self.timings_: dict[str, float] = {}

    # ------------------------------------------------------------------------------------------
    def _metric(self, series_ids: pd.Series, frame: pd.DataFrame) -> np.ndarray:
        if "metric" in frame.columns:
            return frame["metric"].astype(str).to_numpy()
        return np.array([cfg.split_series_id(s)[0] for s in series_ids], dtype=object)

    def _allowed(self, metrics: np.ndarray) -> np.ndarray:
        if self.mode == "univariate":
            return np.full(len(metrics), cfg.DEFAULT_DIRECTION, dtype=object)
        return np.array(
            [self.directions.get(m, cfg.DEFAULT_DIRECTION) for m in metrics], dtype=object
        )

    def _near_calendar(self, ts: pd.Series) -> np.ndarray:
        """True for hours on or near a holiday / promotion day: a local calendar day D in the
        store's time zones (UTC-5 .. UTC+11, rounded out) is [D - 12 h, D + 30 h) in UTC, so
        ts + 12 h, ts or ts - 6 h falls on D."""
        near = np.zeros(len(ts), dtype=bool)
        if not self.calendar_days_.size:
            return near
        ts_naive = normalize_ts(ts)
        for shift in (12, 0, -6):
            days = (ts_naive + pd.Timedelta(hours=shift)).dt.normalize().to_numpy()
            near |= np.isin(days, self.calendar_days_)
        return near

    @staticmethod
    def _store_lift(sids, metrics, current, x, expected) -> np.ndarray:
        """Per row, max(1, observed / expected) of the same metric's `all` cohort at the same
        ts (1 where the store-wide series is not in the frame)."""
        cohorts = np.array([cfg.split_series_id(s)[1] for s in sids], dtype=object)
        is_all = cohorts == "all"
        lift = np.ones(len(x))
        if not is_all.any():
            return lift
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(is_all & (expected > 0), x / expected, np.nan)
        ts = current["ts"].to_numpy()
        table = pd.Series(ratio[is_all], index=pd.MultiIndex.from_arrays(
            [metrics[is_all], ts[is_all]]))
        table = table[~table.index.duplicated()]
        looked_up = table.reindex(pd.MultiIndex.from_arrays([metrics, ts])).to_numpy()
        return np.where(np.isfinite(looked_up), np.maximum(looked_up, 1.0), 1.0)

    def _fit(self, history: pd.DataFrame) -> None:
        import time

        t = {}
        t0 = time.perf_counter()
        # first seen = first *active* hour (a cohort zero-filled before its campaign started is
        # new when its traffic starts, and gets the cold start then)
        active = np.where(
            history["denominator"].notna(), history["denominator"] > 0, history["value"].abs() > 0
        )
        fs = history.groupby("series_id")["ts"].min()
        first_active = history[active].groupby("series_id")["ts"].min()
        self.first_seen_ = pd.concat([self.first_seen_, first_active]).groupby(level=0).min()
        self.how_ = HourOfWeekBaseline(self.sensitivity, weeks=self.weeks, days=self.days)
        self.how_._fit(history)
        self.how_.fitted_ = True
        t["hour_of_week"] = time.perf_counter() - t0
        if self.use_ewma:
            t0 = time.perf_counter()
            self.ewma_ = EWMABaseline(self.sensitivity, span=self.ewma_span)
            self.ewma_._fit(history)
            self.ewma_.fitted_ = True
            t["ewma"] = time.perf_counter() - t0
        if self.use_cusum:
            t0 = time.perf_counter()
            self.cusum_ = CUSUMDetector(
                self.sensitivity, baseline=self.how_, lookback=self.cusum_lookback
            )
            self.cusum_._fit(history)
            self.cusum_.fitted_ = True
            t["cusum"] = time.perf_counter() - t0
        self.is_rate_ = (
            history.groupby("series_id")["denominator"].apply(lambda s: s.notna().any())
            if self.mode == "rate"
            else pd.Series(False, index=fs.index)
        )
        if self.mode == "rate":
            t0 = time.perf_counter()
            rate_ids = set(self.is_rate_[self.is_rate_].index)
            is_rate_row = history["series_id"].isin(rate_ids)
            self.rate_test_ = RateTest(self.sensitivity, baseline=self.how_)
            self.count_test_ = CountTest(self.sensitivity, baseline=self.how_)
            if is_rate_row.any():
                self.rate_test_.fit(history[is_rate_row])
            if (~is_rate_row).any():
                self.count_test_.fit(history[~is_rate_row])
            self.seq_ = SequentialTest(
                self.sensitivity, baseline=self.how_,
                false_alarms_per_day=self.false_alarms_per_day, n_series=self.n_series,
                directions=self.directions, min_denominator=self.min_denominator,
                min_count=self.min_count, min_count_rise=self.min_count_rise,
                min_count_drop=self.min_count_drop,
            )
            self.seq_._fit(history)
            self.seq_.fitted_ = True
            t["stats"] = time.perf_counter() - t0
        if self.use_prophet and self.prophet_top_n > 0:
            t0 = time.perf_counter()
            span_h = (
                history.groupby("series_id")["ts"].max() - self.first_seen_.reindex(fs.index)
            ) / pd.Timedelta(hours=1)
            vol = (
                history.assign(
                    vol=np.where(
                        history["denominator"].notna(),
                        history["denominator"],
                        history["value"].abs(),
                    )
                )
                .groupby("series_id")["vol"]
                .mean()
            )
            vol = vol[span_h.reindex(vol.index) >= self.warm_up_hours]
            top = list(vol.sort_values(ascending=False, kind="stable").index[: self.prophet_top_n])
            self.prophet_series_ = top
            self.prophet_.series = top
            self.prophet_._fit(history[history["series_id"].isin(set(top))])
            self.prophet_.fitted_ = True
            t["prophet"] = time.perf_counter() - t0
        if self.use_multivariate and self.mode == "rate":
            t0 = time.perf_counter()
            metrics = self._metric(history["series_id"], history)
            self.mv_ = None
            if len(set(metrics)) >= 2:
                self.mv_ = MultivariateDetector(self.sensitivity)
                self.mv_._fit(history)
                self.mv_.fitted_ = True
            t["multivariate"] = time.perf_counter() - t0
        self.timings_["fit"] = t

    # ------------------------------------------------------------------------------------------
    def _score(self, current: pd.DataFrame) -> pd.DataFrame:
        import time

        th = self.thresholds_
        t = {}
        n = len(current)
        sids = current["series_id"]
        metrics = self._metric(sids, current)
        allowed = self._allowed(metrics)
        x = current["value"].to_numpy()
        first = self.first_seen_.reindex(sids.to_numpy()).to_numpy(dtype="datetime64[ns]")
        hours = (current["ts"].to_numpy() - first) / np.timedelta64(1, "h")
        hours = np.where(np.isnan(hours), 0.0, hours)
        warm = hours < self.warm_up_hours
        band = np.where(warm, cfg.WARM_UP_BAND_FACTOR, 1.0)

        def ok_dir(d):
            d = np.asarray(d, dtype=object)
            # allowed 'none' (a context-only metric) never matches: it is scored, never alerts
            return (((allowed == "both") & (d != "none")) | (d == allowed)) & (allowed != "none")

        parts: dict[str, pd.DataFrame] = {}
        norm: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        parts["hour_of_week"] = self.how_._score(current)
        norm["hour_of_week"] = parts["hour_of_week"]["score"].to_numpy() / th.z
        t["hour_of_week"] = time.perf_counter() - t0
        if self.use_ewma:
            t0 = time.perf_counter()
            parts["ewma"] = self.ewma_._score(current)
            norm["ewma"] = parts["ewma"]["score"].to_numpy() / th.z
            t["ewma"] = time.perf_counter() - t0
        if self.use_cusum:
            t0 = time.perf_counter()
            parts["cusum"] = self.cusum_._score(current)
            norm["cusum"] = parts["cusum"]["score"].to_numpy() / th.cusum_h
            t["cusum"] = time.perf_counter() - t0
        if self.use_prophet and self.prophet_top_n > 0 and getattr(self.prophet_, "fitted_", False):
            t0 = time.perf_counter()
            sel = sids.isin(set(self.prophet_series_)).to_numpy()
            pr = self.prophet_._score(current[sel]).reindex(current.index)
            pr["score"] = pr["score"].fillna(0.0)
            pr["direction"] = pr["direction"].fillna("none")
            pr["is_anomaly"] = pr["is_anomaly"].fillna(False).astype(bool)
            parts["prophet"] = pr
            z_p = np.nan_to_num(
                (pr["upper"] - pr["expected"]).to_numpy() / pr["sigma"].to_numpy(), nan=np.inf
            )
            e = pr["score"].to_numpy() / z_p
            norm["prophet"] = np.where(warm, 0.0, np.nan_to_num(e))
            t["prophet"] = time.perf_counter() - t0

        e_shape = np.zeros(n)
        fired: dict[str, np.ndarray] = {}
        for name, e in norm.items():
            e = np.nan_to_num(e) / band
            good = ok_dir(parts[name]["direction"].to_numpy()) & np.isfinite(e)
            e = np.where(good, e, 0.0)
            norm[name] = e
            fired[name] = e > 1.0
            e_shape = np.maximum(e_shape, e)

        p_value = np.full(n, np.nan)
        window_hours = np.full(n, np.nan)  # hours of evidence behind the verdict
        stat_reason = np.full(n, "", dtype=object)
        low_volume = np.zeros(n, dtype=bool)
        if self.mode == "rate":
            t0 = time.perf_counter()
            is_rate = (
                self.is_rate_.reindex(sids.to_numpy()).fillna(False).to_numpy(dtype=bool).copy()
            )
            is_rate |= current["denominator"].notna().to_numpy()
            st = pd.DataFrame(index=current.index, columns=["p_value", "direction", "reason"])
            if is_rate.any():
                r = (
                    self.rate_test_._score(current[is_rate])
                    if getattr(self.rate_test_, "fitted_", False)
                    else None
                )
                if r is not None:
                    st.loc[r.index, ["p_value", "direction", "reason"]] = r[
                        ["p_value", "direction", "reason"]
                    ].to_numpy()
            if (~is_rate).any():
                c = (
                    self.count_test_._score(current[~is_rate])
                    if getattr(self.count_test_, "fitted_", False)
                    else None
                )
                if c is not None:
                    st.loc[c.index, ["p_value", "direction", "reason"]] = c[
                        ["p_value", "direction", "reason"]
                    ].to_numpy()
            p_value = pd.to_numeric(st["p_value"], errors="coerce").to_numpy(dtype=float)
            sdir = st["direction"].fillna("none").to_numpy()
            stat_reason = st["reason"].fillna("no test").to_numpy()
            e_stat = np.where(
                ok_dir(sdir) & np.isfinite(p_value),
                log10p(np.nan_to_num(p_value, nan=1.0)) / -np.log10(th.alpha),
                0.0,
            )
            # an immature baseline (warm-up) is less reliable for the test too
            e_stat = e_stat / band
            fired["stats"] = e_stat > 1.0
            # The verdict: the sequential test's evidence on its own (detectors/sequential.py).
            # Window 1 is this hour alone; longer windows add up a sustained shift that no
            # single hour shows. The volume floor and the counts' practical-effect rule apply
            # per window there; the shape detectors and the point test above are context
            # (detectors_fired, why), no longer a veto.
            seq = self.seq_._score(current)
            window_hours = seq["window_hours"].to_numpy(dtype=float)
            p_value = seq["p_value"].to_numpy(dtype=float)
            # a rate's evidence is not widened in warm-up: the test's variance holds the error
            # of a young series' expectation already (its pooled trials and the prior's,
            # detectors/sequential.py); a count's is (its hour-of-week expectation from a few
            # days has no such term: a week-old campaign's sessions paged on its own ramp-up)
            e_seq = np.nan_to_num(seq["score"].to_numpy(dtype=float)) / np.where(
                is_rate, 1.0, band)
            norm["sequential"] = e_seq
            fired["sequential"] = e_seq > 1.0
            raw = e_seq
            stat_reason = np.where(
                seq["qualified"].to_numpy(dtype=bool),
                seq["reason"].to_numpy(dtype=object) + "; point " + stat_reason, stat_reason)
            den = current["denominator"].to_numpy()
            exp_h = parts["hour_of_week"]["expected"].to_numpy()
            vol_count = np.fmax(np.abs(x), np.abs(exp_h))
            # Rates: 'low volume' only when no window of the series reaches the volume floor
            # (a cohort with a handful of checkouts an hour shows a lasting drop over hours).
            # Counts: the hour itself must reach the floor: traffic rising from 1 to 5
            # sessions an hour in a tiny cohort is evidence that piles up, and nobody's problem
            # (the demo paged for cohorts of fewer than 20 sessions over 3-9 hours).
            low_volume = np.where(
                is_rate,
                ~seq["qualified"].to_numpy(dtype=bool) & ~(den >= self.min_denominator),
                ~(vol_count >= self.min_count),
            )
            t["stats"] = time.perf_counter() - t0
        else:
            # univariate: no volume test, so the gate is agreement of two shape detectors
            stack = (
                np.sort(np.column_stack([norm[k] for k in norm]), axis=1)
                if norm
                else np.zeros((n, 1))
            )
            raw = stack[:, -2] if stack.shape[1] >= 2 else stack[:, -1]
        # Holidays and promotions lift traffic by design: on those days a rise of a count is an
        # alert only beyond `calendar_lift` times the usual level, scaled by the store-wide lift
        # of that metric in that hour (a promotion lifts every cohort; a bot spike lifts one far
        # beyond the store).
        calendar_rise = np.zeros(n, dtype=bool)
        if self.mode == "rate" and self.calendar_days_.size:
            expected_count = parts["hour_of_week"]["expected"].to_numpy()
            allowance = (self.calendar_lift * np.abs(expected_count)
                         * self._store_lift(sids, metrics, current, x, expected_count))
            near = self._near_calendar(current["ts"])
            calendar_rise = (
                near & ~is_rate & (x > expected_count) & (x <= allowance)
            )
            raw = np.where(calendar_rise, 0.0, raw)
        cold = hours < self.cold_start_hours
        missing = ~np.isfinite(x)
        blocked = cold | low_volume | missing
        raw = np.where(blocked, 0.0, raw)
        is_anom = raw > 1.0
        severity = 100.0 * raw / (1.0 + raw)

        # expected / band: Prophet where it has a model, else hour-of-week
        base = parts["hour_of_week"]
        expected = base["expected"].to_numpy().copy()
        lower, upper = base["lower"].to_numpy().copy(), base["upper"].to_numpy().copy()
        if "prophet" in parts:
            pr = parts["prophet"]
            has = np.isfinite(pr["expected"].to_numpy()) & ~warm
            expected[has] = pr["expected"].to_numpy()[has]
            lower[has], upper[has] = pr["lower"].to_numpy()[has], pr["upper"].to_numpy()[has]
        direction = direction_of(x - expected)

        mv_fired = np.zeros(n, dtype=bool)
        self.multivariate_ = None
        if self.mode == "rate" and self.use_multivariate and getattr(self, "mv_", None) is not None:
            t0 = time.perf_counter()
            mv = self.mv_._score(current)
            self.multivariate_ = mv
            flagged = set(zip(mv.loc[mv["is_anomaly"], "cohort"], mv.loc[mv["is_anomaly"], "ts"]))
            if flagged:
                cohorts = [cfg.split_series_id(s)[1] for s in sids]
                mv_fired = np.array([(c, ts) in flagged for c, ts in zip(cohorts, current["ts"])])
            t["multivariate"] = time.perf_counter() - t0
        self.timings_["score"] = t

        names = list(fired)
        fired_mat = np.column_stack([fired[k] for k in names]) if names else np.zeros((n, 0), bool)
        reasons = {k: parts[k]["reason"].to_numpy() for k in parts}
        detectors_fired, why, short = [], [], []
        for i in range(n):
            if missing[i]:
                (
                    detectors_fired.append([]),
                    why.append("missing value"),
                    short.append("missing value"),
                )
                continue
            if cold[i]:
                detectors_fired.append([]), why.append("cold start"), short.append("cold start")
                continue
            if low_volume[i]:
                detectors_fired.append([]), why.append("low volume"), short.append("low volume")
                continue
            if calendar_rise[i]:
                note = f"holiday/promotion rise within {self.calendar_lift:g}x the usual level"
                detectors_fired.append([]), why.append(note), short.append(note)
                continue
            fl = [k for j, k in enumerate(names) if fired_mat[i, j]]
            if mv_fired[i]:
                fl.append("multivariate")
            detectors_fired.append(fl)
            bits = []
            if self.mode == "rate":
                bits.append(str(stat_reason[i]))
            shape = [k for k in fl if k in reasons] or [
                max(reasons, key=lambda k: norm[k][i] if k in norm else 0.0)]
            bits += [f"{k}: {reasons[k][i]}" for k in shape]
            why.append(
                f"{'ANOMALY' if is_anom[i] else 'ok'} ({allowed[i]} alerts); " + "; ".join(bits)
            )
            short.append(f"{direction[i]} " + "; ".join(bits[:2]))
        run_start = (
            parts["cusum"]["run_start"].to_numpy()
            if "cusum" in parts
            else np.full(n, np.datetime64("NaT", "ns"))
        )
        out = pd.DataFrame(index=current.index)
        out["expected"], out["lower"], out["upper"] = expected, lower, upper
        out["score"] = raw
        out["p_value"] = p_value
        out["window_hours"] = window_hours
        out["direction"] = direction
        out["is_anomaly"] = is_anom
        out["reason"] = short
        out["severity"] = severity
        out["detectors_fired"] = detectors_fired
        out["why"] = why
        out["run_start"] = pd.to_datetime(
            np.where(fired.get("cusum", np.zeros(n, bool)), run_start, np.datetime64("NaT", "ns"))
        )
        for k, e in norm.items():
            out[f"e_{k}"] = e
        return out


def _calendar_days(holidays: pd.DataFrame | None) -> np.ndarray:
    """The holiday/promotion dates as naive datetime64 days (empty without a calendar)."""
    if holidays is None or len(holidays) == 0 or "holiday_date" not in holidays.columns:
        return np.array([], dtype="datetime64[ns]")
    days = normalize_ts(pd.Series(pd.to_datetime(holidays["holiday_date"])))
    return np.unique(days.dt.normalize().to_numpy(dtype="datetime64[ns]"))


def score_streaming(
    detector_factory,
    frame: pd.DataFrame,
    step: str = "1h",
    min_history: str = "1h",
    max_history: str | None = "35D",
    detector: Detector | None = None,
) -> pd.DataFrame:
    """Causal expanding-window scoring: for each ``step`` bucket, fit on all points before the
    bucket (only the last ``max_history`` of them: the baselines look no further back) and score the
    bucket. Every point is scored only from points strictly before its bucket. A single detector
    object is reused across steps (so the Ensemble's first-seen times and Prophet cache persist).
    """
    f = validate_frame(frame, name="frame").sort_values(["ts", "series_id"])
    det = detector if detector is not None else detector_factory()
    buckets = f["ts"].dt.floor(step)
    starts = np.sort(buckets.unique())
    t_begin = f["ts"].min() + pd.Timedelta(min_history)
    out = []
    ts = f["ts"].to_numpy()
    look = pd.Timedelta(max_history) if max_history else None
    for b in starts:
        b = pd.Timestamp(b)
        cur_mask = (buckets == b).to_numpy()
        if b < t_begin:
            continue
        lo = np.searchsorted(
            ts, np.datetime64(b - look) if look is not None else ts[0], side="left"
        )
        hi = np.searchsorted(ts, np.datetime64(b), side="left")
        hist = f.iloc[lo:hi]
        if len(hist) == 0:
            continue
        det.fit(hist)
        out.append(det.score(f[cur_mask]))
    res = pd.concat(out) if out else pd.DataFrame(columns=ENSEMBLE_COLUMNS)
    return res.reindex(frame.index)
