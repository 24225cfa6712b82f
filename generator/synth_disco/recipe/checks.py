"""The checks a recipe passes before anything runs, beyond its schema.

Factor names and patch keys, the size of the design, persona and post sources (they must load
and not be empty), every cell (or every level, when there are very many cells) and the
references inside each config: models and pools named must exist, participants and annotators
must fit in their pools, templates must render. Each check reports through the ``Checker``,
so every problem points at the line that caused it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import ValidationError

from synth_disco.errors import SourceError
from synth_disco.recipe.checker import Checker
from synth_disco.recipe.factorial import (
    cell_base,
    cell_patches,
    factor_levels,
    n_full_factorial,
    select_cells,
)
from synth_disco.recipe.graph import find_cycle, resolve_edges
from synth_disco.recipe.overrides import KeyPath, apply_patches, dotted, overlaps, parse_key
from synth_disco.recipe.schema import (
    AUTO_INSTRUCTIONS,
    DEFAULT_VARIANT,
    AnnotatorsConfig,
    DiscussionConfig,
    Range,
    Recipe,
    SourceSpec,
)
from synth_disco.recipe.schema_walk import field_names, schema_types, suggest
from synth_disco.recipe.sources.personas import load_personas
from synth_disco.recipe.sources.posts import load_posts
from synth_disco.recipe.sources.read import hub_commit, is_local_hub, source_files
from synth_disco.recipe.templates import (
    TEMPLATE_KINDS,
    check_template,
    combination_presets,
    is_preset_name,
    template_environment,
)
from synth_disco.records import Persona, Post
from synth_disco.store import schemas

# Factors may change how discussions run and are annotated, not what they draw from.
PATCHABLE = ("discussion", "models", "annotation", "quality")
# Each factor becomes a column of plan.parquet and of the dataset's tables (discussions,
# comments, events, annotations, aggregates), so it may not take the name of any of their other
# columns; nor may an annotation dimension, which names a column of the annotations table.
RESERVED_COLUMNS = frozenset(
    name
    for schema in (
        schemas.plan_schema([]),
        schemas.discussions_schema([]),
        schemas.COMMENTS,
        schemas.EVENTS,
        schemas.published_annotations({}),
        schemas.AGGREGATES,
    )
    for name in schema.names
)
# Validating every cell is exact but costs ~1 ms each; above this many cells, each factor
# level is validated on its own against the base config instead.
MAX_CELLS_CHECKED = 2000
MAX_CELLS = 1_000_000


def _patches(data: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(factor, level, patch) for every level patch written as a mapping."""
    factors = data.get("factors")
    if not isinstance(factors, dict):
        return
    for fname, levels in factors.items():
        if not isinstance(levels, dict):
            continue
        for lname, patch in levels.items():
            if isinstance(patch, dict):
                yield fname, lname, patch


def patch_items(data: dict[str, Any]) -> Iterator[tuple[str, str, str, KeyPath]]:
    """(factor, level, patch key, key path) for every patch key that is a key path
    (``check_patch_keys`` reports the others)."""
    for fname, lname, patch in _patches(data):
        for key in patch:
            try:
                yield fname, lname, key, parse_key(key)
            except ValueError:
                continue


