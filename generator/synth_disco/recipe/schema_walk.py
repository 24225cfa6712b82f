"""Walking the recipe schema by key path: which types a key may hold, which keys a mapping
allows. The checker uses it for "did you mean" hints, to find the ``{file: ...}`` texts and to
check the keys of factor patches.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel

from synth_disco.recipe.schema import FileRef, Recipe


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
    """A "; did you mean ..." hint for ``word`` among ``options``, or nothing."""
    close = difflib.get_close_matches(str(word), list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def accepts_fileref(types_: list[Any]) -> bool:
    """Whether a value of one of ``types_`` may be written ``{file: ...}`` (a Text field)."""
    return any(alt is FileRef for tp in types_ for alt in _alternatives(tp))


def next_types(types_: list[Any], seg: str | int) -> list[Any]:
    """The types below ``types_`` through key ``seg``, not looking inside free-form data."""
    out: list[Any] = []
    for tp in types_:
        if tp is Any:
            continue  # inside free-form data (inline records, factor patches): no Text here
        out.extend(_step(tp, seg))
    return out
