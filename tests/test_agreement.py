"""Krippendorff's alpha against published values, a hand computation and an independent
pairwise formulation (a different formula from the coincidence matrix the code uses)."""

from __future__ import annotations

import itertools
import random

import pytest

from synth_disco.annotation.agreement import (
    alpha_from_matrix,
    bootstrap_interval,
    krippendorff_alpha,
)

N = None
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the example with four
# observers, twelve units and missing values. Published: nominal .743, ordinal .815,
# interval .849, ratio .797.
RELIABILITY_DATA = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, N, N, N],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, N, 3],
    [N, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, N],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, N],
]
PUBLISHED = {"nominal": 0.743, "ordinal": 0.815, "interval": 0.849, "ratio": 0.797}


def pairwise_alpha(units: list[list], level: str, order: list | None = None) -> float | None:
    """alpha = 1 - (n - 1) * sum_u [sum of within-unit pair differences / (m_u - 1)]
    / sum of all pair differences, over pairable values (pairs of distinct positions)."""
    units = [u for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    if n < 2:
        return None
    order = order or sorted(set(values))
    freq = {v: values.count(v) for v in order}

    def delta(c, k) -> float:
        if level == "nominal":
            return float(c != k)
        if level == "ordinal":
            i, j = sorted((order.index(c), order.index(k)))
            return (sum(freq[order[g]] for g in range(i, j + 1)) - (freq[c] + freq[k]) / 2) ** 2
        if level == "interval":
            return float((c - k) ** 2)
        return ((c - k) / (c + k)) ** 2 if c + k else 0.0

    within = sum(
        sum(delta(a, b) for a, b in itertools.permutations(u, 2)) / (len(u) - 1) for u in units
    )
    total = sum(delta(a, b) for a, b in itertools.permutations(values, 2))
    if total == 0:
        return None
    return 1 - (n - 1) * within / total


@pytest.mark.parametrize("level", list(PUBLISHED))
def test_krippendorff_2011_example(level):
    alpha = alpha_from_matrix(RELIABILITY_DATA, level)
    assert round(alpha, 3) == PUBLISHED[level]
    units = [[row[u] for row in RELIABILITY_DATA if row[u] is not None] for u in range(12)]
    assert alpha == pytest.approx(pairwise_alpha(units, level), abs=1e-12)


def test_hand_computed_nominal():
    # Units (a,a), (a,b), (b,b): o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    # D_o = 2/6; D_e = 2 * 3 * 3 / (6 * 5) = 0.6; alpha = 1 - (1/3) / 0.6 = 4/9.
    assert krippendorff_alpha([["a", "a"], ["a", "b"], ["b", "b"]], "nominal") == pytest.approx(
        4 / 9
    )


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval", "ratio"])
def test_matches_pairwise_formulation_on_random_data(level):
    rng = random.Random(level)
    for _ in range(40):
        units = [
            [rng.randint(1, 5) for _ in range(rng.choice([0, 1, 2, 3, 4]))]
            for _ in range(rng.randint(2, 15))
        ]
        got = krippendorff_alpha(units, level)
        want = pairwise_alpha(units, level)
        if want is None:
            assert got is None
        else:
            assert got == pytest.approx(want, abs=1e-9)


def test_ordinal_uses_the_given_label_order():
    units = [["low", "mid"], ["mid", "high"], ["low", "low"], ["high", "high"], ["mid", "mid"]]
    order = ["low", "mid", "high"]
    got = krippendorff_alpha(units, "ordinal", order)
    assert got == pytest.approx(pairwise_alpha(units, "ordinal", order))
    # Alphabetical order (high < low < mid) is a different scale and a different alpha.
    assert got != pytest.approx(krippendorff_alpha(units, "ordinal"))
    # Labels nobody used do not change alpha.
    assert krippendorff_alpha(units, "ordinal", ["none", *order]) == pytest.approx(got)
    with pytest.raises(ValueError, match="not in the given order"):
        krippendorff_alpha(units, "ordinal", ["low", "mid"])


def test_edge_cases():
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]], "interval") == pytest.approx(1.0)
    assert krippendorff_alpha([[3, 3], [3, 3]], "nominal") is None  # no variation: undefined
    assert krippendorff_alpha([[1], [2], [3]], "nominal") is None  # one annotator per unit
    assert krippendorff_alpha([], "nominal") is None
    # Systematic disagreement gives a negative alpha.
    assert krippendorff_alpha([[1, 2], [2, 1], [1, 2], [2, 1]], "nominal") < 0
    with pytest.raises(ValueError, match="numeric"):
        krippendorff_alpha([["a", "b"]], "interval")


def _units(n: int, agree: float, seed: int) -> list[list[int]]:
    """``n`` comments rated 1-5 by two annotators who give the same label with prob ``agree``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a = rng.randint(1, 5)
        out.append([a, a if rng.random() < agree else rng.randint(1, 5)])
    return out


def test_bootstrap_interval_holds_alpha_narrows_with_more_comments_and_is_seeded():
    small, large = _units(40, 0.6, 1), _units(640, 0.6, 2)
    widths = []
    for units in (small, large):
        alpha = krippendorff_alpha(units, "ordinal")
        low, high = bootstrap_interval(units, "ordinal", samples=500, seed=3)
        assert low < alpha < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2  # 16x the comments: about a quarter of the width
    again = bootstrap_interval(small, "ordinal", samples=500, seed=3)
    assert again == bootstrap_interval(small, "ordinal", samples=500, seed=3)
    assert again != bootstrap_interval(small, "ordinal", samples=500, seed=4)


def test_bootstrap_interval_covers_the_true_alpha_about_95_times_in_100():
    """Coverage with seeds and counts: 100 samples of 200 comments from one population whose
    alpha is estimated on a sample of 20,000; the 95% interval should hold it 90-99 times."""
    truth = krippendorff_alpha(_units(20_000, 0.5, 0), "nominal")
    held = 0
    for seed in range(1, 101):
        low, high = bootstrap_interval(_units(200, 0.5, seed), "nominal", samples=400, seed=seed)
        held += low <= truth <= high
    assert 88 <= held <= 99, held