def check_patch_keys(ck: Checker, data: dict[str, Any]) -> set[tuple[str, str]]:
    """Factor names and patch keys: each key must exist in the schema, in a patchable
    section, and no two factors may set overlapping keys (their order would matter).
    Returns the (factor, level) pairs with a bad key."""
    bad: set[tuple[str, str]] = set()
    factors = data.get("factors")
    if not isinstance(factors, dict):
        return bad  # the schema check reports the type
    for fname, levels in factors.items():
        fpath: KeyPath = ("factors", fname)
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", fname):
            ck.add(
                fpath, "factor names must be identifiers (letters, digits, '_'); they name columns"
            )
        elif fname in RESERVED_COLUMNS:
            ck.add(fpath, f"{fname!r} is a column of the dataset; name the factor otherwise")
        if isinstance(levels, dict) and not levels:
            ck.add(fpath, "a factor needs at least one level")
    for fname, lname, patch in _patches(data):
        for key in patch:
            try:
                parse_key(key)
            except ValueError as e:
                bad.add((fname, lname))
                ck.add(("factors", fname, lname, key), f"factor {fname!r} level {lname!r}: {e}")
    owner: dict[KeyPath, str] = {}
    for fname, lname, key, kp in patch_items(data):
        mp: KeyPath = ("factors", fname, lname, key)
        where = f"factor {fname!r} level {lname!r}"
        if kp[0] not in PATCHABLE:
            bad.add((fname, lname))
            if kp[0] in Recipe.model_fields:
                ck.add(
                    mp,
                    f"{where}: {key!r} is shared by all cells; factors may set keys under "
                    f"{', '.join(PATCHABLE)}",
                )
            else:
                hint = suggest(str(kp[0]), Recipe.model_fields)
                ck.add(mp, f"{where}: {key!r} is not a recipe key{hint}")
            continue
        missing = next((n for n in range(1, len(kp) + 1) if not schema_types(kp[:n])), None)
        if missing is not None:
            bad.add((fname, lname))
            hint = suggest(str(kp[missing - 1]), field_names(kp[: missing - 1]))
            ck.add(
                mp,
                f"{where}: {key!r} is not a recipe key "
                f"({dotted(kp[:missing])!r} does not exist{hint})",
            )
            continue
        other = next((o for o, f in owner.items() if f != fname and overlaps(o, kp)), None)
        if other is not None:
            bad.add((fname, lname))
            ck.add(
                mp,
                f"{where}: {key!r} is also set by factor {owner[other]!r}; "
                "different factors must set different keys",
            )
            continue
        owner.setdefault(kp, fname)
    return bad


def check_design(ck: Checker, r: Recipe) -> None:
    """The design's size, and variant names that would clash with the default variant."""
    n_full = n_full_factorial(factor_levels(r))
    if r.design.mode == "random":
        if r.design.cells is not None and r.design.cells > n_full:
            ck.add(
                ("design", "cells"),
                f"{r.design.cells} cells asked for, but the factors make only {n_full}",
            )
    elif n_full > MAX_CELLS:
        ck.add(
            ("factors",),
            f"the full factorial has {n_full:,} cells; use design: {{mode: random, cells: N}}",
        )
    for name in r.annotation.dimensions if r.annotation is not None else ():
        if name in RESERVED_COLUMNS or name in r.factors:
            ck.add(
                ("annotation", "dimensions", name),
                f"{name!r} is a column of the annotations table (a dimension names one); "
                "name the dimension otherwise",
            )
    for name in r.discussion.variants:
        if name == DEFAULT_VARIANT:
            ck.add(
                ("discussion", "variants", name),
                f"{DEFAULT_VARIANT!r} names the participants without a variant; pick another name",
            )


def check_sources(
    ck: Checker, data: dict[str, Any]
) -> tuple[dict[str, list[Persona]], list[Post] | None]:
    """Load every source whose own settings are valid; report unreadable and empty ones."""
    seed = data.get("seed") if isinstance(data.get("seed"), int) else 0
    personas: dict[str, list[Persona]] = {}
    pools = data.get("personas")
    if isinstance(pools, dict):
        for pool, value in pools.items():
            got = _load_source(
                ck,
                ("personas", pool),
                value,
                lambda spec, p=pool: load_personas(spec, ck.base_dir, seed=seed, pool=p),
                f"persona pool {pool!r}",
            )
            if got is not None:
                personas[pool] = got
    posts = None
    if "posts" in data:
        posts = _load_source(
            ck,
            ("posts",),
            data["posts"],
            lambda spec: load_posts(spec, ck.base_dir, seed=seed),
            "posts",
        )
    return personas, posts


def pin_hub_sources(ck: Checker, data: dict[str, Any]) -> None:
    """Resolve every Hub source's ``revision`` to a commit, in ``data`` itself: the commit is
    then part of the resolved recipe, its fingerprint and the dataset's copy of it, so a
    resume refuses a pool that changed on the Hub and a rebuild reads the same rows."""
    pools = data.get("personas") if isinstance(data.get("personas"), dict) else {}
    sources = [(("personas", p), v) for p, v in pools.items()]
    sources.append((("posts",), data.get("posts")))
    for path, value in sources:
        if not isinstance(value, dict) or not isinstance(value.get("hub"), str):
            continue
        try:
            spec = SourceSpec.model_validate(value)
            sha = hub_commit(spec, ck.base_dir)
        except ValidationError:
            continue  # reported by the recipe's schema check
        except SourceError as e:
            ck.add((*path, e.key), e.message)
            continue
        if sha is not None:
            value["revision"] = sha


