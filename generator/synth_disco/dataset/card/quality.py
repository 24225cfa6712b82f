"""The card's quality section: each quality flag's meaning and its rates, overall and per
factor level (before and after regeneration when turns were regenerated)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synth_disco.dataset.card.design import _level_rank
from synth_disco.dataset.stats import ANY_FLAG
from synth_disco.discussion.quality.flags import flag_docs
from synth_disco.recipe.schema import Recipe


def _rate(q: Mapping[str, Any], flag: str, regenerated: bool) -> str:
    """A flag's share of a group's generated comments ("12.5%"; "30.0% -> 12.5%" when turns
    were regenerated: before, then as published)."""
    n = q["comments"]
    if not n:
        return ""
    now = f"{q['published'].get(flag, 0) / n:.1%}"
    if not regenerated:
        return now
    return f"{q['first_attempt'].get(flag, 0) / n:.1%} -> {now}"


def _quality(recipe: Recipe, stats: Mapping[str, Any]) -> dict[str, Any] | None:
    """The card's quality section: each flag's meaning and its rates, overall and per level."""
    q = stats.get("quality")
    if not q or not q["comments"]:
        return None
    config = recipe.quality.config()
    docs = flag_docs(config)
    regenerated = q.get("regenerated_replies", 0) > 0
    groups = [("all", q)] + [
        (f"{f} = {lv}", levels[lv]["quality"])
        for f, levels in stats["by_level"].items()
        for lv in sorted(levels, key=lambda lv, f=f: _level_rank(recipe, f, lv))
        if levels[lv].get("quality", {}).get("comments")
    ]
    rows = [
        {"flag": f, "meaning": docs[f], "rates": [_rate(g, f, regenerated) for _, g in groups]}
        for f in config.enabled
    ]
    rows.append(
        {
            "flag": ANY_FLAG,
            "meaning": "The comment raises at least one of the flags above.",
            "rates": [_rate(g, ANY_FLAG, regenerated) for _, g in groups],
        }
    )
    return {
        "comments": q["comments"],
        "groups": [{"name": name, "n": g["comments"]} for name, g in groups],
        "rows": rows,
        "regenerate": recipe.quality.regenerate,
        "regenerate_on": list(recipe.quality.regenerate_flags),
        "regenerated": regenerated,
        "regenerated_turns": q.get("regenerated_turns", 0),
        "regenerated_replies": q.get("regenerated_replies", 0),
        "stop_strings": recipe.quality.stop_strings,
    }
