"""Persona pools and posts from inline lists, local files, directories and Hub datasets.

A source yields raw records (a string, or a mapping of columns). ``filter`` keeps some,
``sample`` draws n of them (seeded by the recipe seed and the pool name, optionally weighted),
``columns`` says which source column holds which record field, and the records become
``Persona`` or ``Post`` objects with stable ids (an ``id`` column, the file name, or the
position in the source, never the position after filtering or sampling).

Layouts that load as they are: SynDisco / SDF persona directories (one ``.json`` record per
file with ``username, age, sex, ...``), SDF topic directories (one ``.txt`` post per file),
and SynDisco log entries (``{"name", "text"}``) as seed comments.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from synth_disco.errors import SourceError
from synth_disco.recipe.filters import ColumnGetter, FilterError, evaluate, parse_filter
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.templates import template_environment
from synth_disco.records import Persona, Post, SeedComment
from synth_disco.seeds import derive_seed

FILE_FORMATS = {
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".txt": "txt",
    ".md": "txt",
}
# In a directory, only these make records; anything else (a README, .DS_Store) is skipped.
DIR_FORMATS = {".json": "json", ".jsonl": "jsonl", ".yaml": "yaml", ".yml": "yaml", ".txt": "txt"}

DEFAULT_OP_AUTHOR = "OP"


@dataclass(frozen=True)
class RawRecord:
    """One record as read: ``index`` is its position in the source, ``key`` a file-based id."""

    index: int
    key: str | None
    value: Any


# ---------------------------------------------------------------------------------------------
# Reading


def _fmt(spec: SourceSpec, path: Path) -> str:
    if spec.format != "auto":
        return spec.format
    fmt = FILE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SourceError(
            f"cannot tell the format of {path.name!r} from its extension; set `format` "
            f"(one of json, jsonl, csv, yaml, txt)",
            "file",
        )
    return fmt


def _parse_text(text: str, fmt: str, shown: str, key: str) -> list[Any]:
    """Parse one file's text into a list of records (a single object counts as one record)."""
    if fmt == "txt":
        return [text.strip()]
    if fmt == "jsonl":
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SourceError(f"{shown}:{n}:{e.colno}: invalid JSON: {e.msg}", key) from e
        return out
    if fmt == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SourceError(f"{shown}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}", key) from e
    elif fmt == "yaml":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e)
            raise SourceError(f"{shown}{at}: invalid YAML: {problem}", key) from e
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        return [dict(r) for r in rows]
    else:  # pragma: no cover - guarded by the schema's Literal
        raise SourceError(f"unknown format {fmt!r}", "format")
    if data is None:
        return []
    return data if isinstance(data, list) else [data]


def _read_file(path: Path, shown: str, key: str) -> str:
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "not found"
        raise SourceError(f"{shown}: {what}", key)
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{shown}: cannot read: {e}", key) from e


def _read_dir(spec: SourceSpec, base_dir: Path) -> list[RawRecord]:
    assert spec.dir is not None
    root = base_dir / spec.dir
    if not root.is_dir():
        what = "a file, not a directory" if root.exists() else "not found"
        raise SourceError(f"{spec.dir}: {what}", "dir")
    files = [
        p
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DIR_FORMATS
    ]
    if not files:
        raise SourceError(f"{spec.dir}: no .json, .jsonl, .yaml or .txt files in it", "dir")
    out: list[RawRecord] = []
    for path in files:
        fmt = spec.format if spec.format != "auto" else DIR_FORMATS[path.suffix.lower()]
        shown = f"{spec.dir.rstrip('/')}/{path.name}"
        items = _parse_text(_read_file(path, shown, "dir"), fmt, shown, "dir")
        for i, item in enumerate(items):
            key = path.stem if len(items) == 1 else f"{path.stem}-{i}"
            out.append(RawRecord(len(out), key, item))
    return out


def _hub_path(spec: SourceSpec, base_dir: Path) -> str:
    """A Hub id, or a local dataset folder / file relative to the recipe when one exists."""
    assert spec.hub is not None
    local = base_dir / spec.hub
    return str(local) if local.exists() else spec.hub


FULL_SHA = re.compile(r"[0-9a-f]{40}")


def is_local_hub(spec: SourceSpec, base_dir: Path) -> bool:
    """Whether a ``hub:`` source names a local dataset folder or file (next to the recipe)."""
    return spec.hub is not None and (base_dir / spec.hub).exists()