def _load_source(ck: Checker, path: KeyPath, value: Any, load: Any, what: str) -> list[Any] | None:
    try:
        spec = SourceSpec.model_validate(value)
    except ValidationError:
        return None  # reported by the recipe's schema check
    for key in ("file", "dir", "hub"):
        ref = getattr(spec, key)
        refused = ck.outside(ref) if ref is not None else None
        if refused is not None and (key != "hub" or is_local_hub(spec, ck.base_dir)):
            ck.add((*path, key), refused)
            return None
    for f in source_files(spec, ck.base_dir):
        ck.record_file(f)
    try:
        items = load(spec)
    except SourceError as e:
        ck.add((*path, e.key) if e.key else path, e.message)
        return None
    if not items:
        ck.add(path, f"{what} is empty" + (" after `filter`" if spec.filter else ""))
        return None
    return items


def check_levels_alone(ck: Checker, data: dict[str, Any], bad: set[tuple[str, str]]) -> None:
    """With an invalid base, check each level's own patches (errors inside them only)."""
    base = cell_base(data)
    for fname, lname, patch in _patches(data):
        if (fname, lname) in bad or not patch:
            continue
        try:
            patched = apply_patches(base, patch.items())
            Recipe.model_validate(patched)
        except ValueError as e:
            if not isinstance(e, ValidationError):
                ck.add(("factors", fname, lname), str(e))
                continue
            for kp, msg in ck.pydantic_problems(e, patched):
                for key in patch:
                    pk = parse_key(key)
                    if overlaps(pk, kp):
                        mp: KeyPath = ("factors", fname, lname, key, *kp[len(pk) :])
                        ck.add_at(mp, dotted(mp), f"{msg} (when factor {fname!r} is {lname!r})")
                        break


def check_cells(
    ck: Checker,
    recipe: Recipe,
    raw: dict[str, Any],
    pool_sizes: dict[str, int],
    cell_recipe: Callable[[dict[str, str]], Recipe],
    bad: set[tuple[str, str]],
) -> None:
    """Every cell (or every level, when there are very many cells) must validate, name
    existing models and pools, fit its participants in its pool and render its templates.
    ``cell_recipe(levels)`` makes a cell's recipe (``LoadedRecipe.cell_recipe``, which keeps
    them for the plan); ``bad`` are the (factor, level) pairs already reported."""
    factors = factor_levels(recipe)
    cells = select_cells(factors, recipe.design, recipe.seed)
    if len(cells) > MAX_CELLS_CHECKED:
        cells = [{f: level} for f, levels in factors.items() for level in levels]
    for levels in cells:
        if any((f, level) in bad for f, level in levels.items()):
            continue
        try:
            cell = cell_recipe(levels)
        except ValidationError as e:
            patched = apply_patches(cell_base(raw), cell_patches(recipe, levels))
            for kp, msg in ck.pydantic_problems(e, patched):
                _add_cell(ck, recipe, levels, kp, msg)
            continue
        except ValueError as e:  # a patch that cannot be applied (e.g. into a string)
            ck.add(("factors",), f"cell {levels}: {e}")
            continue
        cfg = cell.model_dump(mode="python", exclude={"personas", "posts"})
        cfg["personas"] = {name: {} for name in cell.personas}
        for kp, msg in references(cfg, pool_sizes.get):
            _add_cell(ck, recipe, levels, kp, msg)
        for kp, msg in structure_problems(cell.discussion):
            # A value that is fine for one structure and wrong for another (participants, the
            # moderator's role) is blamed on the level that chose the structure; a value wrong
            # in itself (an edge, a template) where it is written.
            fits = kp[:2] != ("discussion", "graph") and kp[-1] not in ("combination", "task")
            also: KeyPath | None = ("discussion", "structure") if fits else None
            _add_cell(ck, recipe, levels, kp, msg, also=also)


