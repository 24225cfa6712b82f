"""Load a recipe: YAML with line numbers, ``--set`` overrides, file references, validation.

``load_recipe`` either returns a ``LoadedRecipe`` whose every part has been checked (schema,
cross references, referenced files, persona and post sources, factor patches, templates) or
raises one ``RecipeError`` listing every problem found, each with file, line, column and
dotted key path. Nothing is half-checked: what ``validate`` accepts, ``plan`` and ``build`` can
use.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import hashlib
import json
import math
import os
import re
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, ValidationError

from synth_disco.errors import Problem, RecipeError, SourceError
from synth_disco.recipe import DiscussionConfig, FileRef, Recipe, SourceSpec
from synth_disco.records import Persona, Post
from synth_disco.sources import load_personas, load_posts, source_files

KeyPath = tuple[str | int, ...]
Mark = tuple[int, int]  # 1-based line, column

# Factors may change how discussions run and are annotated, not what they draw from.
PATCHABLE = ("discussion", "models", "annotation")
# Columns of plan.parquet and of the dataset's discussions table; factors become columns too.
RESERVED_COLUMNS = frozenset(
    [
        "discussion_id",
        "index",
        "cell",
        "cell_id",
        "replicate",
        "seed",
        "shard",
        "post",
        "post_id",
        "op",
        "participants",
        "variants",
        "n_participants",
        "config_json",
        "moderator",
        "model",
        "status",
        "n_comments",
        "turn_policy",
        "title",
        "comments",
    ]
)
# Validating every cell is exact but costs ~1 ms each; above this many cells, each factor
# level is validated on its own against the base config instead.
MAX_CELLS_CHECKED = 2000
MAX_CELLS = 1_000_000
DEFAULT_VARIANT = "default"

_ALLOWED_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def dotted(path: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in path)


# ---------------------------------------------------------------------------------------------
# YAML with marks


def parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, Mark], list[Problem]]:
    """Parse YAML safely, returning (data, marks, problems).

    ``marks`` maps each key path to the line and column of its key (or list item). Mapping
    keys are kept as written (so ``on:`` stays the string "on"); tags other than YAML's plain
    ones (e.g. ``!!python/object``) are problems, never constructed. Malformed YAML raises
    ``RecipeError`` right away since nothing after the error can be trusted.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        msg = " ".join(x for x in (e.context, e.problem) if x) or "invalid YAML"
        raise RecipeError(
            [
                Problem(
                    file,
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                    "",
                    f"invalid YAML: {msg}",
                )
            ]
        ) from None
    except yaml.YAMLError as e:
        raise RecipeError([Problem(file, None, None, "", f"invalid YAML: {e}")]) from None
    marks: dict[KeyPath, Mark] = {}
    problems: list[Problem] = []

    def at(n: yaml.Node) -> Mark:
        return (n.start_mark.line + 1, n.start_mark.column + 1)

    def bad_tag(n: yaml.Node, path: KeyPath) -> bool:
        if n.tag in _ALLOWED_TAGS:
            return False
        line, col = at(n)
        tag = n.tag.replace("tag:yaml.org,2002:", "!!")
        problems.append(
            Problem(
                file, line, col, dotted(path), f"YAML tag {tag} is not allowed (plain data only)"
            )
        )
        return True

    def build(n: yaml.Node, path: KeyPath, depth: int) -> Any:
        if depth > 64:
            line, col = at(n)
            problems.append(Problem(file, line, col, dotted(path), "nested too deeply"))
            return None
        if bad_tag(n, path):
            return None
        if isinstance(n, yaml.MappingNode):
            try:
                loader.flatten_mapping(n)  # resolves `<<: *anchor` merge keys
            except yaml.MarkedYAMLError as e:
                line, col = at(n)
                problems.append(
                    Problem(file, line, col, dotted(path), f"invalid YAML: {e.problem}")
                )
                return {}
            out: dict[str, Any] = {}
            first: dict[str, int] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    line, col = at(k)
                    problems.append(
                        Problem(file, line, col, dotted(path), "keys must be plain text")
                    )
                    continue
                key = k.value
                line, col = at(k)
                if key in first:
                    problems.append(
                        Problem(
                            file,
                            line,
                            col,
                            dotted((*path, key)),
                            f"duplicate key (first at line {first[key]})",
                        )
                    )
                    continue
                first[key] = line
                marks[(*path, key)] = (line, col)
                out[key] = build(v, (*path, key), depth + 1)
            return out
        if isinstance(n, yaml.SequenceNode):
            items = []
            for i, item in enumerate(n.value):
                marks[(*path, i)] = at(item)
                items.append(build(item, (*path, i), depth + 1))
            return items
        value = loader.construct_object(n, deep=True)
        if isinstance(value, (_dt.date, _dt.datetime)):
            return value.isoformat()  # keep the recipe JSON-able
        if isinstance(value, float) and not math.isfinite(value):
            line, col = at(n)
            problems.append(Problem(file, line, col, dotted(path), "not a finite number"))
            return None
        return value

    try:
        data = build(node, (), 0) if node is not None else None
    finally:
        loader.dispose()
    return data, marks, problems


