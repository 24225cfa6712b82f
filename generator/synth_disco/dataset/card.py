"""The dataset card: README.md with a YAML header the Hub and ``datasets`` read, and a body
rendered from the Jinja template ``templates/dataset_card.md.j2`` of this package.

The generated body sits between the card markers; re-rendering replaces only that block and the
YAML keys synth-disco writes, so text a person added around it survives (the merge and its rules
are in ``readme.py``). Everything the card says comes from the recipe, the manifest and the
statistics computed at assembly, so ``synth-disco card RUN_DIR`` re-renders it without
re-reading the rows. The card prints the exact text of every prompt template the run rendered
(``prompt_templates``).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import jinja2
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydantic

from synth_disco.annotation.prompts import templates_used as annotation_templates
from synth_disco.dataset.figures import draw_figures
from synth_disco.dataset.manifest import (
    CONFIGS,
    MANIFEST,
    AssembleError,
    dump_yaml,
    read_manifest,
    used_pools,
)
from synth_disco.dataset.portable import portable_model_id, portable_recipe
from synth_disco.dataset.readme import card_text, merge_readme
from synth_disco.dataset.stats import ANY_FLAG
from synth_disco.discussion.quality.flags import flag_docs
from synth_disco.discussion.structures import describe as describe_structure
from synth_disco.discussion.structures import diagram as structure_diagram
from synth_disco.discussion.templates_used import templates_used as discussion_templates
from synth_disco.recipe.factorial import cell_discussions
from synth_disco.recipe.overrides import sets_under
from synth_disco.recipe.schema import AUTO_INSTRUCTIONS, FileRef, Recipe, SourceSpec
from synth_disco.store.files import atomic_write_text

TEMPLATE = "dataset_card.md.j2"
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
METHOD_DOCS = {
    "score": "each label's probability is read from the model in one forward pass and the most "
    "likely label is kept",
    "generate": "the model writes an answer that is parsed into a label",
}


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    for bound, name in SIZE_BUCKETS:
        if n < bound:
            return name
    return "n>1T"


def template_dir() -> Path:
    """The folder holding the packaged card template (``templates/`` of this package)."""
    return Path(str(importlib.resources.files("synth_disco.dataset") / "templates"))


# -- Jinja filters ---------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """A value safe inside a markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def _fenced(text: Any, lang: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    text = "" if text is None else str(text).rstrip("\n")
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text}\n{fence}"


def _environment(folder: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(folder)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # markdown, not HTML; table cells go through the `cell` filter
    )
    env.filters["cell"] = _cell
    env.filters["fenced"] = _fenced
    return env


# -- header ----------------------------------------------------------------------------------


def _features_of(dataset_dir: Path, files: list[str]) -> datasets.Features:
    return datasets.Features.from_arrow_schema(pq.read_schema(dataset_dir / files[0]))


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


# -- context ---------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, FileRef):
        return f"(read from {portable_model_id(value.file)})"
    return str(value)


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


def _source_where(spec: SourceSpec) -> str:
    if spec.inline is not None:
        n = len(spec.inline)
        where = f"inline in the recipe ({n} record{'s' if n != 1 else ''})"
    elif spec.hub is not None:
        extra = [f"split {spec.split}"]
        if spec.config:
            extra.insert(0, f"config {spec.config}")
        if spec.revision:
            extra.append(f"revision {spec.revision}")
        where = f"Hub dataset `{spec.hub}` ({', '.join(extra)})"
    else:
        kind = "file" if spec.file is not None else "folder"
        where = f"{kind} `{portable_model_id(spec.file or spec.dir or '')}`"
    if spec.filter:
        where += f", filtered by `{spec.filter}`"
    return where