def hub_commit(spec: SourceSpec, base_dir: Path) -> str | None:
    """The commit a Hub source reads: its ``revision`` (a branch, a tag, or none: the default
    branch) resolved to the full commit id, so that every later load, a resume or a rebuild
    reads the same version of the pool. None for a local dataset folder."""
    if spec.hub is None or is_local_hub(spec, base_dir):
        return None
    if spec.revision and FULL_SHA.fullmatch(spec.revision):
        return spec.revision
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(spec.hub, revision=spec.revision).sha
    except Exception as e:  # the client raises many kinds; all mean "cannot resolve it"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        at = f" at {spec.revision!r}" if spec.revision else ""
        raise SourceError(
            f"cannot resolve dataset {spec.hub!r}{at} to a commit: {msg}", "hub"
        ) from e


def _load_hub(spec: SourceSpec, base_dir: Path) -> Any:
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise SourceError("the `datasets` package is needed for hub sources", "hub") from e
    try:
        ds = datasets.load_dataset(
            _hub_path(spec, base_dir), spec.config, split=spec.split, revision=spec.revision
        )
    except Exception as e:  # datasets raises many kinds; all mean "cannot load this source"
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        # Keep machine-specific paths out of the message.
        msg = msg.replace(str(base_dir), ".")
        raise SourceError(f"cannot load dataset {spec.hub!r}: {msg}", "hub") from e
    return ds


def source_files(spec: SourceSpec, base_dir: Path) -> list[Path]:
    """The local files a source reads, for the recipe fingerprint (missing ones are skipped)."""
    if spec.file is not None:
        p = base_dir / spec.file
        return [p] if p.is_file() else []
    if spec.dir is not None:
        root = base_dir / spec.dir
        if not root.is_dir():
            return []
        return [
            p
            for p in sorted(root.iterdir(), key=lambda p: p.name)
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in DIR_FORMATS
        ]
    if spec.hub is not None:
        local = base_dir / spec.hub
        if local.is_file():
            return [local]
        if local.is_dir():
            return sorted(
                (
                    p
                    for p in local.rglob("*")
                    if p.is_file() and not any(part.startswith(".") for part in p.parts[-1:])
                ),
                key=lambda p: p.as_posix(),
            )
    return []


# ---------------------------------------------------------------------------------------------
# Filtering and sampling


def select_indices(
    n_rows: int, column: ColumnGetter, spec: SourceSpec, *, seed: int, pool: str
) -> list[int]:
    """Row positions kept by ``filter`` then drawn by ``sample``, in source order."""
    keep = list(range(n_rows))
    if spec.filter:
        try:
            expr = parse_filter(spec.filter)
        except FilterError as e:
            raise SourceError(f"cannot parse filter {spec.filter!r}: {e}", "filter") from None
        holds = evaluate(expr, column, n_rows)
        keep = [i for i in keep if holds[i]]
    if spec.sample is not None and spec.sample < len(keep):
        rng = random.Random(derive_seed(seed, "sample", pool))
        if spec.weight_column:
            weights = column(spec.weight_column)
            keys = []
            for i in keep:
                w = _weight(weights[i], spec.weight_column)
                u = 1.0 - rng.random()  # in (0, 1], so log(u) is finite
                if w > 0:
                    # Efraimidis-Spirakis: the n largest log(u)/w are a weighted draw
                    # without replacement.
                    keys.append((math.log(u) / w, -i))
            if len(keys) < spec.sample:
                raise SourceError(
                    f"only {len(keys)} records have a positive {spec.weight_column!r}; "
                    f"cannot draw {spec.sample}",
                    "weight_column",
                )
            keep = sorted(-i for _, i in heapq.nlargest(spec.sample, keys))
        else:
            keep = sorted(rng.sample(keep, spec.sample))
    elif spec.weight_column and spec.sample is None:
        raise SourceError("weight_column only applies together with `sample`", "weight_column")
    return keep


def _weight(x: Any, col: str) -> float:
    try:
        w = float(x)
    except (TypeError, ValueError) as e:
        raise SourceError(f"weight {x!r} in column {col!r} is not a number", "weight_column") from e
    if w < 0 or math.isnan(w):
        raise SourceError(f"weight {x!r} in column {col!r} is negative", "weight_column")
    return w