# ---------------------------------------------------------------------------------------------
# Schema walking (for suggestions, Text fields and factor patch keys)


def _alternatives(tp: Any) -> list[Any]:
    """The concrete types behind a field annotation (unions and Annotated unwrapped)."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _alternatives(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        out: list[Any] = []
        for a in typing.get_args(tp):
            out.extend(_alternatives(a))
        return out
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, seg: str | int) -> list[Any]:
    """Types reachable from ``tp`` through key ``seg``."""
    out: list[Any] = []
    for alt in _alternatives(tp):
        if alt is Any:
            out.append(Any)
        elif _is_model(alt):
            if isinstance(seg, str) and seg in alt.model_fields:
                out.append(alt.model_fields[seg].annotation)
        elif typing.get_origin(alt) is dict:
            out.append(typing.get_args(alt)[1] if typing.get_args(alt) else Any)
        elif typing.get_origin(alt) is list and (isinstance(seg, int) or str(seg).isdigit()):
            out.append(typing.get_args(alt)[0] if typing.get_args(alt) else Any)
    return out


def schema_types(path: Sequence[str | int], root: Any = Recipe) -> list[Any]:
    """The types a value at ``path`` may have; empty when the schema has no such key."""
    current = [root]
    for seg in path:
        nxt: list[Any] = []
        for tp in current:
            nxt.extend(_step(tp, seg))
        if not nxt:
            return []
        current = nxt
    return current


def field_names(path: Sequence[str | int], root: Any = Recipe) -> list[str]:
    """The keys the schema allows in the mapping at ``path`` (for "did you mean")."""
    names: list[str] = []
    for tp in schema_types(path, root):
        for alt in _alternatives(tp):
            if _is_model(alt):
                names.extend(alt.model_fields)
    return names


def suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _accepts_fileref(types_: list[Any]) -> bool:
    return any(alt is FileRef for tp in types_ for alt in _alternatives(tp))


# ---------------------------------------------------------------------------------------------
# Templates

_TEMPLATE_KINDS = ("system", "turn", "moderator_system", "annotation")


def sample_context(kind: str) -> dict[str, Any]:
    """The variables a prompt template of ``kind`` is rendered with, with sample values.

    These mirror what the prompt builders pass (``discussion/prompts.py`` for ``system``,
    ``moderator_system`` and ``turn``; ``annotation/prompts.py`` for ``annotation``): a
    template that renders here renders there, and one naming anything else is refused at
    validation time instead of failing mid-run.
    """
    if kind in ("system", "moderator_system"):
        return {"context": "A forum about local news."}
    if kind == "turn":
        op = {"author": "OP", "role": "op", "text": "The original post."}
        reply = {"author": "amber_owl17", "role": "user", "text": "A first reply."}
        return {
            "title": "A sample thread",
            "op": op,
            "seed_comments": [{"author": "early_bird", "role": "seed", "text": "A seed reply."}],
            "comments": [reply],
            "omitted": 2,
            "speaker": {
                "name": "quiet_heron42",
                "role": "user",
                "persona": "Age: 41. Current employment: nurse.",
                "instructions": "Write as this person would.",
            },
            "parent": reply,
            "on_demand": False,
        }
    if kind == "annotation":

        def view(position: int, author: str, role: str, text: str) -> dict[str, Any]:
            note = {"op": " (original post)", "moderator": " (moderator)"}.get(role, "")
            return {
                "position": position,
                "author": author,
                "role": role,
                "role_note": note,
                "text": text,
            }

        return {
            "context": [view(1, "OP", "op", "The original post.")],
            "target": view(2, "amber_owl17", "user", "A first reply."),
            "annotator": {"id": "a1", "name": "careful_rater", "description": "A careful rater."},
            "dimension": {
                "name": "toxicity",
                "level": "ordinal",
                "instructions": "1 = not toxic, 5 = very toxic.",
                "labels": [{"label": str(i), "description": ""} for i in range(1, 6)],
                "described": False,  # whether any label has a description
            },
            "method": "score",
            "rationale": False,
        }
    raise ValueError(kind)


def template_environment() -> SandboxedEnvironment:
    """The Jinja environment recipe templates render in: sandboxed, undefined names fail
    (as in the prompt builders)."""
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)


def _chat_template_environment() -> SandboxedEnvironment:
    # Tokenizer chat templates are rendered by transformers with loop controls enabled.
    return SandboxedEnvironment(
        undefined=jinja2.StrictUndefined, extensions=["jinja2.ext.loopcontrols"]
    )


def check_template(env: SandboxedEnvironment, source: str, kind: str) -> str | None:
    """None if ``source`` renders with the sample context of ``kind``; else the reason."""
    if kind == "chat_template":
        # Rendered by the tokenizer with its own variables: the syntax is what we can check.
        env = _chat_template_environment()
    try:
        tpl = env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        return f"template syntax error (template line {e.lineno}): {e.message}"
    if kind == "chat_template":
        return None
    try:
        tpl.render(**sample_context(kind))
    except jinja2.UndefinedError as e:
        names = sorted(sample_context(kind))
        m = re.match(r"'(\w+)' is undefined", e.message or "")
        hint = suggest(m.group(1), names) if m else ""
        return f"template does not render: {e.message}{hint} (available: {', '.join(names)})"
    except jinja2.TemplateError as e:
        return f"template does not render: {e}"
    except Exception as e:  # a template can raise anything (e.g. a division by zero)
        return f"template does not render: {type(e).__name__}: {e}"
    return None


# ---------------------------------------------------------------------------------------------
# Overrides and factor patches


def parse_override(arg: str) -> tuple[KeyPath, Any]:
    """``a.b.c=value`` -> (("a", "b", "c"), YAML-parsed value). Raises ValueError."""
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError("write --set KEY=VALUE, e.g. --set discussion.turns=8")
    if any(not part for part in key.split(".")):
        raise ValueError(f"{key!r} is not a dotted key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"cannot parse the value as YAML: {problem}") from None
    if isinstance(value, (_dt.date, _dt.datetime)):
        value = value.isoformat()
    path: KeyPath = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    return path, value


def set_path(data: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    """Set ``data[path] = value``, creating mappings on the way (``None`` counts as empty).
    Raises ValueError naming the part of the path that is not a mapping."""
    cur: Any = data
    for i, seg in enumerate(path[:-1]):
        nxt_seg = path[i + 1]
        if isinstance(cur, list) and isinstance(seg, int):
            if not 0 <= seg < len(cur):
                raise ValueError(
                    f"{dotted(path[: i + 1])}: no item {seg} (the list has {len(cur)})"
                )
            if cur[seg] is None:
                cur[seg] = {}
            cur = cur[seg]
            continue
        if not isinstance(cur, dict):
            raise ValueError(f"{dotted(path[:i])} is not a mapping")
        key = str(seg)
        if cur.get(key) is None:
            cur[key] = {}
        cur = cur[key]
        if not isinstance(cur, (dict, list)):
            raise ValueError(
                f"{dotted(path[: i + 1])} is a {type(cur).__name__}, cannot set {nxt_seg} in it"
            )
    last = path[-1]
    if isinstance(cur, list) and isinstance(last, int):
        if not 0 <= last < len(cur):
            raise ValueError(f"{dotted(path[:-1])}: no item {last} (the list has {len(cur)})")
        cur[last] = value
    elif isinstance(cur, dict):
        cur[str(last)] = value
    else:
        raise ValueError(f"{dotted(path[:-1])} is not a mapping")


def patch_path(key: str) -> KeyPath:
    return tuple(int(p) if p.isdigit() else p for p in key.split("."))


def apply_patches(config: dict[str, Any], patches: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Apply factor level patches (dotted key -> value) to a deep copy of ``config``.

    A patch replaces the value at its key (no deep merge): set ``discussion.turn_taking.policy``
    to change one parameter, or ``discussion.turn_taking`` to replace them all.
    """
    out = copy.deepcopy(config)
    for key, value in patches:
        set_path(out, patch_path(key), copy.deepcopy(value))
    return out


