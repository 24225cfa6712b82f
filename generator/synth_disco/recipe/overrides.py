"""Key paths into a recipe: the one parser for ``--set`` overrides and factor patch keys.

A key path names one value of a recipe: ``discussion.turn_taking.policy``, or with list items
``posts.inline.0.text`` (also written ``posts.inline[0].text``). The same parser reads the
keys of ``--set KEY=VALUE`` and the keys of factor level patches (``discussion.moderator:
{...}``), and ``dotted`` writes a path back the way messages show it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]

# One dotted part with list indices after it: ``inline[0]``, ``grid[1][2]``.
_INDEXED = re.compile(r"(?P<name>[^\[\]]+)(?P<indices>(?:\[\d+\])+)")


def _segment(part: str) -> str | int:
    """A part made of ASCII digits is a list index; anything else a mapping key."""
    return int(part) if part.isascii() and part.isdigit() else part


def parse_key(key: str) -> KeyPath:
    """``a.b[0].c`` or ``a.b.0.c`` -> ``("a", "b", 0, "c")``. Raises ValueError for an empty
    part (``a..b``, a leading or trailing dot)."""
    out: list[str | int] = []
    for part in key.split("."):
        if not part:
            raise ValueError(f"{key!r} is not a dotted key path")
        m = _INDEXED.fullmatch(part)
        if m is None:
            out.append(_segment(part))
            continue
        out.append(_segment(m["name"]))
        out.extend(int(i) for i in re.findall(r"\d+", m["indices"]))
    return tuple(out)


def dotted(path: Iterable[str | int]) -> str:
    """A key path as messages show it: ``discussion.variants.troll``, ``posts.inline.0``."""
    return ".".join(str(p) for p in path)


def overlaps(a: KeyPath, b: KeyPath) -> bool:
    """Whether one path is a prefix of the other (setting one changes the other)."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def parse_override(arg: str) -> tuple[KeyPath, Any]:
    """``a.b.c=value`` -> (("a", "b", "c"), YAML-parsed value). Raises ValueError."""
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError("write --set KEY=VALUE, e.g. --set discussion.turns=8")
    path = parse_key(key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise ValueError(f"cannot parse the value as YAML: {problem}") from None
    if isinstance(value, (_dt.date, _dt.datetime)):
        value = value.isoformat()  # keep the recipe JSON-able
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


def apply_patches(config: dict[str, Any], patches: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Apply factor level patches (key path -> value) to a deep copy of ``config``.

    A patch replaces the value at its key (no deep merge): set ``discussion.turn_taking.policy``
    to change one parameter, or ``discussion.turn_taking`` to replace them all.
    """
    out = copy.deepcopy(config)
    for key, value in patches:
        set_path(out, parse_key(key), copy.deepcopy(value))
    return out


def patch_leaves(patch: Mapping[str, Any]) -> Iterator[tuple[KeyPath, Any]]:
    """Every (key path, value) a factor level's patch sets, with mapping values opened up:
    ``{discussion.moderator: {k: 2}}`` gives ``(("discussion", "moderator", "k"), 2)``."""

    def leaves(path: KeyPath, value: Any) -> Iterator[tuple[KeyPath, Any]]:
        if isinstance(value, Mapping) and value:
            for k, v in value.items():
                yield from leaves((*path, k), v)
        else:
            yield path, value

    for key, value in patch.items():
        yield from leaves(parse_key(key), value)


def sets_under(patch: Mapping[str, Any], prefix: KeyPath) -> bool:
    """Whether a factor level's patch sets anything at or below ``prefix``."""
    return any(path[: len(prefix)] == prefix for path, _ in patch_leaves(patch))