def _records_getter(records: Sequence[RawRecord], spec: SourceSpec) -> ColumnGetter:
    def column(name: str) -> list[Any]:
        src = name
        if not any(isinstance(r.value, dict) and name in r.value for r in records):
            src = spec.columns.get(name, name)
        if not any(isinstance(r.value, dict) and src in r.value for r in records):
            have = _column_names(records)
            raise SourceError(
                f"no column {name!r} in the source"
                + (f"; columns: {', '.join(have)}" if have else " (its records are plain text)"),
                "filter" if spec.filter and name in spec.filter else "weight_column",
            )
        return [r.value.get(src) if isinstance(r.value, dict) else None for r in records]

    return column


def _column_names(records: Sequence[RawRecord]) -> list[str]:
    seen: dict[str, None] = {}
    for r in records[:1000]:
        if isinstance(r.value, dict):
            seen.update(dict.fromkeys(str(k) for k in r.value))
    return list(seen)


def read_records(spec: SourceSpec, base_dir: Path, *, seed: int, pool: str) -> list[RawRecord]:
    """Read a source, apply ``filter`` and ``sample``; the records keep their source index."""
    if spec.hub is not None:
        ds = _load_hub(spec, base_dir)

        def column(name: str) -> Sequence[Any]:
            src = name if name in ds.column_names else spec.columns.get(name, name)
            if src not in ds.column_names:
                raise SourceError(
                    f"no column {name!r} in {spec.hub!r}; columns: {', '.join(ds.column_names)}",
                    "filter" if spec.filter and name in spec.filter else "weight_column",
                )
            return ds[src]

        idx = select_indices(len(ds), column, spec, seed=seed, pool=pool)
        rows = ds.select(idx).to_list() if len(idx) < len(ds) else ds.to_list()
        return [RawRecord(i, None, row) for i, row in zip(idx, rows, strict=True)]

    if spec.inline is not None:
        records = [RawRecord(i, None, v) for i, v in enumerate(spec.inline)]
    elif spec.file is not None:
        path = base_dir / spec.file
        items = _parse_text(
            _read_file(path, spec.file, "file"), _fmt(spec, path), spec.file, "file"
        )
        records = [RawRecord(i, None, v) for i, v in enumerate(items)]
    else:
        records = _read_dir(spec, base_dir)
    idx = select_indices(len(records), _records_getter(records, spec), spec, seed=seed, pool=pool)
    return [records[i] for i in idx]


# ---------------------------------------------------------------------------------------------
# Records -> personas and posts


def _field(row: dict[str, Any], spec: SourceSpec, name: str, *fallbacks: str) -> tuple[str, Any]:
    """(column used, value) for a record field: the mapped column, else the field's own name,
    else the first fallback column present. ("", None) when absent."""
    if name in spec.columns:
        col = spec.columns[name]
        if col not in row:
            raise SourceError(
                f"column {col!r} (mapped to {name!r}) is missing; columns: {', '.join(map(str, row))}",
                "columns",
            )
        return col, row[col]
    for col in (name, *fallbacks):
        if col in row and row[col] not in (None, ""):
            return col, row[col]
    return "", None


