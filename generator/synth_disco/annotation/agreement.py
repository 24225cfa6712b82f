"""Krippendorff's alpha (nominal, ordinal, interval, ratio), from the coincidence matrix.

Follows Krippendorff, "Computing Krippendorff's Alpha-Reliability" (2011): values that share
a unit are paired, each unit weighted by 1/(m_u - 1); alpha = 1 - D_o / D_e with the
difference function of the level of measurement. Missing values are simply absent from their
unit; units with fewer than two values are not pairable and drop out.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Literal

import numpy as np

Level = Literal["nominal", "ordinal", "interval", "ratio"]


def coincidences(units: Iterable[Sequence[Hashable]], values: Sequence[Hashable]) -> np.ndarray:
    """The coincidence matrix o[c, k] over ``values`` (in that order) of the pairable units."""
    index = {v: i for i, v in enumerate(values)}
    rows, weights = [], []
    for unit in units:
        m = len(unit)
        if m < 2:
            continue
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        rows.append(counts)
        weights.append(1.0 / (m - 1))
    if not rows:
        return np.zeros((len(values), len(values)))
    c = np.asarray(rows)
    w = np.asarray(weights)
    # sum_u (c_u c_u^T - diag(c_u)) / (m_u - 1), for all units at once.
    return (c * w[:, None]).T @ c - np.diag(w @ c)


def difference(level: Level, values: Sequence[Hashable], n_c: np.ndarray) -> np.ndarray:
    """The squared difference delta^2[c, k] for ``values`` with marginal frequencies ``n_c``."""
    k = len(values)
    if level == "nominal":
        return 1.0 - np.eye(k)
    if level == "ordinal":
        cum = np.concatenate([[0.0], np.cumsum(n_c)])
        i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        lo, hi = np.minimum(i, j), np.maximum(i, j)
        # sum of n_g for g from c to k, minus half of n_c and n_k
        span = cum[hi + 1] - cum[lo] - (n_c[i] + n_c[j]) / 2.0
        return span**2
    x = np.asarray([float(v) for v in values])  # type: ignore[arg-type]
    diff = x[:, None] - x[None, :]
    if level == "interval":
        return diff**2
    if level == "ratio":
        total = x[:, None] + x[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(total == 0, 0.0, (diff / np.where(total == 0, 1, total)) ** 2)
        return out
    raise ValueError(f"unknown level of measurement {level!r}")


def krippendorff_alpha(
    units: Iterable[Sequence[Hashable]],
    level: Level = "nominal",
    values: Sequence[Hashable] | None = None,
) -> float | None:
    """Alpha for ``units`` (each the values it received; missing ones left out).

    ``values`` fixes the order of the categories (needed for ``ordinal`` when the values do
    not sort naturally, e.g. labels "low" < "mid" < "high"); values never observed may be
    listed. Returns None when alpha is undefined: fewer than two pairable values, or no
    variation at all (every pairable value identical, so expected disagreement is zero).
    """
    units = [list(u) for u in units]
    seen = {v for u in units for v in u}
    if values is None:
        values = sorted(seen, key=lambda v: (float(v), str(v)) if _numeric(v) else (np.inf, str(v)))
    else:
        unknown = seen - set(values)
        if unknown:
            raise ValueError(f"values not in the given order: {sorted(map(str, unknown))}")
    if level in ("interval", "ratio") and not all(_numeric(v) for v in values):
        raise ValueError(f"{level} alpha needs numeric values")
    o = coincidences(units, values)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    if n < 2:
        return None
    d2 = difference(level, values, n_c)
    d_o = float((o * d2).sum()) / n
    d_e = float((np.outer(n_c, n_c) * d2).sum()) / (n * (n - 1))
    if d_e <= 0:
        return None
    return 1.0 - d_o / d_e


def bootstrap_interval(
    units: Iterable[Sequence[Hashable]],
    level: Level = "nominal",
    values: Sequence[Hashable] | None = None,
    *,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float] | None:
    """A percentile bootstrap interval for alpha: the units (comments) are resampled with
    replacement ``samples`` times, alpha computed on each, and the central ``confidence``
    share of those alphas kept. None when fewer than half the resamples give a defined alpha.

    Resampling units, not single labels, keeps each comment's labels together, as the
    reliability data were collected. ``seed`` makes the interval reproducible.
    """
    units = [list(u) for u in units if len(u) >= 2]
    if len(units) < 2:
        return None
    if values is None:
        seen = {v for u in units for v in u}
        values = sorted(seen, key=lambda v: (float(v), str(v)) if _numeric(v) else (np.inf, str(v)))
    index = {v: i for i, v in enumerate(values)}
    counts = np.zeros((len(units), len(values)))
    for row, unit in enumerate(units):
        for v in unit:
            counts[row, index[v]] += 1
    weights = 1.0 / (counts.sum(axis=1) - 1)
    gen = np.random.default_rng(seed)
    alphas = []
    for picks in gen.multinomial(len(units), np.full(len(units), 1 / len(units)), size=samples):
        w = weights * picks  # each unit as often as it was drawn
        o = (counts * w[:, None]).T @ counts - np.diag(w @ counts)
        n_c = o.sum(axis=1)
        n = n_c.sum()
        d2 = difference(level, values, n_c)
        d_e = float((np.outer(n_c, n_c) * d2).sum()) / (n * (n - 1))
        if d_e > 0:
            alphas.append(1.0 - (float((o * d2).sum()) / n) / d_e)
    if len(alphas) < samples / 2:
        return None
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(alphas, [tail, 100 - tail])
    return float(low), float(high)


def alpha_from_matrix(
    matrix: Sequence[Sequence[Hashable | None]],
    level: Level = "nominal",
    values: Sequence[Hashable] | None = None,
) -> float | None:
    """Alpha from reliability data laid out coders x units, ``None`` (or NaN) for missing."""
    n_units = max((len(r) for r in matrix), default=0)
    units: list[list[Hashable]] = [[] for _ in range(n_units)]
    for row in matrix:
        for u, v in enumerate(row):
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            units[u].append(v)
    return krippendorff_alpha(units, level, values)


def _numeric(v: object) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float, np.integer, np.floating)):
        return True
    try:
        float(str(v))
    except ValueError:
        return False
    return True
