"""The card's figures, drawn from the assembly statistics (not from the rows, so re-rendering a
card never re-reads the dataset).

With annotations: the label distribution of every dimension per level of each factor
(``figures/labels_by_<factor>.png``). Without: the distribution of comment lengths per level
(``figures/comment_length_by_<factor>.png``). The quality flag rates per level
(``figures/quality_by_<factor>.png``; with regeneration, the rate before it too). A recipe
without factors gets one figure of each over all discussions (``..._overall.png``). Matplotlib is used through its object API with the Agg
canvas, so nothing touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from synth_disco.store.files import atomic_write_bytes

FIGURES_DIR = "figures"
_PREFIXES = ("labels_", "comment_length_", "quality_")
_MAX_DIMENSIONS = 6  # subplots per figure; more would be unreadable


@dataclass(frozen=True)
class CardFigure:
    """A figure written into the dataset folder: its relative path and its caption."""

    path: str
    caption: str


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "factor"


def _shares(counts: Mapping[str, int], order: list[str]) -> list[float]:
    total = sum(counts.get(k, 0) for k in order)
    return [counts.get(k, 0) / total if total else 0.0 for k in order]


def _stacked(
    ax: Any,
    rows: list[tuple[str, Mapping[str, int]]],
    order: list[str],
    title: str,
    ordinal: bool,
) -> None:
    """Horizontal 100% stacked bars: one bar per level, one segment per category."""
    from matplotlib import colormaps

    cmap = colormaps["viridis" if ordinal else "tab10"]
    names = [f"{name} (n={sum(counts.get(k, 0) for k in order)})" for name, counts in rows]
    left = [0.0] * len(rows)
    for i, cat in enumerate(order):
        color = cmap(i / max(1, len(order) - 1)) if ordinal else cmap(i % 10)
        widths = [_shares(counts, order)[i] for _, counts in rows]
        ax.barh(names, widths, left=left, color=color, label=cat or "(none)")
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share")
    ax.set_title(title, fontsize=10)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)


def _save(fig: Figure, path: Path) -> None:
    """Write the figure as PNG; atomically, since re-rendering a card replaces its figures."""
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    # No "Software" text chunk: the same statistics give the same bytes.
    fig.savefig(png, format="png", dpi=100, metadata={"Software": None})
    atomic_write_bytes(path, png.getvalue())


def _ordered(levels: Mapping[str, Any], order: list[str]) -> dict[str, Any]:
    """``levels`` in recipe order; levels the recipe does not name follow, by name."""
    known = [lv for lv in order if lv in levels]
    return {lv: levels[lv] for lv in known + sorted(set(levels) - set(known))}


def _groups(
    stats: Mapping[str, Any], factors: list[str], order: Mapping[str, list[str]]
) -> list[tuple[str, dict[str, Any]]]:
    """(factor, {level: level stats}); a recipe without factors gets one overall group."""
    by_level = stats.get("by_level") or {}
    groups = [(f, _ordered(by_level[f], order.get(f, []))) for f in factors if by_level.get(f)]
    if groups:
        return groups
    overall = {
        "all": {
            "labels": stats["annotations"]["labels"],
            "length_hist": stats["comments"]["length_hist"],
            "quality": stats.get("quality"),
        }
    }
    return [("", overall)]


def _quality_figure(
    levels: Mapping[str, Any], flags: list[str], about: str
) -> tuple[Figure, str] | None:
    """Grouped bars: per flag, the share of generated comments raising it at each level; with
    regeneration, a pale bar behind each for the share before it. None without flags."""
    counts = {lv: s.get("quality") for lv, s in levels.items() if s.get("quality")}
    counts = {lv: q for lv, q in counts.items() if q["comments"]}
    if not flags or not counts:
        return None
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    regenerated = any(q["first_attempt"] != q["published"] for q in counts.values())
    height = 0.8 / len(counts)
    fig = Figure(figsize=(7.5, 1.4 + 0.25 * len(flags) * max(1, len(counts) * 0.7)))
    ax = fig.subplots()
    for i, (lv, q) in enumerate(counts.items()):
        y = [f + i * height for f in range(len(flags))]
        n = q["comments"]
        if regenerated:
            before = [q["first_attempt"].get(flag, 0) / n for flag in flags]
            ax.barh(y, before, height=height, color=cmap(i % 10), alpha=0.3)
        shares = [q["published"].get(flag, 0) / n for flag in flags]
        ax.barh(y, shares, height=height, color=cmap(i % 10), label=f"{lv} (n={n})")
    ax.set_yticks([f + 0.4 - height / 2 for f in range(len(flags))], labels=flags, fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "share of generated comments" + (" (pale: before regeneration)" if regenerated else "")
    )
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    caption = f"Quality flag rates {about}"
    fig.suptitle(caption, fontsize=11)
    fig.tight_layout()
    return fig, caption


def draw_figures(
    dataset_dir: Path,
    stats: Mapping[str, Any],
    factors: list[str],
    ordinal: Mapping[str, bool] | None = None,
    level_order: Mapping[str, list[str]] | None = None,
    flags: list[str] | None = None,
) -> list[CardFigure]:
    """Draw the card's figures into ``dataset_dir/figures`` and return them in card order.

    ``ordinal`` says which annotation dimensions have an ordered scale (sequential colours);
    ``level_order`` lists each factor's levels in recipe order (bars follow it); ``flags`` the
    quality flags the run computed, in the order the card lists them.
    Figures this module drew earlier that are no longer produced are removed.
    """
    out_dir = Path(dataset_dir) / FIGURES_DIR
    labels = {d: c for d, c in stats["annotations"]["labels"].items() if c}
    ordinal = ordinal or {}
    made: list[CardFigure] = []
    for factor, levels in _groups(stats, factors, level_order or {}):
        suffix = f"by_{_slug(factor)}" if factor else "overall"
        about = f"per level of {factor}" if factor else "over all discussions"
        if labels:
            dims = list(labels)[:_MAX_DIMENSIONS]
            fig = Figure(figsize=(7.5, 1.2 + 0.45 * len(levels) * len(dims) + 0.6 * len(dims)))
            axes = fig.subplots(len(dims), 1, squeeze=False)[:, 0]
            for ax, dim in zip(axes, dims, strict=True):
                order = list(labels[dim])
                rows = [(lv, s.get("labels", {}).get(dim, {})) for lv, s in levels.items()]
                _stacked(ax, rows, order, f"{dim}", ordinal.get(dim, False))
            name, caption = f"labels_{suffix}.png", f"Label distribution {about}"
        else:
            fig = Figure(figsize=(7.5, 1.6 + 0.45 * len(levels)))
            ax = fig.subplots()
            rows = [(lv, s["length_hist"]) for lv, s in levels.items()]
            order = list(stats["comments"]["length_bins"])
            _stacked(ax, rows, order, "words per generated comment", True)
            name, caption = f"comment_length_{suffix}.png", f"Comment length (words) {about}"
        fig.suptitle(caption, fontsize=11)
        fig.tight_layout()
        _save(fig, out_dir / name)
        made.append(CardFigure(f"{FIGURES_DIR}/{name}", caption))
        quality = _quality_figure(levels, flags or [], about)
        if quality is not None:
            name = f"quality_{suffix}.png"
            _save(quality[0], out_dir / name)
            made.append(CardFigure(f"{FIGURES_DIR}/{name}", quality[1]))
    keep = {Path(f.path).name for f in made}
    if out_dir.exists():
        for old in out_dir.glob("*.png"):
            if old.name.startswith(_PREFIXES) and old.name not in keep:
                old.unlink()
    return made