def _pool_counts(dataset_dir: Path, manifest: Mapping[str, Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rel in manifest["configs"].get("personas", {}).get("files", []):
        column = pq.read_table(dataset_dir / rel, columns=["pool"])["pool"]
        for item in pc.value_counts(column).to_pylist():
            counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]
    return counts


def _sources(recipe: Recipe, dataset_dir: Path, manifest: Mapping[str, Any], stats: Any) -> list:
    pools = _pool_counts(dataset_dir, manifest)
    used = used_pools(recipe)
    rows = []
    for pool, spec in recipe.personas.items():
        role = used.get(pool, "not used")
        rows.append(
            {
                "role": f"personas `{pool}` ({role})",
                "where": _source_where(spec),
                "license": spec.license or "not stated",
                "sample": spec.sample or "all",
                "rows": pools.get(pool, 0),
            }
        )
    rows.append(
        {
            "role": "original posts",
            "where": _source_where(recipe.posts),
            "license": recipe.posts.license or "not stated",
            "sample": recipe.posts.sample or "all",
            "rows": stats["posts_used"],
        }
    )
    return rows


def prompt_templates(recipe: Recipe) -> list[tuple[str, str]]:
    """(name, Jinja source) of every prompt template the run renders: the recipe's own where
    it sets one, synth-disco's built-in otherwise. The card prints each verbatim. The sources
    come from the code that renders them (``discussion.templates_used.templates_used`` and
    ``annotation.prompts.templates_used``), so the card cannot list a template nothing uses.
    Templates a factor level patches in are shown with the patches under Experimental design.
    """
    out = list(discussion_templates(recipe).items())
    if recipe.annotation is not None:
        override = _text(recipe.discussion.templates.annotation) or None
        out += [
            (f"annotation: {name}", source)
            for name, source in annotation_templates(recipe.annotation, override).items()
        ]
    return out


def _instructions(recipe: Recipe) -> list[dict[str, str]]:
    """The instruction texts the prompts are rendered with: (title, note, text) blocks."""
    d = recipe.discussion
    blocks = [
        {
            "title": "Participant instructions",
            "text": _text(d.instructions),
            "note": "" if _text(d.instructions) else "None given.",
        },
    ]
    if _text(d.context):
        blocks.append({"title": "Discussion context", "text": _text(d.context), "note": ""})
    if d.moderator is not None:
        m = d.moderator
        persona = m.persona if isinstance(m.persona, str) else json.dumps(m.persona)
        if m.role == "combiner":
            auto = m.instructions == AUTO_INSTRUCTIONS
            note = "Combiner: writes each structure's final response from its last cycle" + (
                "; its instructions were written by the model from the task, once per "
                "discussion (column `moderator_instructions`)"
                if auto
                else ""
            )
            blocks.append(
                {
                    "title": f"Moderator `{m.name}` (combiner)",
                    "note": note + (f"; persona: {persona}" if persona else ""),
                    "text": "" if auto else _text(m.instructions),
                }
            )
        else:
            blocks.append(
                {
                    "title": f"Moderator `{m.name}`",
                    "note": f"Policy `{m.policy}`"
                    + (f" (every {m.k} comments)" if m.policy == "every_k" else "")
                    + (f"; persona: {persona}" if persona else ""),
                    "text": _text(m.instructions),
                }
            )
    elif any(
        sets_under(p, ("discussion", "moderator"))
        for levels in recipe.factors.values()
        for p in levels.values()
    ):
        blocks.append(
            {
                "title": "Moderator",
                "text": "",
                "note": "Set per factor level: see the patches under Experimental design.",
            }
        )
    if recipe.annotation is not None and _text(recipe.annotation.instructions):
        blocks.append(
            {
                "title": "Annotator instructions",
                "text": _text(recipe.annotation.instructions),
                "note": "",
            }
        )
    return blocks


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


def _reported(m: Mapping[str, Any]) -> str:
    """The model id(s) the engine reported, when they differ from the recipe's."""
    reported = m.get("reported_id")
    ids = [reported] if isinstance(reported, str) else list(reported or [])
    return ", ".join(f"`{r}`" for r in ids if r != m["id"])


def _dtype(m: Mapping[str, Any]) -> str:
    """The dtype asked for, and the one loaded where they differ (``auto`` -> float32)."""
    loaded = sorted({str(e["dtype"]) for e in m.get("loaded") or [] if e.get("dtype")})
    if not loaded or loaded == [m["dtype"]]:
        return m["dtype"]
    return f"{m['dtype']} (loaded {', '.join(loaded)})"


def _structures(recipe: Recipe) -> list[dict[str, str]]:
    """Each deliberation structure the design's cells use: its name, what it does in words,
    and its graph as a Mermaid flowchart (forum threads are described by the rest of the
    card)."""
    out = []
    for cfg in cell_discussions(recipe):
        if cfg.structure == "forum":
            continue
        out.append(
            {
                "name": cfg.structure,
                "description": describe_structure(cfg),
                "diagram": structure_diagram(cfg),
            }
        )
    return out


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


def _generation(g: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in g.items() if v not in ([], None))


def _bibtex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def _citation(recipe: Recipe, repo: str, package_version: str, year: str | None) -> str:
    """The recipe's own BibTeX, else one for the dataset: its authors (``output.authors``,
    else the Hub namespace it is published under, as an organisation) and the year the run
    was started."""
    if recipe.output.citation:
        return recipe.output.citation.strip()
    key = re.sub(r"[^A-Za-z0-9]+", "_", f"{recipe.name}_{recipe.version}").strip("_")
    title = _bibtex_escape(recipe.output.pretty_name or recipe.name)
    if recipe.output.authors:
        author = " and ".join(_bibtex_escape(a) for a in recipe.output.authors)
    else:
        author = "{" + _bibtex_escape(repo.split("/")[0]) + "}"  # braces: an organisation
    lines = [
        f"@misc{{{key},",
        f"  author = {{{author}}},",
        f"  title = {{{{{title}}}: synthetic online discussions (version {recipe.version})}},",
    ]
    if year:
        lines.append(f"  year = {{{year}}},")
    lines += [
        f"  howpublished = {{\\url{{https://huggingface.co/datasets/{repo}}}}},",
        f"  note = {{Generated with synth-disco {package_version} from the recipe "
        f"{_bibtex_escape(recipe.name)}}}",
        "}",
    ]
    return "\n".join(lines)


def _rebuild_context(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the folder ships for ``rebuild`` (None for a folder made before it did)."""
    shipped = manifest.get("rebuild")
    if not shipped:
        return None
    return {
        "files": sorted(shipped["files"]),
        "fingerprint": shipped["fingerprint"],
        "relocated": sorted(shipped["relocated"].items()),
    }


def _install(manifest: Mapping[str, Any], package_version: str) -> dict[str, str]:
    """How to install the synth-disco that made the dataset: a command, and a note."""
    source = manifest.get("install") or {"kind": "index"}
    if source.get("kind") != "git":
        return {"command": f"pip install synth-disco=={package_version}", "note": ""}
    commit = source["commit"]
    dirty = (
        " The build ran with uncommitted changes to that commit, which are not recorded."
        if source.get("dirty")
        else ""
    )
    if source.get("url"):
        return {
            "command": f'pip install "synth-disco @ git+{source["url"]}@{commit}"',
            "note": f"synth-disco {package_version} at commit `{commit}` (not from PyPI)." + dirty,
        }
    return {
        "command": f'pip install "git+<the synth-disco repository>@{commit}"',
        "note": f"synth-disco {package_version} at commit `{commit}`, installed from a checkout "
        "with no public remote recorded: install that commit from the synth-disco repository."
        + dirty,
    }


def _level_rank(recipe: Recipe, factor: str, level: str) -> tuple[int, str]:
    """Sort key: the level's position in the recipe (unknown levels last, by name)."""
    levels = list(recipe.factors.get(factor, {}))
    return (levels.index(level), "") if level in levels else (len(levels), level)


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


# -- rendering -------------------------------------------------------------------------------


def render_card(
    dataset_dir: Path,
    recipe: Recipe,
    fingerprint: str,
    stats: Mapping[str, Any],
    *,
    manifest: Mapping[str, Any] | None = None,
    agreement: Mapping[str, Any] | None = None,
    existing_readme: str | None = None,
    repo: str | None = None,
    templates: Path | None = None,
) -> Path:
    """Write ``dataset_dir/README.md`` and its figures; returns the README's path.

    ``manifest`` defaults to the folder's ``synth_disco/manifest.json``; ``existing_readme`` to
    the folder's current README (merged with the new card as ``readme.merge_readme`` says);
    ``templates`` to the packaged template folder (a folder holding an edited copy of
    ``dataset_card.md.j2`` renders the card from that copy).
    """
    dataset_dir = Path(dataset_dir)
    manifest = manifest if manifest is not None else read_manifest(dataset_dir)
    readme = dataset_dir / "README.md"
    if existing_readme is None and readme.exists():
        existing_readme = readme.read_text(encoding="utf-8")
    repo = repo or recipe.output.hub.repo or f"your-org/{recipe.name}"
    features = {
        c: _features_of(dataset_dir, manifest["configs"][c]["files"])
        for c in CONFIGS
        if c in manifest["configs"]
    }
    ordinal = (
        {k: d.level == "ordinal" for k, d in recipe.annotation.dimensions.items()}
        if recipe.annotation
        else {}
    )
    order = {f: list(levels) for f, levels in recipe.factors.items()}
    figures = draw_figures(
        dataset_dir,
        stats,
        list(recipe.factors),
        ordinal,
        order,
        list(recipe.quality.config().enabled),
    )
    context = card_context(
        dataset_dir, recipe, fingerprint, stats, manifest, features, figures, agreement, repo
    )
    body = _environment(templates or template_dir()).get_template(TEMPLATE).render(**context)
    header = card_header(recipe, manifest, features)
    atomic_write_text(readme, merge_readme(existing_readme, card_text(header, body)))
    return readme


def rerender_card(run_dir: Path, *, repo: str | None = None) -> Path:
    """Re-render README.md and the figures of an assembled run (``run_dir`` or its
    ``dataset/`` folder) from its manifest, without re-reading the rows."""
    run_dir = Path(run_dir)
    dataset_dir = run_dir if (run_dir / MANIFEST).exists() else run_dir / "dataset"
    manifest = read_manifest(dataset_dir)
    if "recipe" not in manifest or "stats" not in manifest:
        raise AssembleError(f"{MANIFEST} is from an older synth-disco: re-assemble the run")
    try:
        recipe = Recipe.model_validate(manifest["recipe"])
    except pydantic.ValidationError as exc:
        raise AssembleError(
            f"the recipe in {MANIFEST} does not validate with this synth-disco "
            f"({exc.error_count()} problem(s)): re-assemble the run"
        ) from exc
    return render_card(
        dataset_dir,
        recipe,
        manifest["fingerprint"],
        manifest["stats"],
        manifest=manifest,
        agreement=manifest.get("agreement"),
        repo=repo or manifest.get("repo"),
    )
