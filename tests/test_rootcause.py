"""Root-cause localisation on synthetic cubes with known answers (no mocks).

Cubes: 5 dimensions (3 x 5 x 4 x 8 x 6 = 2,880 leaves), skewed shares, Poisson / binomial noise and
a 3 % baseline error (``rootcause.synthetic.make_cube``). The search runs over every cuboid
(``max_dimensions`` defaults to all 5 dimensions).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rootcause import (
    RESULT_COLUMNS,
    Localizer,
    additive_leaves,
    format_cohort,
    parse_cohort,
    ratio_leaves,
)
from rootcause.synthetic import DIMENSIONS, cohort_share, make_cube, rate_cube_leaves

DIMS = list(DIMENSIONS)
IOS_SAFARI_IG = {"os": "iOS", "browser": "Safari", "utm_campaign": "ig_sale"}


def causes(result: pd.DataFrame) -> list[str]:
    return list(result.loc[result["root_cause"], "cohort"])


def test_single_dimension_cause_country_us():
    cube = make_cube([({"country": "US"}, -0.3)], total=50_000, seed=2)
    res = Localizer().localize(cube, DIMS, "additive")
    assert list(res.columns) == RESULT_COLUMNS
    top = res.iloc[0]
    assert top["cohort"] == "country=US"
    assert causes(res) == ["country=US"]
    assert top["filters"] == {"country": "US"}
    assert top["deviation"] == pytest.approx(-0.3, abs=0.05)
    # the whole parent deviation sits in the US (up to noise)
    assert 0.6 < top["explanatory_power"] < 1.4
    assert top["z"] < -10


def test_three_dimension_combination_in_noisy_cube():
    assert cohort_share(make_cube([], seed=3), IOS_SAFARI_IG, "expected") > 0.05
    cube = make_cube([(IOS_SAFARI_IG, -0.5)], total=50_000, seed=3)
    res = Localizer(max_dimensions=3).localize(cube, DIMS, "additive")
    assert res.iloc[0]["cohort"] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
    assert causes(res) == ["browser=Safari&os=iOS&utm_campaign=ig_sale"]
    assert res.iloc[0]["n_dimensions"] == 3
    assert res.iloc[0]["leaves"] == 3 * 8  # device_type x country under the cohort


def test_two_simultaneous_causes_are_both_accepted():
    cube = make_cube(
        [({"country": "DE"}, -0.4), ({"device_type": "mobile", "os": "Android"}, 0.5)],
        total=50_000,
        seed=4,
    )
    res = Localizer().localize(cube, DIMS, "additive")
    assert set(causes(res)) == {"country=DE", "device_type=mobile&os=Android"}
    by = res.set_index("cohort")
    assert by.loc["country=DE", "deviation"] < -0.3
    assert by.loc["device_type=mobile&os=Android", "deviation"] > 0.35


def test_ratio_kpi_conversion_drop_with_unchanged_traffic():
    cube = make_cube([(IOS_SAFARI_IG, -0.4)], kpi="ratio", total=1_000_000, seed=3)
    # traffic is not what changed: actual sessions are within noise of the expectation
    traffic = cube["denominator"].sum() / cube["expected_denominator"].sum() - 1
    assert abs(traffic) < 0.02
    res = Localizer().localize(cube, DIMS, "ratio")
    top = res.iloc[0]
    assert top["cohort"] == "browser=Safari&os=iOS&utm_campaign=ig_sale"
    assert top["root_cause"]
    assert top["deviation"] == pytest.approx(-0.4, abs=0.07)  # the cohort's conversion rate
    assert 0.6 < top["explanatory_power"] < 1.4
    assert 0 < top["actual"] < top["expected"] < 1  # rates, not counts


def test_ratio_kpi_low_converting_traffic_surge_is_a_mix_cause():
    """Bots in one country: 3x the sessions, no extra orders -> parent conversion drops."""
    cube = make_cube([], kpi="ratio", total=1_000_000, seed=1)
    fr = cube["country"] == "FR"
    cube.loc[fr, "denominator"] *= 3
    res = Localizer().localize(rate_cube_leaves(cube), DIMS, "ratio")
    assert res.iloc[0]["cohort"] == "country=FR"
    assert causes(res) == ["country=FR"]
    assert res.iloc[0]["deviation"] < -0.6


def test_uniform_drop_is_all():
    cube = make_cube([({}, -0.3)], total=50_000, seed=0)
    res = Localizer().localize(cube, DIMS, "additive")
    assert res.iloc[0]["cohort"] == "all"
    assert causes(res) == ["all"]
    assert res.iloc[0]["explanatory_power"] == pytest.approx(1.0)


@pytest.mark.parametrize("kpi", ["additive", "ratio"])
def test_noise_only_has_no_confident_cause(kpi):
    total = 50_000 if kpi == "additive" else 1_000_000
    for seed in range(3):
        res = Localizer().localize(make_cube([], kpi=kpi, total=total, seed=seed), DIMS, kpi)
        assert causes(res) == []
        assert len(res) == 3  # still the best candidates, for a look
        # the scan statistic stays below what a cause needs (min_z^2), |z| below 5
        assert res["score"].max() < Localizer().min_z ** 2
        assert res["z"].abs().max() < 5


def test_top_k_and_max_dimensions_are_respected():
    cube = make_cube([(IOS_SAFARI_IG, -0.5)], total=50_000, seed=3)
    res = Localizer(max_dimensions=2, top_k=5).localize(cube, DIMS, "additive")
    assert len(res) == 5
    assert res["n_dimensions"].max() <= 2
    assert list(res["rank"]) == [1, 2, 3, 4, 5]


def test_cohort_strings_round_trip():
    filters = {"os": "iOS", "browser": "Safari"}
    assert format_cohort(filters) == "browser=Safari&os=iOS"
    assert parse_cohort("browser=Safari&os=iOS") == filters
    assert format_cohort({}) == "all" and parse_cohort("all") == {}


def test_validation_errors():
    cube = make_cube([], total=1_000, seed=0)
    loc = Localizer()
    with pytest.raises(ValueError, match="DataFrame"):
        loc.localize(cube.to_dict(), DIMS, "additive")
    with pytest.raises(ValueError, match="kpi"):
        loc.localize(cube, DIMS, "median")
    with pytest.raises(ValueError, match="missing column"):
        loc.localize(cube.drop(columns=["actual"]), DIMS, "ratio")
    with pytest.raises(ValueError, match="missing column"):
        loc.localize(cube, [*DIMS, "region"], "additive")
    with pytest.raises(ValueError, match="non-empty"):
        loc.localize(cube, [], "additive")
    with pytest.raises(ValueError, match="duplicate dimension values"):
        loc.localize(cube, ["country"], "additive")
    bad = cube.copy()
    bad.loc[0, "actual"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        loc.localize(bad, DIMS, "additive")
    bad = cube.copy()
    bad.loc[0, "expected"] = -1.0
    with pytest.raises(ValueError, match="negative"):
        loc.localize(bad, DIMS, "additive")
    bad = cube.copy()
    bad.loc[0, "os"] = None
    with pytest.raises(ValueError, match="null"):
        loc.localize(bad, DIMS, "additive")
    with pytest.raises(ValueError, match="empty"):
        loc.localize(cube.iloc[:0], DIMS, "additive")
    with pytest.raises(ValueError, match="max_dimensions"):
        Localizer(max_dimensions=0)


# -- explaining-away, whole store vs cohort, bad input ------------------------------------------
def test_two_causes_each_accepted_with_their_share_ratio_kpi():
    two = [({"country": "US"}, -0.4), (IOS_SAFARI_IG, -0.5)]
    res = Localizer().localize(make_cube(two, kpi="ratio", total=1_000_000, seed=3), DIMS, "ratio")
    assert set(causes(res)) == {"country=US", "browser=Safari&os=iOS&utm_campaign=ig_sale"}
    shares = res.loc[res["root_cause"], "explained_share"]
    assert (shares > 0.1).all() and 0.6 < shares.sum() <= 1.0


def test_three_simultaneous_causes_are_each_found():
    three = [
        ({"country": "DE"}, -0.4),
        ({"device_type": "tablet", "utm_campaign": "none"}, 0.6),
        (IOS_SAFARI_IG, -0.5),
    ]
    res = Localizer().localize(make_cube(three, total=80_000, seed=6), DIMS, "additive")
    assert set(causes(res)) == {
        "country=DE",
        "device_type=tablet&utm_campaign=none",
        "browser=Safari&os=iOS&utm_campaign=ig_sale",
    }
    assert list(res["root_cause"][:3]) == [True, True, True]


def test_store_wide_change_is_all_even_with_a_cohort_level_drift():
    """With a cohort-level baseline drift the biggest cohort has the top z, not `all`; the
    remainder moved the same way, so the answer is the whole store."""
    for seed in range(3):
        cube = make_cube([({}, -0.25)], total=50_000, seed=seed)
        res = Localizer(drift=0.03).localize(cube, DIMS, "additive")
        assert causes(res) == ["all"], seed


def test_large_cohort_change_is_never_all():
    big = {"device_type": "mobile"}
    assert cohort_share(make_cube([], seed=7), big, "expected") > 0.3
    for seed in range(3):
        cube = make_cube([(big, -0.25)], total=50_000, seed=7 + 10 * seed)
        res = Localizer(drift=0.03).localize(cube, DIMS, "additive")
        assert res.iloc[0]["cohort"] == "device_type=mobile"
        assert "all" not in causes(res)


def test_store_wide_change_and_a_cohort_change_together():
    cube = make_cube([({}, -0.2), ({"country": "GB"}, -0.5)], total=50_000, seed=8)
    res = Localizer().localize(cube, DIMS, "additive")
    assert set(causes(res)) == {"all", "country=GB"}


@pytest.mark.parametrize("kpi", ["additive", "ratio"])
def test_pure_noise_gives_no_answer_on_any_seed(kpi):
    total = 50_000 if kpi == "additive" else 1_000_000
    for seed in range(10, 16):
        res = Localizer().localize(make_cube([], kpi=kpi, total=total, seed=seed), DIMS, kpi)
        assert causes(res) == [], seed


def test_direction_restricts_causes_to_the_incident_s_way():
    cube = make_cube(
        [({"country": "DE"}, -0.4), ({"device_type": "mobile", "os": "Android"}, 0.5)], seed=4
    )
    res = Localizer().localize(cube, DIMS, "additive", direction=-1)
    assert causes(res) == ["country=DE"]
    assert (res["z"] < 0).all()


def test_leaf_helpers_derive_the_variance():
    frame = pd.DataFrame({"os": ["iOS", "Android"], "orders": [10.0, 4.0], "base": [8.0, 5.0]})
    leaves = additive_leaves(frame, actual="orders", expected="base", history_periods=4)
    np.testing.assert_allclose(leaves["variance"], [8 * 1.25, 5 * 1.25])
    assert list(leaves["denominator"]) == [1.0, 1.0]
    rates = pd.DataFrame(
        {
            "os": ["iOS", "Android", "Linux"],
            "n": [5.0, 9.0, 0.0],
            "d": [10.0, 12.0, 0.0],
            "hn": [50.0, 60.0, 1.0],
            "hd": [100.0, 100.0, 2.0],
        }
    )
    kw = {"numerator": "n", "denominator": "d", "history_numerator": "hn"}
    leaves = ratio_leaves(rates, history_denominator="hd", prior_weight=0, **kw)
    assert list(leaves["os"]) == ["iOS", "Android"]  # a leaf without traffic cannot move a rate
    np.testing.assert_allclose(leaves["expected"], [5.0, 7.2])
    # binomial noise of the window x (1 + d / history d): the history rate's own error
    np.testing.assert_allclose(leaves["variance"], [10 * 0.25 * 1.1, 12 * 0.6 * 0.4 * 1.12])


def test_bad_cubes_give_clear_errors():
    one = pd.DataFrame({"os": ["iOS"], "actual": [3.0], "expected": [5.0]})
    with pytest.raises(ValueError, match="single cohort"):
        Localizer().localize(one, ["os"], "additive")
    no_expected = pd.DataFrame({"os": ["iOS", "Android"], "actual": [3.0, 4.0]})
    with pytest.raises(ValueError, match="no expected values"):
        Localizer().localize(no_expected, ["os"], "additive")
    zero = no_expected.assign(expected=0.0)
    with pytest.raises(ValueError, match="expected sums to 0"):
        Localizer().localize(zero, ["os"], "additive")
    rates = pd.DataFrame({"os": ["iOS"], "n": [1.0], "d": [2.0], "hn": [0.0], "hd": [0.0]})
    with pytest.raises(ValueError, match="no history"):
        ratio_leaves(
            rates, numerator="n", denominator="d", history_numerator="hn", history_denominator="hd"
        )
    with pytest.raises(ValueError, match="direction"):
        Localizer().localize(make_cube([], seed=0), DIMS, "additive", direction=0)
