"""What personas and posts read from a record alike: a field's value (from the column
``columns`` maps it to, else the column of its own name or a fallback), a value as text, the
record's stable id (an ``id`` column, the file name, or the position in the source) and the check
that ids are unique.
"""

from __future__ import annotations

import json
from typing import Any

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources.read import RawRecord


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