def _overlaps(a: KeyPath, b: KeyPath) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]


# ---------------------------------------------------------------------------------------------
# The loaded recipe


@dataclass
class LoadedRecipe:
    """A validated recipe with its sources.

    ``recipe``: the base config (Text file references replaced by their text); ``raw``: the
    resolved dict it was validated from (JSON-able; overrides applied, pools normalised);
    ``files``: every referenced file (path relative to the recipe -> sha256);
    ``fingerprint``: sha256 over ``raw`` and those files.
    """

    recipe: Recipe
    raw: dict[str, Any]
    path: Path
    base_dir: Path
    fingerprint: str
    files: dict[str, str] = field(default_factory=dict)
    _personas: dict[str, list[Persona]] = field(default_factory=dict, repr=False)
    _posts: list[Post] | None = field(default=None, repr=False)
    _cells: dict[tuple[tuple[str, str], ...], Recipe] = field(default_factory=dict, repr=False)

    @property
    def short_fingerprint(self) -> str:
        return self.fingerprint[:12]

    @property
    def display_path(self) -> str:
        return _display(self.path)

    def personas(self, pool: str) -> list[Persona]:
        """The persona pool ``pool`` (loaded once, then cached)."""
        if pool not in self._personas:
            spec = self.recipe.personas[pool]
            self._personas[pool] = load_personas(
                spec, self.base_dir, seed=self.recipe.seed, pool=pool
            )
        return self._personas[pool]

    def posts(self) -> list[Post]:
        """The posts discussions start from (loaded once, then cached)."""
        if self._posts is None:
            self._posts = load_posts(self.recipe.posts, self.base_dir, seed=self.recipe.seed)
        return self._posts

    def factor_levels(self) -> dict[str, list[str]]:
        return {f: list(levels) for f, levels in self.recipe.factors.items()}

    def cell_patches(self, levels: dict[str, str]) -> list[tuple[str, Any]]:
        return [
            (key, value)
            for f, level in levels.items()
            for key, value in self.recipe.factors[f][level].items()
        ]

    def cell_recipe(self, levels: dict[str, str]) -> Recipe:
        """The recipe of one cell: the base config with its factor levels' patches applied.

        Raises pydantic's ValidationError if the combination is invalid (``load_recipe`` has
        checked every cell, or every level when there are very many cells).
        """
        key = tuple(sorted(levels.items()))
        if key not in self._cells:
            if not levels:
                self._cells[key] = self.recipe
            else:
                self._cells[key] = _validate_cell(self.raw, self.cell_patches(levels), self.recipe)
        return self._cells[key]


