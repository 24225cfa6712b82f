"""Raw records as ``Persona`` objects, and ``load_personas``: a persona pool read, filtered,
sampled and converted.

Which column is what: a text record is the description itself. In a mapping, ``id`` is the id,
``name`` (else ``username``) the display name and ``description`` (else ``persona``) the
description, unless ``columns`` maps them elsewhere; every column but the id and the description
becomes one of the persona's ``fields``. A ``persona_template`` renders the record as its
description; without one or a description column, the fields other than the name are written out
as one (``describe``). The ``weight_column`` stays in ``fields`` but is never shown to the
model. A persona without a name gets a deterministic handle (``handle_for``). SynDisco / SDF
persona directories (one ``.json`` record per file with ``username, age, sex, ...``) load as
they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import jinja2

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources.fields import _check_unique, _field, _record_id, as_text
from synth_disco.recipe.sources.read import RawRecord
from synth_disco.recipe.sources.select import read_records
from synth_disco.recipe.templates import template_environment
from synth_disco.records import Persona
from synth_disco.seeds import derive_seed


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