def _add_cell(
    ck: Checker,
    recipe: Recipe,
    levels: dict[str, str],
    kp: KeyPath,
    msg: str,
    also: KeyPath | None = None,
) -> None:
    """Report a problem of a cell at the factor level patch that caused it, else at the base.
    ``also``: a key whose patch is to blame when no level sets ``kp`` itself (a debate level
    with the base's three participants is reported at the level that made it a debate)."""
    for target in (kp,) if also is None else (kp, also):
        for f, level in levels.items():
            for key in recipe.factors[f][level]:
                pk = parse_key(key)
                if overlaps(pk, target):
                    mp: KeyPath = ("factors", f, level, key, *target[len(pk) :])
                    shown = dotted(mp) if target == kp else dotted(kp)
                    ck.add_at(mp, shown, f"{msg} (when factor {f!r} is {level!r})")
                    return
    ck.add(kp, msg)


def structure_problems(d: DiscussionConfig) -> list[tuple[KeyPath, str]]:
    """What a discussion config asks of its deliberation structure that cannot be: a debate
    without exactly two participants, a graph edge to an unknown agent or closing a cycle, a
    moderator whose role does not fit the structure, a combination preset that does not exist,
    task and combination templates that do not render."""
    out: list[tuple[KeyPath, str]] = []
    disc: KeyPath = ("discussion",)
    mod = d.moderator
    combiner = mod is not None and mod.role == "combiner"
    if d.structure == "forum" and combiner:
        out.append(
            (
                (*disc, "moderator", "role"),
                "a combiner writes the final response of a deliberation structure (set "
                "discussion.structure: ensemble, chain, debate or graph); a forum thread's "
                "moderator has role: forum",
            )
        )
    elif d.structure != "forum" and mod is not None and not combiner:
        out.append(
            (
                (*disc, "moderator", "role"),
                f"in a {d.structure} the moderator combines the last cycle's responses into the "
                "final response: set role: combiner",
            )
        )
    if mod is not None and not combiner:
        if mod.instructions == AUTO_INSTRUCTIONS:
            out.append(
                (
                    (*disc, "moderator", "instructions"),
                    "`auto` instructions are written for a combiner (role: combiner) only",
                )
            )
        for key in ("task", "combination"):
            if getattr(mod, key) is not None:
                out.append(((*disc, "moderator", key), f"{key} applies to a combiner only"))
    p = d.participants
    if d.structure == "debate" and p != 2:
        got = f"{p.min} to {p.max}" if isinstance(p, Range) else str(p)
        out.append(((*disc, "participants"), f"a debate has exactly two participants, not {got}"))
    if d.structure == "graph":
        out += _graph_problems(d)
    env = template_environment()
    combinations = [((*disc, "combination"), d.combination)]
    tasks = [((*disc, "task"), d.task)]
    if mod is not None and combiner:
        combinations.append(((*disc, "moderator", "combination"), mod.combination))
        tasks.append(((*disc, "moderator", "task"), mod.task))
    presets = combination_presets()
    for kp, value in combinations:
        if not isinstance(value, str):
            continue
        if is_preset_name(value):
            if value.strip() not in presets:
                out.append(
                    (
                        kp,
                        f"no combination preset {value.strip()!r}; presets: "
                        f"{', '.join(presets)}{suggest(value.strip(), presets)} (a template of "
                        "your own is more than one word, e.g. `{% for r in responses %}...`)",
                    )
                )
            continue
        err = check_template(env, value, "combination")
        if err:
            out.append((kp, err))
    for kp, value in tasks:
        if isinstance(value, str):
            err = check_template(env, value, "task")
            if err:
                out.append((kp, err))
    return out


