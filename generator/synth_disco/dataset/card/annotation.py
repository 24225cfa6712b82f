"""The card's annotation section: the annotating model and method, and per dimension its
labels with their counts and shares and the annotators' agreement."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from synth_disco.dataset.card.prompts import _text
from synth_disco.dataset.portable import portable_model_id
from synth_disco.recipe.schema import Recipe

METHOD_DOCS = {
    "score": "each label's probability is read from the model in one forward pass and the most "
    "likely label is kept",
    "generate": "the model writes an answer that is parsed into a label",
}


def _annotation(recipe: Recipe, stats: Any, agreement: Mapping[str, Any] | None) -> Any:
    a = recipe.annotation
    if a is None or not stats["annotations"]["total"]:
        return None
    model = recipe.model_for(a.model or recipe.discussion.model)
    dims = []
    for name, dim in a.dimensions.items():
        counts = stats["annotations"]["labels"].get(name, {})
        total = sum(counts.values())
        labels = list(counts) or dim.labels
        dims.append(
            {
                "name": name,
                "level": dim.level,
                "instructions": _text(dim.instructions),
                "labels": [
                    {
                        "label": lab,
                        "description": dim.descriptions.get(lab, ""),
                        "count": counts.get(lab, 0),
                        "share": counts.get(lab, 0) / total if total else 0.0,
                    }
                    for lab in labels
                ],
                "described": any(dim.descriptions.get(lab) for lab in labels),
                "agreement": (agreement or {}).get(name),
            }
        )
    return {
        "model": portable_model_id(model.model),
        "pool": a.annotators.pool,
        "per_comment": a.annotators.per_comment,
        "method": a.method,
        "method_doc": METHOD_DOCS.get(a.method, ""),
        "context_window": a.context_window,
        "context": (
            "every earlier comment of the discussion as context (layout `thread`)"
            if a.layout == "thread"
            else f"the original post and the previous {a.context_window} comments as context "
            "(layout `window`)"
        ),
        "dimensions": dims,
    }
