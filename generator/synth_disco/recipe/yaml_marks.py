"""YAML with marks: a recipe's data plus the line and column of every key.

Recipes are plain data, so only YAML's plain tags are read (a ``!!python/object`` tag is a
problem, never constructed). The marks let every later problem point at its line.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from typing import Any

import yaml

from synth_disco.errors import Problem, RecipeError
from synth_disco.recipe.overrides import KeyPath, dotted

Mark = tuple[int, int]  # 1-based line, column

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


@dataclass
class MarkedYaml:
    """A parsed YAML document.

    ``data``: the plain data (None for an empty document); ``marks``: key path -> line and
    column of its key (or list item); ``problems``: what could not be read;
    ``refused``: the key paths whose value was refused (so a later schema error about the
    missing value is not reported twice).
    """

    data: Any
    marks: dict[KeyPath, Mark]
    problems: list[Problem]
    refused: list[KeyPath]


def parse_yaml(text: str, file: str) -> MarkedYaml:
    """Parse YAML safely.

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
    refused: list[KeyPath] = []

    def at(n: yaml.Node) -> Mark:
        return (n.start_mark.line + 1, n.start_mark.column + 1)

    def refuse(n: yaml.Node, path: KeyPath, message: str) -> None:
        line, col = at(n)
        problems.append(Problem(file, line, col, dotted(path), message))
        if path:
            refused.append(path)

    def build(n: yaml.Node, path: KeyPath, depth: int) -> Any:
        if depth > 64:
            refuse(n, path, "nested too deeply")
            return None
        if n.tag not in _ALLOWED_TAGS:
            tag = n.tag.replace("tag:yaml.org,2002:", "!!")
            refuse(n, path, f"YAML tag {tag} is not allowed (plain data only)")
            return None
        if isinstance(n, yaml.MappingNode):
            try:
                loader.flatten_mapping(n)  # resolves `<<: *anchor` merge keys
            except yaml.MarkedYAMLError as e:
                refuse(n, path, f"invalid YAML: {e.problem}")
                return {}
            out: dict[str, Any] = {}
            first: dict[str, int] = {}
            for k, v in n.value:
                if not isinstance(k, yaml.ScalarNode):
                    refuse(k, path, "keys must be plain text")
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
            refuse(n, path, "not a finite number")
            return None
        return value

    try:
        data = build(node, (), 0) if node is not None else None
    finally:
        loader.dispose()
    return MarkedYaml(data, marks, problems, refused)