def _graph_problems(d: DiscussionConfig) -> list[tuple[KeyPath, str]]:
    graph: KeyPath = ("discussion", "graph")
    out: list[tuple[KeyPath, str]] = []
    if d.shuffle:
        out.append(
            (
                ("discussion", "shuffle"),
                "a graph answers in the order of its edges; shuffle applies to ensemble, chain "
                "and debate",
            )
        )
    if isinstance(d.participants, Range):
        return [
            *out,
            (
                ("discussion", "participants"),
                "a graph has a fixed number of agents: give participants as a number",
            ),
        ]
    n = d.participants
    nodes = d.graph.nodes
    if nodes and len(nodes) != n:
        out.append(
            ((*graph, "nodes"), f"{len(nodes)} node names for {n} participants; name each once")
        )
        return out
    dupes = sorted({x for x in nodes if nodes.count(x) > 1})
    if dupes:
        out.append(((*graph, "nodes"), f"node names must be distinct ({', '.join(dupes)})"))
        return out
    edges, problems = resolve_edges(d.graph.edges, nodes, n)
    for prob in problems:
        kp: KeyPath = (*graph, "edges", prob.edge)
        out.append(((*kp, prob.end) if prob.end is not None else kp, prob.message))

    def name(v: int) -> str:
        return nodes[v] if nodes else str(v)

    cycle = find_cycle(n, edges)
    if cycle is not None:
        closing = (cycle[-2], cycle[-1])
        for i, pair in enumerate(d.graph.edges):
            if resolve_edges([pair], nodes, n)[0] == [closing]:
                path = " -> ".join(name(v) for v in cycle)
                out.append(
                    (
                        (*graph, "edges", i),
                        f"edge [{pair[0]}, {pair[1]}] closes a cycle ({path}); a graph must "
                        "be acyclic",
                    )
                )
                break
    return out


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def references(cfg: dict[str, Any], pool_size: Any) -> list[tuple[KeyPath, str]]:
    """Cross references and templates of one config (a cell's, or the raw base as far as it
    goes): models and pools named must exist, participants and annotators must fit in their
    pools, templates must render. ``pool_size(name)`` is None for a pool that did not load."""
    out: list[tuple[KeyPath, str]] = []
    models = list(cfg["models"]) if isinstance(cfg.get("models"), dict) else None
    pools = list(cfg["personas"]) if isinstance(cfg.get("personas"), dict) else None
    d = cfg.get("discussion") if isinstance(cfg.get("discussion"), dict) else {}

    def model_ref(kp: KeyPath, name: Any) -> None:
        if models is not None and isinstance(name, str) and name not in models:
            out.append(
                (
                    kp,
                    f"no model named {name!r}; models: {', '.join(models)}" + suggest(name, models),
                )
            )

    def pool_ref(kp: KeyPath, name: Any) -> bool:
        if pools is not None and isinstance(name, str) and name not in pools:
            out.append(
                (
                    kp,
                    f"no persona pool named {name!r}; pools: {', '.join(pools)}"
                    + suggest(name, pools),
                )
            )
            return False
        return isinstance(name, str)

    model_ref(("discussion", "model"), d.get("model"))
    model_ref(("discussion", "moderator", "model"), _get(d, "moderator", "model"))
    pool = d.get("persona_pool", DiscussionConfig.model_fields["persona_pool"].default)
    if pool_ref(("discussion", "persona_pool"), pool):
        size = pool_size(pool)
        part = d.get("participants", DiscussionConfig.model_fields["participants"].default)
        need = part.get("max") if isinstance(part, dict) else part
        if size and isinstance(need, int) and need > size:
            out.append(
                (
                    ("discussion", "participants"),
                    f"{need} participants per discussion, but pool {pool!r} has only "
                    f"{size} persona{'s' if size != 1 else ''} (nobody takes part twice)",
                )
            )
    a = cfg.get("annotation")
    if isinstance(a, dict):
        model_ref(("annotation", "model"), a.get("model"))
        apool = _get(a, "annotators", "pool", default=AnnotatorsConfig.model_fields["pool"].default)
        if pool_ref(("annotation", "annotators", "pool"), apool):
            per = _get(
                a,
                "annotators",
                "per_comment",
                default=AnnotatorsConfig.model_fields["per_comment"].default,
            )
            size = pool_size(apool)
            if size and isinstance(per, int) and per > size:
                out.append(
                    (
                        ("annotation", "annotators", "per_comment"),
                        f"{per} annotators per comment, but pool {apool!r} has only {size}",
                    )
                )
    env = template_environment()
    templates = d.get("templates") if isinstance(d.get("templates"), dict) else {}
    for kind in TEMPLATE_KINDS:
        source = templates.get(kind)
        if isinstance(source, str):
            err = check_template(env, source, kind)
            if err:
                out.append((("discussion", "templates", kind), err))
    for mname, m in (cfg.get("models") or {}).items() if models is not None else ():
        source = m.get("chat_template") if isinstance(m, dict) else None
        if isinstance(source, str):
            err = check_template(env, source, "chat_template")
            if err:
                out.append((("models", mname, "chat_template"), err))
    return out
