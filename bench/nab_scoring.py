"""The Numenta Anomaly Benchmark scoring rules, reimplemented from NAB v1.1's description.

Per data file:

* Probationary period: the first min(floor(0.15 n), 0.15 * 5000) rows are not scored.
* Each labelled window [start, end] is a true-positive region. A detection (anomaly score >=
  threshold) at row i inside a window of width W rows (right edge at row r) has relative
  position y = -(r - i + 1) / W (so -1 at the left edge, -> 0 at the right edge) and earns
  A_TP * sigma(y) / sigma(-1), sigma(y) = 2 / (1 + exp(5 y)) - 1 (the scaled sigmoid).
  Only the best (= the earliest) detection of a window counts. A window without detection
  costs A_FN (negative).
* A detection outside windows is a false positive. Before any window it costs A_FP * 1 (sigma
  = -1); after a window its relative position is y = (i - r) / (W - 1) and it costs
  A_FP * |sigma(y)| (sigma(y) >= 3 is -1): FPs just after a window are cheap, far ones cost the
  full A_FP.
* File score = sum of window scores + sum of FP scores; corpus score = sum over files.
* Normalised score = 100 (S - S_null) / (S_perfect - S_null), S_null = the score with no
  detections, S_perfect = (number of windows) * A_TP.
* The threshold is optimised per profile over the whole corpus (one threshold for all files),
  as NAB's optimizer does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PROFILES = {
    "standard": {"tp": 1.0, "fp": 0.11, "fn": 1.0, "tn": 1.0},
    "reward_low_FP_rate": {"tp": 1.0, "fp": 0.22, "fn": 1.0, "tn": 1.0},
    "reward_low_FN_rate": {"tp": 1.0, "fp": 0.11, "fn": 2.0, "tn": 1.0},
}


def scaled_sigmoid(y: float) -> float:
    """2 * sigmoid(-5 y) - 1; -1 for y >= 3 (far past a window)."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


def probationary_length(n: int, probation_percent: float = 0.15) -> int:
    return int(min(math.floor(probation_percent * n), probation_percent * 5000))


@dataclass
class FileLayout:
    """Per-row precomputed weights of one file (independent of the detector)."""

    window_id: np.ndarray  # -1 outside windows, else window number; -2 probationary
    tp_weight: np.ndarray  # unweighted sigma(y)/sigma(-1) inside windows
    fp_weight: np.ndarray  # |sigma(y)| outside windows (multiplied by A_FP later)
    n_windows: int  # scorable windows (not in probation)


def layout(
    timestamps: np.ndarray, windows: list[tuple], probation_percent: float = 0.15
) -> FileLayout:
    """Row weights for a file. ``timestamps`` sorted datetime64; windows (start, end) timestamps.

    Window edges are mapped to rows by timestamp (first row >= start, last row <= end)."""
    ts = np.asarray(timestamps, dtype="datetime64[ns]")
    n = len(ts)
    wid = np.full(n, -1)
    tpw = np.zeros(n)
    fpw = np.ones(n)  # before any window: sigma(3) = -1 -> weight 1
    max_tp = scaled_sigmoid(-1.0)
    prev_right, prev_width = None, None
    bounds = []
    for k, (a, b) in enumerate(windows):
        lo = int(np.searchsorted(ts, np.datetime64(a, "ns"), side="left"))
        hi = int(np.searchsorted(ts, np.datetime64(b, "ns"), side="right")) - 1
        if hi >= lo:
            bounds.append((k, lo, hi))
    for k, lo, hi in bounds:
        width = hi - lo + 1
        idx = np.arange(lo, hi + 1)
        wid[idx] = k
        tpw[idx] = [scaled_sigmoid(-(hi - i + 1) / width) / max_tp for i in idx]
    # false-positive weights: relative to the most recent window to the left
    j = 0
    for i in range(n):
        while j < len(bounds) and bounds[j][2] < i:
            prev_right, prev_width = bounds[j][2], bounds[j][2] - bounds[j][1] + 1
            j += 1
        if wid[i] >= 0:
            continue
        if prev_right is not None:
            y = abs(prev_right - i) / float(max(prev_width - 1, 1))
            fpw[i] = -scaled_sigmoid(y)
    prob = probationary_length(n, probation_percent)
    wid[:prob] = -2
    n_win = len(set(wid[wid >= 0].tolist()))
    return FileLayout(wid, tpw, fpw, n_win)


def score_file(lay: FileLayout, detections: np.ndarray, profile: dict) -> tuple[float, dict]:
    """Raw NAB score of one file for boolean ``detections`` under ``profile`` (tp/fp/fn weights)."""
    d = np.asarray(detections, dtype=bool)
    total = 0.0
    tp = fp = fn = 0
    for k in set(lay.window_id[lay.window_id >= 0].tolist()):
        hit = d & (lay.window_id == k)
        if hit.any():
            total += profile["tp"] * lay.tp_weight[np.argmax(hit)]  # first detection counts
            tp += 1
        else:
            total -= profile["fn"]
            fn += 1
    outside = d & (lay.window_id == -1)
    total -= profile["fp"] * float(lay.fp_weight[outside].sum())
    fp = int(outside.sum())
    return total, {"tp": tp, "fp": fp, "fn": fn}


def normalise(raw: float, null: float, perfect: float) -> float:
    return 100.0 * (raw - null) / (perfect - null)


def corpus_scores(layouts: dict, scores: dict, threshold: float, profile: dict) -> dict:
    raw = 0.0
    null = 0.0
    n_windows = 0
    counts = {"tp": 0, "fp": 0, "fn": 0}
    for name, lay in layouts.items():
        s, c = score_file(lay, np.asarray(scores[name]) >= threshold, profile)
        raw += s
        null += -profile["fn"] * lay.n_windows
        n_windows += lay.n_windows
        for k in counts:
            counts[k] += c[k]
    perfect = n_windows * profile["tp"]
    return {
        "raw": raw,
        "null": null,
        "perfect": perfect,
        "score": normalise(raw, null, perfect),
        "threshold": threshold,
        **counts,
    }


def optimise_threshold(
    layouts: dict, scores: dict, profile: dict, candidates: np.ndarray | None = None
) -> dict:
    """The threshold (one for the corpus) that maximises the corpus score for ``profile``."""
    if candidates is None:
        allv = np.concatenate([np.asarray(v, dtype=float) for v in scores.values()])
        allv = allv[np.isfinite(allv)]
        candidates = np.unique(
            np.concatenate(
                [np.quantile(allv, np.linspace(0.5, 1.0, 201)), np.linspace(0.0, 1.0, 101)]
            )
        )
    best = None
    for t in candidates:
        r = corpus_scores(layouts, scores, float(t), profile)
        if best is None or r["score"] > best["score"]:
            best = r
    # thresholds above every score = the null detector
    none = corpus_scores(layouts, scores, np.inf, profile)
    return best if best["score"] >= none["score"] else none
