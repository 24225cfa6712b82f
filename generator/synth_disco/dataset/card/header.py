"""The card's YAML header (front matter): what the Hub shows (name, license, tags, size
bucket, sources) and the configs and features ``datasets`` loads the folder with."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import datasets

from synth_disco.dataset.manifest import CONFIGS
from synth_disco.recipe.schema import Recipe

# The Hub's size buckets, by number of rows (here: comments).
SIZE_BUCKETS = (
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"),
    (100_000_000_000, "10B<n<100B"),
    (1_000_000_000_000, "100B<n<1T"),
)


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, name in SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>1T"


def card_header(
    recipe: Recipe, manifest: Mapping[str, Any], features: Mapping[str, datasets.Features]
) -> dict[str, Any]:
    """The README's YAML header: what the Hub shows and what ``datasets`` loads configs from."""
    configs = [c for c in CONFIGS if c in manifest["configs"]]
    tags = ["synthetic", "synth-disco"]
    tags += [t for t in recipe.output.tags if t not in tags]
    tasks = ["text-generation"] + (["text-classification"] if "annotations" in configs else [])
    comments = manifest["counts"].get("comments", 0)
    hub_sources = [s.hub for s in (*recipe.personas.values(), recipe.posts) if s.hub]
    return {
        "pretty_name": recipe.output.pretty_name or recipe.name,
        "license": recipe.license,
        "language": list(recipe.output.language),
        "annotations_creators": ["machine-generated"],
        "language_creators": ["machine-generated"],
        "source_datasets": ["original", *(f"extended|{h}" for h in dict.fromkeys(hub_sources))],
        "tags": tags,
        "task_categories": tasks,
        "size_categories": [size_category(comments)],
        "configs": [
            {
                "config_name": c,
                "data_files": [{"split": "train", "path": f"data/{c}/train-*"}],
                **({"default": True} if c == "discussions" else {}),
            }
            for c in configs
        ],
        "dataset_info": [
            {
                "config_name": c,
                "features": features[c]._to_yaml_list(),
                "splits": [
                    {
                        "name": "train",
                        "num_bytes": manifest["configs"][c]["num_bytes"],
                        "num_examples": manifest["configs"][c]["num_examples"],
                    }
                ],
                "download_size": manifest["configs"][c]["download_size"],
                "dataset_size": manifest["configs"][c]["num_bytes"],
            }
            for c in configs
        ],
    }
