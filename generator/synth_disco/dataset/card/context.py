"""The card's context: everything the template shows, already shaped into rows and
strings (``card_context``), gathered from the section modules."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from synth_disco.dataset.card.annotation import _annotation
from synth_disco.dataset.card.citation import _citation
from synth_disco.dataset.card.columns import ROW_OF, _column_doc, _type_name
from synth_disco.dataset.card.design import _level_rank, _structures
from synth_disco.dataset.card.models import _dtype, _generation, _reported
from synth_disco.dataset.card.prompts import _instructions, _text, prompt_templates
from synth_disco.dataset.card.quality import _quality
from synth_disco.dataset.card.reproduce import _install, _rebuild_context
from synth_disco.dataset.card.sources import _sources
from synth_disco.dataset.manifest import CONFIGS, dump_yaml
from synth_disco.dataset.portable import portable_recipe
from synth_disco.recipe.overrides import sets_under
from synth_disco.recipe.schema import Recipe


def card_context(
    dataset_dir: Path,
    recipe: Recipe,
    fingerprint: str,
    stats: Mapping[str, Any],
    manifest: Mapping[str, Any],
    features: Mapping[str, datasets.Features],
    figures: list[Any],
    agreement: Mapping[str, Any] | None,
    repo: str,
) -> dict[str, Any]:
    """Everything the template shows, already shaped into rows and strings."""
    versions = manifest.get("versions", {})
    package_version = versions.get("synth-disco") or "?"
    d = recipe.discussion
    configs = [
        {
            "name": c,
            "row": ROW_OF[c],
            "rows": manifest["configs"][c]["num_examples"],
            "files": len(manifest["configs"][c]["files"]),
            "columns": [
                {
                    "name": n,
                    "type": _type_name(f),
                    "doc": _column_doc(recipe, c, n),
                }
                for n, f in features[c].items()
            ],
        }
        for c in CONFIGS
        if c in manifest["configs"]
    ]
    participants = (
        d.participants
        if isinstance(d.participants, int)
        else (f"{d.participants.min} to {d.participants.max}")
    )
    tt = d.turn_taking
    turn_taking = tt.policy + {
        "random_weighted": f" (p_respond {tt.p_respond})",
        "reply_tree": f" (reply_to_op {tt.reply_to_op})",
        "round_robin": " (random first speaker)" if tt.random_first else "",
    }.get(tt.policy, "")
    pd = stats["comments"]["per_discussion"]
    by_level = [
        {
            "factor": f,
            "level": lv,
            "discussions": s["discussions"],
            "comments": s["comments"],
            "words": "" if s["words_per_comment"] is None else f"{s['words_per_comment']:.1f}",
        }
        for f, levels in stats["by_level"].items()
        for lv, s in sorted(levels.items(), key=lambda kv: _level_rank(recipe, f, kv[0]))
    ]
    patches = (
        dump_yaml(portable_recipe(json.loads(json.dumps(recipe.factors)))) if recipe.factors else ""
    )
    return {
        "name": recipe.name,
        "version": recipe.version,
        "pretty_name": recipe.output.pretty_name or recipe.name,
        "description": recipe.description.strip(),
        "package_version": package_version,
        "repo": repo,
        "fingerprint": fingerprint,
        "stats": stats,
        "configs": configs,
        "factors": [{"name": f, "levels": list(levels)} for f, levels in recipe.factors.items()],
        "has_moderator": d.moderator is not None
        or any(
            sets_under(p, ("discussion", "moderator"))
            for levels in recipe.factors.values()
            for p in levels.values()
        ),
        "design": {
            "mode": recipe.design.mode,
            "replicates": recipe.replicates,
            "seed": recipe.seed,
            "cells": sorted(
                stats["cells"],
                key=lambda c: [
                    _level_rank(recipe, f, c["levels"].get(f, "")) for f in recipe.factors
                ],
            ),
            "patches": patches,
            "participants": participants,
            "turns": d.turns,
            "turn_taking": turn_taking,
            "context_window": d.context_window,
            "persona_pool": d.persona_pool,
        },
        "models": [
            {
                "key": k,
                "id": m["id"],
                "revision": m["revision"]
                if isinstance(m["revision"], str)
                else ", ".join(m["revision"] or []) or "latest at build time",
                "engine": m["engine"],
                "reported": _reported(m),
                "dtype": _dtype(m),
                "generation": _generation(m["generation"]),
            }
            for k, m in manifest["models"].items()
        ],
        "reproducibility": [
            {"engine": engine, "text": text}
            for engine, text in dict(
                (m["engine"], m.get("reproducibility")) for m in manifest["models"].values()
            ).items()
            if text
        ],
        "instructions": _instructions(recipe),
        "structures": _structures(recipe),
        "templates": [{"name": n, "text": t} for n, t in prompt_templates(recipe)],
        "variants": [
            {"name": k, "share": v.share, "instructions": _text(v.instructions)}
            for k, v in d.variants.items()
        ],
        "sources": _sources(recipe, dataset_dir, manifest, stats),
        "annotation": _annotation(recipe, stats, agreement),
        "quality": _quality(recipe, stats),
        "per_discussion": "n/a"
        if pd["mean"] is None
        else f"{pd['mean']:.2f} / {pd['min']} / {pd['max']}",
        "words_per_comment": "n/a"
        if stats["comments"]["words_per_comment"] is None
        else f"{stats['comments']['words_per_comment']:.1f}",
        "by_level": by_level,
        "figures": figures,
        "versions": sorted(versions.items()),
        "citation": _citation(recipe, repo, package_version, (manifest.get("created") or "")[:4]),
        "install": _install(manifest, package_version),
        "rebuild": _rebuild_context(manifest),
    }
