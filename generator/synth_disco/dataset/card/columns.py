"""What each config's rows and columns hold: the tables of the card's "Configurations"
section (a row of each config in words, each column's type and meaning)."""

from __future__ import annotations

from typing import Any

import datasets

from synth_disco.recipe.schema import Recipe

ROW_OF = {
    "discussions": "discussion",
    "comments": "comment (including the original post and seed comments)",
    "events": "event of a discussion that is no comment: a moderator's `no_intervention`, a "
    "failed turn, a reply discarded by `quality.regenerate` (`regenerated`)",
    "annotations": "label (comment x annotator x dimension)",
    "aggregates": "comment x dimension: its labels aggregated (mean, majority, share, count)",
    "agreement": "dimension: Krippendorff's alpha with a bootstrap 95% interval",
    "prompts": "distinct prompt (system message and templates) comments and labels point at",
    "personas": "persona of a pool the run used",
}
COLUMN_DOCS = {
    "discussion_id": "discussion id (join key)",
    "index": "position in plan order / in the discussion",
    "cell_id": "experiment cell (one combination of factor levels)",
    "replicate": "replicate number within the cell",
    "seed": "seed of this discussion (sampling and turn taking)",
    "post_id": "id of the original post in the post source",
    "title": "title of the original post",
    "op": "text of the original post",
    "op_author": "author of the original post",
    "seed_comments": "comments that existed before generation started",
    "participants": "the user agents: name, persona, instruction variant, instructions",
    "moderator": "the moderator agent (null when none)",
    "turn_policy": "turn-taking policy",
    "turns": "number of generated turns requested",
    "context_window": "number of previous comments shown to each speaker",
    "model": "model that generated the row",
    "model_revision": "resolved model revision (commit)",
    "generation": "decoding parameters (JSON)",
    "status": "ok or failed",
    "error": "error message when failed",
    "n_comments": "number of comments in the discussion",
    "prompt_tokens": "prompt tokens",
    "completion_tokens": "generated tokens",
    "structure": "forum, or the deliberation structure: ensemble, chain, debate or graph",
    "task": "the task the agents answered (structures)",
    "orders": "per cycle, the agents' slots (0-based, participants order) in answer order",
    "final_response": "the combiner's final response (structures with a combiner)",
    "moderator_instructions": "the combiner's instructions (written by the model when `auto`)",
    "cycle": "cycle of a structure's response (1-based; null in forum threads)",
    "position": "0-based place of the response's author in its cycle's order",
    "parent_ids": "the comments its author was shown (the task when none)",
    "comment_id": "comment id (join key)",
    "parent_id": "comment this one replies to",
    "author": "display name of the speaker",
    "role": "op, seed, user or moderator",
    "persona_id": "persona the speaker plays",
    "variant": "instruction variant of the speaker",
    "text": "the comment, cleaned of echoed prefixes and quotes",
    "raw_text": "the model output before cleaning",
    "finish_reason": "stop, length, eos or error",
    "attempts": "generation attempts: retries after empty replies and `quality.regenerate` ones",
    "kind": "no_intervention, failed_turn or regenerated",
    "detail": "failed_turn: why; regenerated: the flags that discarded the reply",
    "attempt": "which attempt of the turn the event belongs to (1 = the first)",
    "flags": "quality flags (see Quality flags under Statistics)",
    "annotator_id": "annotator persona id",
    "annotator_persona": "annotator persona description",
    "dimension": "annotation dimension",
    "label": "the label as a number: a scale's value, else its position in the dimension's labels",
    "label_text": "the label as the annotator gave it",
    "scores": "probability of each label (method score): the full distribution",
    "mean": "mean label value (scales of numbers only)",
    "majority": "most frequent label, coded like `label` (ties: the first listed)",
    "majority_text": "most frequent label as text",
    "majority_share": "share of the comment's labels that are the majority label",
    "n": "number of labels aggregated",
    "level": "level of measurement alpha was computed at (ordinal or nominal)",
    "alpha": "Krippendorff's alpha (null when undefined)",
    "alpha_low": "lower bound of its bootstrap 95% interval (comments resampled)",
    "alpha_high": "upper bound of its bootstrap 95% interval",
    "n_items": "comments with at least two labels",
    "n_labels": "labels counted",
    "n_annotators": "distinct annotators",
    "prompt_id": "the prompt this row was generated from (config `prompts`)",
    "system": "the rendered system message",
    "templates": "the Jinja templates the user message is rendered from (name, source)",
    "method": "score (label log-probabilities) or generate (parsed answer)",
    "pool": "persona pool name in the recipe",
    "id": "persona id",
    "name": "persona name",
    "description": "persona description",
    "fields": "the source's other persona attributes, as key/value pairs",
}


def _column_doc(recipe: Recipe, config: str, column: str) -> str:
    """What a column of ``config`` holds, for the card's column tables."""
    if column in recipe.factors:
        return f"level of the factor `{column}`"
    dims = recipe.annotation.dimensions if recipe.annotation is not None else {}
    if config == "annotations" and column in dims:
        return f"the label on `{column}` (set on its rows only)"
    if config == "personas" and column not in COLUMN_DOCS:
        return f"the attribute `{column}` (every persona of the pool has it)"
    if column == "role" and config == "prompts":
        return "participant, moderator or annotator"
    if column == "n_comments" and config == "agreement":
        return "comments labelled"
    return COLUMN_DOCS.get(column, "")


def _type_name(feature: Any) -> str:
    if isinstance(feature, datasets.ClassLabel):
        return "class: " + ", ".join(feature.names)
    if isinstance(feature, datasets.Value):
        return feature.dtype
    if isinstance(feature, datasets.List):
        return f"list<{_type_name(feature.feature)}>"
    if isinstance(feature, dict):
        return "struct<" + ", ".join(feature) + ">"
    return type(feature).__name__