def as_text(x: Any) -> str:
    """A field value as a string: lists joined with ', ', mappings as JSON."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (list, tuple)):
        return ", ".join(as_text(v) for v in x)
    if isinstance(x, dict):
        return json.dumps(x, ensure_ascii=False, sort_keys=True)
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _label(key: str) -> str:
    words = re.sub(r"[_\-]+", " ", key).strip()
    return words[:1].upper() + words[1:]


def describe(fields: Sequence[tuple[str, str]]) -> str:
    """A readable rendering of persona attributes, one short sentence each."""
    parts = []
    for k, v in fields:
        if v:
            parts.append(f"{_label(k)}: {v.rstrip('.')}.")
    return " ".join(parts)


_ADJECTIVES = [
    "amber",
    "brisk",
    "calm",
    "candid",
    "civic",
    "cobalt",
    "curious",
    "dusty",
    "eager",
    "frank",
    "gentle",
    "hazel",
    "honest",
    "idle",
    "jolly",
    "keen",
    "lively",
    "lucid",
    "mellow",
    "nimble",
    "noble",
    "patient",
    "plain",
    "quiet",
    "rapid",
    "rusty",
    "sage",
    "shy",
    "silver",
    "snowy",
    "solar",
    "sturdy",
    "tidy",
    "urban",
    "vivid",
    "wary",
    "witty",
    "woolly",
]
_NOUNS = [
    "badger",
    "beacon",
    "birch",
    "canyon",
    "cedar",
    "comet",
    "cricket",
    "delta",
    "falcon",
    "fern",
    "fjord",
    "gecko",
    "harbor",
    "heron",
    "juniper",
    "kestrel",
    "lantern",
    "larch",
    "lynx",
    "maple",
    "marmot",
    "meadow",
    "otter",
    "owl",
    "pebble",
    "pine",
    "quartz",
    "raven",
    "reef",
    "robin",
    "sparrow",
    "spruce",
    "thistle",
    "tundra",
    "walnut",
    "willow",
    "wren",
    "yak",
]


def handle_for(persona_id: str) -> str:
    """A deterministic forum handle for a persona without a name, e.g. ``quiet_heron42``."""
    h = derive_seed("handle", persona_id)
    adj = _ADJECTIVES[h % len(_ADJECTIVES)]
    noun = _NOUNS[(h // len(_ADJECTIVES)) % len(_NOUNS)]
    return f"{adj}_{noun}{(h // 10_000) % 90 + 10}"


def _record_id(r: RawRecord, row: dict[str, Any] | None, spec: SourceSpec, prefix: str) -> str:
    if row is not None:
        _, v = _field(row, spec, "id")
        if v not in (None, ""):
            return as_text(v)
    if r.key is not None:
        return r.key
    return f"{prefix}-{r.index:05d}"


def _check_unique(ids: list[str], what: str) -> None:
    seen: set[str] = set()
    for i in ids:
        if i in seen:
            raise SourceError(f"two {what} have the id {i!r}; ids must be unique", "")
        seen.add(i)


def to_persona(r: RawRecord, spec: SourceSpec, pool: str) -> Persona:
    """One raw record as a Persona (see the module docstring for which column is what)."""
    if isinstance(r.value, str):
        if spec.persona_template:
            raise SourceError(
                "persona_template renders records with columns; this pool's records are "
                "plain text (they are the descriptions already)",
                "persona_template",
            )
        pid = _record_id(r, None, spec, pool)
        return Persona(id=pid, name=handle_for(pid), description=r.value.strip())
    if not isinstance(r.value, dict):
        raise SourceError(
            f"persona record {r.index} is a {type(r.value).__name__}; "
            "use a text or a mapping of attributes",
            "",
        )
    row = {str(k): v for k, v in r.value.items()}
    pid = _record_id(r, row, spec, pool)
    id_col = spec.columns.get("id", "id")
    name_col, name = _field(row, spec, "name", "username")
    desc_col, desc = _field(row, spec, "description", "persona")
    fields = tuple(
        (k, as_text(v)) for k, v in row.items() if k not in (id_col, desc_col) and v is not None
    )
    # The sampling weight stays in `fields` (analyses reweight with it) but is never part of
    # the description, which is what the model is shown.
    hidden = _weight_columns(spec)
    template = spec.persona_template if isinstance(spec.persona_template, str) else None
    if template:
        shown = {k: as_text(v) for k, v in row.items() if k not in hidden}
        desc = _render_persona(template, shown, r.index)
    elif desc in (None, ""):
        desc = describe([(k, v) for k, v in fields if k != name_col and k not in hidden])
    return Persona(
        id=pid,
        name=as_text(name) if name not in (None, "") else handle_for(pid),
        description=as_text(desc),
        fields=fields,
    )


def _weight_columns(spec: SourceSpec) -> set[str]:
    """The column names that may hold ``weight_column`` (as written, and as mapped)."""
    if not spec.weight_column:
        return set()
    return {spec.weight_column, spec.columns.get(spec.weight_column, spec.weight_column)}


def _render_persona(template: str, row: dict[str, str], index: int) -> str:
    """A record rendered by ``persona_template``: its columns are variables (and ``row``)."""
    context = {k: v for k, v in row.items() if k.isidentifier() and k != "row"}
    try:
        text = template_environment().from_string(template).render(**context, row=row)
    except jinja2.UndefinedError as e:
        columns = ", ".join(row) or "none"
        raise SourceError(
            f"persona_template does not render for record {index}: {e.message} "
            f"(its columns: {columns})",
            "persona_template",
        ) from None
    except jinja2.TemplateError as e:
        raise SourceError(f"persona_template: {e}", "persona_template") from None
    except Exception as e:  # a template can raise anything (e.g. a division by zero)
        raise SourceError(
            f"persona_template does not render for record {index}: {type(e).__name__}: {e}",
            "persona_template",
        ) from None
    return text.strip()


def _seed_comment(c: Any, i: int, where: str) -> SeedComment:
    if isinstance(c, str):
        return SeedComment(DEFAULT_OP_AUTHOR if i == 0 else f"commenter_{i}", c.strip())
    if isinstance(c, dict):
        text = c.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SourceError(f"{where}: comment {i} has no text", "")
        author = c.get("author", c.get("name"))
        if author in (None, ""):
            author = DEFAULT_OP_AUTHOR if i == 0 else f"commenter_{i}"
        return SeedComment(as_text(author), text.strip())
    raise SourceError(f"{where}: comment {i} must be a text or {{author, text}}", "")


def to_post(r: RawRecord, spec: SourceSpec) -> Post:
    """One raw record as a Post: a text, ``{text, author?, title?, id?}`` or a seed thread
    ``{comments: [{author, text}, ...], title?, id?}`` whose first comment is the OP."""
    if isinstance(r.value, str):
        if not r.value.strip():
            raise SourceError(f"post {r.index} is empty", "")
        pid = _record_id(r, None, spec, "post")
        return Post(id=pid, comments=(SeedComment(DEFAULT_OP_AUTHOR, r.value.strip()),))
    if not isinstance(r.value, dict):
        raise SourceError(
            f"post {r.index} is a {type(r.value).__name__}; use a text, {{text: ...}} "
            "or {comments: [...]}",
            "",
        )
    row = {str(k): v for k, v in r.value.items()}
    pid = _record_id(r, row, spec, "post")
    where = f"post {pid!r}"
    _, title = _field(row, spec, "title")
    _, comments = _field(row, spec, "comments")
    if comments not in (None, ""):
        if isinstance(comments, str):
            try:
                comments = json.loads(comments)  # a CSV cell holding a JSON list
            except json.JSONDecodeError as e:
                raise SourceError(f"{where}: `comments` is not a list", "") from e
        if not isinstance(comments, list) or not comments:
            raise SourceError(f"{where}: `comments` must be a non-empty list", "")
        seeds = tuple(_seed_comment(c, i, where) for i, c in enumerate(comments))
    else:
        _, text = _field(row, spec, "text", "body", "content")
        if text in (None, "") or not as_text(text):
            cols = ", ".join(row)
            raise SourceError(
                f"{where} has no text (columns: {cols}); map one with `columns: {{text: ...}}`",
                "columns" if spec.columns else "",
            )
        _, author = _field(row, spec, "author")
        seeds = (SeedComment(as_text(author) or DEFAULT_OP_AUTHOR, as_text(text)),)
    return Post(id=pid, comments=seeds, title=as_text(title))


def load_personas(spec: SourceSpec, base_dir: Path, *, seed: int, pool: str) -> list[Persona]:
    """The persona pool ``pool``: unique ids; repeated names get a suffix (``_2``) so that
    no two people in a discussion share a display name."""
    personas = [
        to_persona(r, spec, pool) for r in read_records(spec, base_dir, seed=seed, pool=pool)
    ]
    _check_unique([p.id for p in personas], f"personas in pool {pool!r}")
    used: dict[str, int] = {}
    out = []
    for p in personas:
        n = used.get(p.name, 0) + 1
        used[p.name] = n
        out.append(p if n == 1 else Persona(p.id, f"{p.name}_{n}", p.description, p.fields))
    return out


def load_posts(spec: SourceSpec, base_dir: Path, *, seed: int, pool: str = "posts") -> list[Post]:
    """The posts (OPs or seed threads) discussions start from."""
    if spec.persona_template:
        raise SourceError(
            "persona_template applies to persona pools, not posts", "persona_template"
        )
    posts = [to_post(r, spec) for r in read_records(spec, base_dir, seed=seed, pool=pool)]
    _check_unique([p.id for p in posts], "posts")
    return posts
