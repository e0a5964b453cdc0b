"""NAB scoring on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.nab_scoring import (
    PROFILES,
    corpus_scores,
    layout,
    optimise_threshold,
    probationary_length,
    scaled_sigmoid,
)

STD = PROFILES["standard"]


def make(n=1000, win=(600, 699)):
    ts = pd.date_range("2024-01-01", periods=n, freq="5min").to_numpy()
    return ts, layout(ts, [(ts[win[0]], ts[win[1]])])


def test_scaled_sigmoid_points():
    assert scaled_sigmoid(-1.0) == pytest.approx(2 / (1 + math.exp(-5)) - 1)  # 0.98661
    assert scaled_sigmoid(0.0) == pytest.approx(0.0)
    assert scaled_sigmoid(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert scaled_sigmoid(3.0) == -1.0
    assert probationary_length(1000) == 150 and probationary_length(100_000) == 750


def test_perfect_null_and_window_positions():
    _ts, lay = make()
    det = np.zeros(1000, bool)
    null = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    assert null["raw"] == -1.0 and null["score"] == 0.0
    det[600] = True  # first row of the window: the perfect detector
    perfect = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    assert perfect["raw"] == pytest.approx(1.0) and perfect["score"] == pytest.approx(100.0)
    det[:] = False
    det[699] = True  # last row of the window: y = -1/100 -> about 0 weight
    end = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    expected = scaled_sigmoid(-1 / 100) / scaled_sigmoid(-1.0)
    assert end["raw"] == pytest.approx(expected) and abs(end["raw"]) < 0.03
    assert end["score"] == pytest.approx(100 * (expected + 1) / 2)
    det[:] = False
    det[650] = True  # middle: y = -0.5 -> 0.84828 / 0.98661
    mid = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    assert mid["raw"] == pytest.approx(scaled_sigmoid(-0.5) / scaled_sigmoid(-1.0))
    det[660] = True  # a second detection in the same window does not add
    assert corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)["raw"] == pytest.approx(
        mid["raw"]
    )


def test_false_positives_and_profiles():
    _ts, lay = make()
    det = np.zeros(1000, bool)
    det[300] = True  # before the window: full FP cost
    det[100] = True  # probationary: ignored
    r = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    assert r["raw"] == pytest.approx(-1.0 - 0.11) and r["fp"] == 1
    lowfp = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, PROFILES["reward_low_FP_rate"])
    assert lowfp["raw"] == pytest.approx(-1.0 - 0.22)
    lowfn = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, PROFILES["reward_low_FN_rate"])
    assert lowfn["raw"] == pytest.approx(-2.0 - 0.11) and lowfn["null"] == -2.0
    det[:] = False
    det[700] = True  # just after the window: y = 1/99 -> small cost
    r = corpus_scores({"f": lay}, {"f": det.astype(float)}, 0.5, STD)
    assert r["raw"] == pytest.approx(-1.0 + 0.11 * scaled_sigmoid(1 / 99))


def test_threshold_optimisation_finds_the_separating_threshold():
    _ts, lay = make()
    s = np.zeros(1000)
    s[600] = 0.9
    s[300] = 0.5
    best = optimise_threshold({"f": lay}, {"f": s}, STD)
    assert best["score"] == pytest.approx(100.0) and 0.5 < best["threshold"] <= 0.9