def _display(path: Path) -> str:
    """A path as shown in messages: relative to the working directory when below it."""
    try:
        return Path(os.path.relpath(path)).as_posix() if path.is_absolute() else path.as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _cell_base(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without its pools (cells share them), with empty placeholders for validation."""
    base = {k: v for k, v in raw.items() if k not in ("personas", "posts")}
    pools = raw.get("personas")
    base["personas"] = {name: {"inline": []} for name in pools} if isinstance(pools, dict) else {}
    base["posts"] = {"inline": []}
    return base


def _validate_cell(raw: dict[str, Any], patches: list[tuple[str, Any]], base: Recipe) -> Recipe:
    cell = Recipe.model_validate(apply_patches(_cell_base(raw), patches))
    return cell.model_copy(update={"personas": base.personas, "posts": base.posts})


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fingerprint_of(raw: dict[str, Any], files: dict[str, str]) -> str:
    h = hashlib.sha256()
    h.update(canonical_json(raw).encode())
    for rel in sorted(files):
        h.update(f"\n{rel}\0{files[rel]}".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# The loader


class _Checker:
    """Collects problems while a recipe is loaded; knows where each key came from."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = _display(path)
        self.base_dir = path.parent
        self.marks: dict[KeyPath, Mark] = {}
        self.override_paths: list[tuple[KeyPath, str]] = []
        self.problems: list[Problem] = []
        self.files: dict[str, str] = {}
        self.yaml_bad: list[KeyPath] = []  # paths whose YAML value was refused

    # -- locations --------------------------------------------------------------------------

    def where(self, path: KeyPath) -> tuple[str, int | None, int | None]:
        for opath, arg in reversed(self.override_paths):
            if _overlaps(opath, path) and len(path) >= len(opath):
                return f"--set {arg}", None, None
        for n in range(len(path), -1, -1):
            mark = self.marks.get(tuple(path[:n]))
            if mark is not None:
                return self.file, mark[0], mark[1]
        return self.file, None, None

    def add(self, path: KeyPath, message: str, shown: KeyPath | None = None) -> None:
        file, line, col = self.where(path)
        p = Problem(file, line, col, dotted(shown if shown is not None else path), message)
        if p not in self.problems:
            self.problems.append(p)

    def add_at(self, mark_path: KeyPath, shown: str, message: str) -> None:
        file, line, col = self.where(mark_path)
        p = Problem(file, line, col, shown, message)
        if p not in self.problems:
            self.problems.append(p)

    # -- pydantic errors --------------------------------------------------------------------

    def pydantic_problems(self, err: ValidationError, data: Any) -> list[tuple[KeyPath, str]]:
        """(config key path, message) for each error, union branches folded."""
        items = []
        for e in err.errors(include_url=False):
            path, tag_at = _clean_loc(e["loc"], data)
            items.append((path, tag_at, e))
        # When one branch of a union accepted the value's type (its error is deeper, or about
        # the value itself), the other branches' "wrong type" errors are noise.
        matched = {
            path[:tag_at]
            for path, tag_at, e in items
            if tag_at is not None and (len(path) > tag_at or not _is_type_error(e))
        }
        out: dict[KeyPath, list[str]] = {}
        for path, tag_at, e in items:
            if tag_at is not None and len(path) == tag_at and path in matched and _is_type_error(e):
                continue
            if any(path[: len(bad)] == bad for bad in self.yaml_bad):
                continue  # already reported by the YAML reader (e.g. a refused tag)
            out.setdefault(path, [])
            msg = _message(e, path)
            if msg not in out[path]:
                out[path].append(msg)
        return [(path, _join(msgs)) for path, msgs in out.items()]

    # -- files ------------------------------------------------------------------------------

    def record_file(self, p: Path) -> None:
        try:
            digest = _sha256(p.read_bytes())
        except OSError:
            return
        try:
            rel = Path(os.path.relpath(p, self.base_dir)).as_posix()
        except ValueError:
            rel = p.as_posix()
        self.files[rel] = digest

    def read_text_file(self, ref: str, path: KeyPath) -> str | None:
        p = self.base_dir / ref
        if not p.is_file():
            what = "is a directory" if p.is_dir() else "not found"
            self.add((*path, "file"), f"file {ref!r} {what}")
            return None
        try:
            text = p.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as e:
            self.add((*path, "file"), f"cannot read {ref!r}: {e}")
            return None
        self.record_file(p)
        return text.rstrip()

    def resolve_texts(self, value: Any, types_: list[Any], path: KeyPath, shown: KeyPath) -> Any:
        """Replace ``{file: ...}`` by the file's text wherever the schema takes Text."""
        if not types_:
            return value
        if isinstance(value, dict):
            if (
                _accepts_fileref(types_)
                and set(value) == {"file"}
                and isinstance(value["file"], str)
            ):
                text = self.read_text_file(value["file"], path)
                return value if text is None else text
            return {
                k: self.resolve_texts(v, _next_types(types_, k), (*path, k), (*shown, k))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [
                self.resolve_texts(v, _next_types(types_, i), (*path, i), (*shown, i))
                for i, v in enumerate(value)
            ]
        return value


def _next_types(types_: list[Any], seg: str | int) -> list[Any]:
    out: list[Any] = []
    for tp in types_:
        if tp is Any:
            continue  # inside free-form data (inline records, factor patches): no Text here
        out.extend(_step(tp, seg))
    return out


_TYPE_TAGS = {"int", "str", "float", "bool", "none", "list", "dict", "literal", "nullable"}


def _is_tag(el: Any) -> bool:
    return isinstance(el, str) and (el[:1].isupper() or "[" in el or el in _TYPE_TAGS)


def _is_type_error(e: dict[str, Any]) -> bool:
    kind = str(e["type"])
    return kind.endswith(("_type", "_parsing")) or kind == "is_instance_of"


def _has(cur: Any, el: Any) -> bool:
    if isinstance(cur, dict):
        return isinstance(el, str) and el in cur
    return isinstance(cur, list) and isinstance(el, int) and 0 <= el < len(cur)


def _clean_loc(loc: Sequence[Any], data: Any) -> tuple[KeyPath, int | None]:
    """Drop pydantic's union-branch tags from an error location, keeping the data's keys.
    Returns the key path and the position of the first union tag (None if none)."""
    out: list[str | int] = []
    cur = data
    tag_at = None
    for el in loc:
        if _has(cur, el):
            out.append(el)
            cur = cur[el]
        elif _is_tag(el):
            if tag_at is None:
                tag_at = len(out)
        else:
            out.append(el)
            cur = None
    return tuple(out), tag_at


def _message(e: dict[str, Any], path: KeyPath) -> str:
    kind = e["type"]
    if kind == "extra_forbidden":
        return "unknown key" + suggest(str(path[-1]), field_names(path[:-1]))
    if kind == "missing":
        return "required key is missing"
    msg = e["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    msg = re.sub(r"a valid dictionary or instance of \w+", "a mapping", msg)
    msg = msg.replace("a valid dictionary", "a mapping")
    if kind == "literal_error" and isinstance(e.get("input"), str):
        options = re.findall(r"'([^']*)'", (e.get("ctx") or {}).get("expected", ""))
        msg += suggest(e["input"], options)
    return msg


def _join(msgs: list[str]) -> str:
    """Fold the messages of several union branches into one."""
    if len(msgs) > 1 and all(m.startswith("Input should be ") for m in msgs):
        return "Input should be " + " or ".join(m[len("Input should be ") :] for m in msgs)
    return "; ".join(msgs)


def _normalise_source(value: Any, base_dir: Path) -> Any:
    """A bare list is an inline source; a bare string a file (or directory) path."""
    if isinstance(value, list):
        return {"inline": value}
    if isinstance(value, str):
        return {"dir": value} if (base_dir / value).is_dir() else {"file": value}
    return value


def _remap_marks(marks: dict[KeyPath, Mark], old: KeyPath, new: KeyPath) -> None:
    n = len(old)
    for k in [k for k in marks if k[:n] == old and len(k) > n]:
        marks[(*new, *k[n:])] = marks[k]


def load_recipe(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> LoadedRecipe:
    """Read, resolve and validate a recipe. Raises ``RecipeError`` listing every problem."""
    path = Path(path)
    ck = _Checker(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "not found"
        raise RecipeError([Problem(ck.file, None, None, "", f"recipe file {what}")])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError([Problem(ck.file, None, None, "", f"cannot read: {e}")]) from None
    data, ck.marks, ck.problems = parse_yaml(text, ck.file)
    ck.yaml_bad = [
        _path_of(p.key_path)
        for p in ck.problems
        if p.key_path and not p.message.startswith("duplicate key")
    ]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        ck.add((), "the recipe must be a mapping of keys (name, models, personas, ...)")
        raise RecipeError(ck.problems)
    # The recipe itself enters the fingerprint as its resolved data (below), so comments and
    # formatting do not change it.

    # --set overrides, before anything is checked.
    for arg in overrides:
        try:
            opath, value = parse_override(arg)
            set_path(data, opath, value)
        except ValueError as e:
            ck.problems.append(Problem(f"--set {arg}", None, None, arg.partition("=")[0], str(e)))
            continue
        ck.override_paths.append((opath, arg))

    _normalise(ck, data)
    # Text file references, in the base config and in factor patches.
    data = ck.resolve_texts(data, [Recipe], (), ())
    bad_levels = _check_patch_keys(ck, data)
    for fname, lname, key, kp in _patch_items(data):
        if (fname, lname) not in bad_levels:
            mp: KeyPath = ("factors", fname, lname, key)
            patch = data["factors"][fname][lname]
            patch[key] = ck.resolve_texts(patch[key], schema_types(kp), mp, mp)

    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        for kp, msg in ck.pydantic_problems(e, data):
            ck.add(kp, msg)
    personas, posts = _check_sources(ck, data)

    if recipe is None:
        # Still report what can be checked without a valid base: levels on their own,
        # references, templates.
        _check_levels_alone(ck, data, bad_levels)
        sizes = {k: len(v) for k, v in personas.items()}
        for kp, msg in _references(data, sizes.get):
            ck.add(kp, msg)
        raise RecipeError(_sorted(ck))

    loaded = LoadedRecipe(
        recipe=recipe,
        raw=data,
        path=path,
        base_dir=ck.base_dir,
        fingerprint="",
        _personas=personas,
        _posts=posts,
    )
    _check_design(ck, loaded)
    _check_cells(ck, loaded, bad_levels)
    if ck.problems:
        raise RecipeError(_sorted(ck))
    loaded.files = dict(sorted(ck.files.items()))
    loaded.fingerprint = fingerprint_of(data, loaded.files)
    return loaded


def _path_of(key_path: str) -> KeyPath:
    return tuple(int(p) if p.isdigit() else p for p in key_path.split(".")) if key_path else ()


def _sorted(ck: _Checker) -> list[Problem]:
    """Problems in file order; those without a line (e.g. from --set) last."""
    return sorted(
        ck.problems,
        key=lambda p: (p.file != ck.file, p.line is None, p.line or 0, p.column or 0),
    )


def _normalise(ck: _Checker, data: dict[str, Any]) -> None:
    """Shorthands: pools as bare lists or paths, ``none:`` levels (empty patches), a numeric
    version (so the semantic-version message applies)."""
    if isinstance(data.get("personas"), dict):
        for name, value in list(data["personas"].items()):
            norm = _normalise_source(value, ck.base_dir)
            if isinstance(value, list):
                _remap_marks(ck.marks, ("personas", name), ("personas", name, "inline"))
            data["personas"][name] = norm
    if "posts" in data:
        if isinstance(data["posts"], list):
            _remap_marks(ck.marks, ("posts",), ("posts", "inline"))
        data["posts"] = _normalise_source(data["posts"], ck.base_dir)
    if isinstance(data.get("factors"), dict):
        for levels in data["factors"].values():
            if isinstance(levels, dict):
                for lname, patch in levels.items():
                    if patch is None:
                        levels[lname] = {}
    if isinstance(data.get("version"), (int, float)) and not isinstance(data["version"], bool):
        data["version"] = str(data["version"])


def _patch_items(data: dict[str, Any]) -> Iterator[tuple[str, str, str, KeyPath]]:
    """(factor, level, patch key, key path) for every patch written as a mapping."""
    factors = data.get("factors")
    if not isinstance(factors, dict):
        return
    for fname, levels in factors.items():
        if not isinstance(levels, dict):
            continue
        for lname, patch in levels.items():
            if isinstance(patch, dict):
                for key in patch:
                    yield fname, lname, key, patch_path(key)


def _check_patch_keys(ck: _Checker, data: dict[str, Any]) -> set[tuple[str, str]]:
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
            ck.add(fpath, f"{fname!r} is a column of every discussion; name the factor otherwise")
        if isinstance(levels, dict) and not levels:
            ck.add(fpath, "a factor needs at least one level")
    owner: dict[KeyPath, str] = {}
    for fname, lname, key, kp in _patch_items(data):
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
        other = next((o for o, f in owner.items() if f != fname and _overlaps(o, kp)), None)
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


def _check_design(ck: _Checker, loaded: LoadedRecipe) -> None:
    r = loaded.recipe
    n_full = math.prod(len(levels) for levels in r.factors.values()) if r.factors else 1
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
    for name in r.discussion.variants:
        if name == DEFAULT_VARIANT:
            ck.add(
                ("discussion", "variants", name),
                f"{DEFAULT_VARIANT!r} names the participants without a variant; pick another name",
            )


def _check_sources(
    ck: _Checker, data: dict[str, Any]
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


def _load_source(ck: _Checker, path: KeyPath, value: Any, load: Any, what: str) -> list[Any] | None:
    try:
        spec = SourceSpec.model_validate(value)
    except ValidationError:
        return None  # reported by the recipe's schema check
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


def _check_levels_alone(ck: _Checker, data: dict[str, Any], bad: set[tuple[str, str]]) -> None:
    """With an invalid base, check each level's own patches (errors inside them only)."""
    factors = data.get("factors")
    if not isinstance(factors, dict):
        return
    base = _cell_base(data)
    for fname, levels in factors.items():
        if not isinstance(levels, dict):
            continue
        for lname, patch in levels.items():
            if (fname, lname) in bad or not isinstance(patch, dict) or not patch:
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
                        pk = patch_path(key)
                        if _overlaps(pk, kp):
                            mp: KeyPath = ("factors", fname, lname, key, *kp[len(pk) :])
                            ck.add_at(mp, dotted(mp), f"{msg} (when factor {fname!r} is {lname!r})")
                            break


def _check_cells(ck: _Checker, loaded: LoadedRecipe, bad: set[tuple[str, str]]) -> None:
    """Every cell (or every level, when there are very many cells) must validate, name
    existing models and pools, fit its participants in its pool and render its templates."""
    from synth_disco.design import select_cells  # design imports this module

    r = loaded.recipe
    factors = loaded.factor_levels()
    cells = select_cells(factors, r.design, r.seed)
    if len(cells) > MAX_CELLS_CHECKED:
        cells = [{f: level} for f, levels in factors.items() for level in levels]
    sizes = {k: len(v) for k, v in loaded._personas.items()}
    for levels in cells:
        if any((f, level) in bad for f, level in levels.items()):
            continue
        try:
            cell = loaded.cell_recipe(levels)
        except ValidationError as e:
            patched = apply_patches(_cell_base(loaded.raw), loaded.cell_patches(levels))
            for kp, msg in ck.pydantic_problems(e, patched):
                _add_cell(ck, loaded, levels, kp, msg)
            continue
        except ValueError as e:  # a patch that cannot be applied (e.g. into a string)
            ck.add(("factors",), f"cell {levels}: {e}")
            continue
        cfg = cell.model_dump(mode="python", exclude={"personas", "posts"})
        cfg["personas"] = {name: {} for name in cell.personas}
        for kp, msg in _references(cfg, sizes.get):
            _add_cell(ck, loaded, levels, kp, msg)


def _add_cell(
    ck: _Checker, loaded: LoadedRecipe, levels: dict[str, str], kp: KeyPath, msg: str
) -> None:
    """Report a problem of a cell at the factor level patch that caused it, else at the base."""
    for f, level in levels.items():
        for key in loaded.recipe.factors[f][level]:
            pk = patch_path(key)
            if _overlaps(pk, kp):
                mp: KeyPath = ("factors", f, level, key, *kp[len(pk) :])
                ck.add_at(mp, dotted(mp), f"{msg} (when factor {f!r} is {level!r})")
                return
    ck.add(kp, msg)


def _get(d: Any, *keys: str, default: Any = None) -> Any:
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return default
        d = d[k]
    return d


def _references(cfg: dict[str, Any], pool_size: Any) -> list[tuple[KeyPath, str]]:
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
        apool = _get(a, "annotators", "pool", default="annotators")
        if pool_ref(("annotation", "annotators", "pool"), apool):
            per = _get(a, "annotators", "per_comment", default=1)
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
    for kind in _TEMPLATE_KINDS:
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
