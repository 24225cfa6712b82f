"""Source filters: a small expression language over a source's columns, parsed, never eval'd.

A filter keeps the records for which it holds::

    age >= 30 and state == "MO"
    (party in [D, R] or ideology == liberal) and not region == south

- comparisons: ``column == value``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``column in [a, b]``
  and ``column not in [a, b]``;
- ``and`` binds tighter than ``or``; ``not`` negates; parentheses group;
- a value is a quoted string (``"MO"`` or ``'MO'``), a number, a list ``[a, b]``, or bare
  words up to the next ``and`` / ``or`` / ``)`` (``job == postal worker``), read as YAML as
  before (``true`` is a boolean). Quote a value that holds ``and``, ``or`` or brackets.

Equality compares canonical text, so ``age == 34`` matches a CSV's ``"34"`` and ``34.0``.
Ordering (``<`` ...) compares numbers: the value must be a number, and a record whose cell is
not a number (empty, ``NA``) does not match. Column names are identifiers (letters, digits,
``_``, ``.``, ``-``). The parser is a tokenizer and a recursive descent over this grammar::

    expr       := conj ("or" conj)*
    conj       := neg ("and" neg)*
    neg        := "not" neg | "(" expr ")" | comparison
    comparison := COLUMN OP value | COLUMN ["not"] "in" list
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

# What the filter says a column's values are: one value per record, in source order.
ColumnGetter = Callable[[str], Sequence[Any]]

_ORDERING = ("<", "<=", ">", ">=")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>==|!=|<=|>=|<|>)
      | (?P<punct>[()\[\],])
      | (?P<word>[^\s()\[\],=!<>"']+)
    )""",
    re.VERBOSE,
)
_COLUMN = re.compile(r"^[A-Za-z_][\w.-]*$")
_KEYWORDS = frozenset({"and", "or", "not", "in"})


class FilterError(ValueError):
    """A filter that cannot be parsed; the message says where and what was expected."""


@dataclass(frozen=True)
class _Token:
    kind: str  # string | op | punct | word | end
    text: str
    at: int  # character offset in the expression


@dataclass(frozen=True)
class Compare:
    column: str
    op: str  # ==, !=, <, <=, >, >=, in, not in
    values: tuple[Any, ...]  # one value, or the list's items


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class BoolOp:
    op: str  # "and" | "or"
    operands: tuple[Node, ...]


Node = Compare | Not | BoolOp


def _tokens(expr: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            at = len(expr) - len(expr[pos:].lstrip())
            raise FilterError(f"unexpected {expr[at]!r} at character {at + 1}")
        kind = m.lastgroup or "word"
        out.append(_Token(kind, m.group(kind), m.start(kind)))
        pos = m.end()
    out.append(_Token("end", "", len(expr)))
    return out


def canonical(x: Any) -> str:
    """Compare values by a canonical string, so `age == 34` matches a CSV's "34"."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if x is None:
        return ""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def number(x: Any) -> float | None:
    """``x`` as a number, or None (booleans, empty cells and words are not numbers)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(str(x).strip()) if not isinstance(x, (int, float)) else float(x)
    except ValueError:
        return None
    return None if math.isnan(v) else v


class _Parser:
    def __init__(self, expr: str):
        self.expr = expr
        self.toks = _tokens(expr)
        self.i = 0

    @property
    def tok(self) -> _Token:
        return self.toks[self.i]

    def _is(self, kind: str, text: str | None = None) -> bool:
        t = self.tok
        if t.kind != kind:
            return False
        return text is None or (t.text.lower() if kind == "word" else t.text) == text

    def _fail(self, wanted: str) -> FilterError:
        t = self.tok
        got = "the end" if t.kind == "end" else repr(t.text)
        return FilterError(f"expected {wanted} at character {t.at + 1}, found {got}")

    def _take(self) -> _Token:
        t = self.tok
        self.i += 1
        return t

    def parse(self) -> Node:
        node = self._or()
        if self.tok.kind != "end":
            raise self._fail("`and`, `or` or the end")
        return node

    def _or(self) -> Node:
        parts = [self._and()]
        while self._is("word", "or"):
            self._take()
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def _and(self) -> Node:
        parts = [self._not()]
        while self._is("word", "and"):
            self._take()
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def _not(self) -> Node:
        if self._is("word", "not"):
            self._take()
            return Not(self._not())
        if self._is("punct", "("):
            self._take()
            node = self._or()
            if not self._is("punct", ")"):
                raise self._fail("`)`")
            self._take()
            return node
        return self._comparison()

    def _comparison(self) -> Compare:
        t = self.tok
        if t.kind != "word" or t.text.lower() in _KEYWORDS or not _COLUMN.match(t.text):
            raise self._fail("a column name")
        column = self._take().text
        if self._is("word", "not"):
            self._take()
            if not self._is("word", "in"):
                raise self._fail("`in` after `not`")
            self._take()
            return Compare(column, "not in", self._list())
        if self._is("word", "in"):
            self._take()
            return Compare(column, "in", self._list())
        if self.tok.kind != "op":
            raise self._fail("a comparison (==, !=, <, <=, >, >=, in, not in)")
        op = self._take().text
        value = self._value()
        if op in _ORDERING and number(value) is None:
            raise FilterError(f"`{column} {op} ...` compares numbers; {value!r} is not a number")
        return Compare(column, op, (value,))

    def _list(self) -> tuple[Any, ...]:
        if not self._is("punct", "["):
            raise self._fail("a list like [a, b]")
        self._take()
        items: list[Any] = []
        while not self._is("punct", "]"):
            items.append(self._value())
            if self._is("punct", ","):
                self._take()
            elif not self._is("punct", "]"):
                raise self._fail("`,` or `]`")
        self._take()
        return tuple(items)

    def _value(self) -> Any:
        t = self.tok
        if t.kind == "string":
            self._take()
            return _unquote(t.text)
        if t.kind != "word" or t.text.lower() in ("and", "or"):
            raise self._fail("a value")
        # Bare words up to the next keyword or bracket (a list item: up to `,` or `]`).
        start = t.at
        end = t.at + len(t.text)
        last = t
        while self.tok.kind == "word" and (
            self.tok is t or self.tok.text.lower() not in ("and", "or")
        ):
            last = self.tok
            end = last.at + len(last.text)
            self._take()
        if self.tok.kind == "op" and last is not t:
            # `a == x b == y`: the words ran into the next comparison.
            raise FilterError(
                f"expected `and`, `or` or the end at character {last.at + 1}, found {last.text!r}"
            )
        text = self.expr[start:end]
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, (dict, list)) or value is None:
            value = text  # `a: b` or `~` are words here, not YAML structures
        return value


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse_filter(expr: str) -> Node:
    """The expression tree of a filter. Raises ``FilterError`` saying where it went wrong."""
    if not expr.strip():
        raise FilterError("the filter is empty")
    return _Parser(expr).parse()


def columns_of(node: Node) -> list[str]:
    """The columns a filter reads, in order of appearance."""
    if isinstance(node, Compare):
        return [node.column]
    if isinstance(node, Not):
        return columns_of(node.operand)
    return list(dict.fromkeys(c for part in node.operands for c in columns_of(part)))


def evaluate(node: Node, column: ColumnGetter, n_rows: int) -> list[bool]:
    """Whether the filter holds, for each of ``n_rows`` records (``column(name)`` gives a
    column's values in record order)."""
    if isinstance(node, Not):
        return [not x for x in evaluate(node.operand, column, n_rows)]
    if isinstance(node, BoolOp):
        parts = [evaluate(p, column, n_rows) for p in node.operands]
        combine = all if node.op == "and" else any
        return [combine(row) for row in zip(*parts, strict=True)]
    values = column(node.column)
    if node.op in _ORDERING:
        limit = number(node.values[0])
        assert limit is not None  # the parser refuses non-numbers
        test = {
            "<": lambda v: v < limit,
            "<=": lambda v: v <= limit,
            ">": lambda v: v > limit,
            ">=": lambda v: v >= limit,
        }[node.op]
        out = []
        for cell in values:
            v = number(cell)
            out.append(v is not None and test(v))
        return out
    wanted = {canonical(v) for v in node.values}
    keep = node.op in ("==", "in")
    return [(canonical(cell) in wanted) == keep for cell in values]
