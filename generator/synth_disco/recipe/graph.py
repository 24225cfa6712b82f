"""Deliberation graphs: edges named by slot index or name, resolved and put in Kahn order.

A graph's agents are the discussion's participant slots ``0 .. n-1`` (``graph.nodes`` may name
them). An edge ``[a, b]`` shows ``b`` the responses of ``a``. The recipe checker reports an
edge that names no agent and an edge that closes a cycle; the discussion runs the agents in
the order given here (``kahn_order``), a level at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Endpoint = int | str


@dataclass(frozen=True)
class EdgeProblem:
    """A problem with edge ``edge`` (its position in ``graph.edges``); ``end`` is 0 or 1 for
    a problem with one end of it, None for the edge as a whole."""

    edge: int
    end: int | None
    message: str


def agent_names(nodes: Sequence[str], n: int) -> str:
    """How messages list the agents of a graph: ``0-2`` and the names, if any."""
    span = "0" if n == 1 else f"0-{n - 1}"
    return f"{span}, or {', '.join(nodes)}" if nodes else span


def resolve_edges(
    edges: Sequence[tuple[Endpoint, Endpoint]], nodes: Sequence[str], n: int
) -> tuple[list[tuple[int, int]], list[EdgeProblem]]:
    """Edges as (from, to) slot indexes, and the problems of those that do not resolve.

    An endpoint is a 0-based index below ``n`` or one of ``nodes`` (which name the slots in
    order). Edges listed twice are kept once.
    """
    index = {name: i for i, name in enumerate(nodes)}
    out: list[tuple[int, int]] = []
    problems: list[EdgeProblem] = []
    seen: set[tuple[int, int]] = set()
    for e, pair in enumerate(edges):
        ends: list[int] = []
        for k, end in enumerate(pair):
            if isinstance(end, int) and not isinstance(end, bool) and 0 <= end < n:
                ends.append(end)
            elif isinstance(end, str) and end in index:
                ends.append(index[end])
            else:
                problems.append(
                    EdgeProblem(e, k, f"no agent {end!r} (agents: {agent_names(nodes, n)})")
                )
        if len(ends) == 2 and (ends[0], ends[1]) not in seen:
            seen.add((ends[0], ends[1]))
            out.append((ends[0], ends[1]))
    return out, problems


def kahn_levels(n: int, edges: Sequence[tuple[int, int]]) -> list[list[int]] | None:
    """The agents level by level (Kahn's algorithm: an agent comes once all its in-neighbours
    have), each level in slot order; None when the edges have a cycle."""
    indegree = [0] * n
    out: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        indegree[b] += 1
        out[a].append(b)
    level = [v for v in range(n) if indegree[v] == 0]
    levels: list[list[int]] = []
    placed = 0
    while level:
        levels.append(level)
        placed += len(level)
        nxt: list[int] = []
        for v in level:
            for w in out[v]:
                indegree[w] -= 1
                if indegree[w] == 0:
                    nxt.append(w)
        level = sorted(nxt)
    return levels if placed == n else None


def kahn_order(n: int, edges: Sequence[tuple[int, int]]) -> list[int] | None:
    """The agents in topological order (level by level, slot order within a level)."""
    levels = kahn_levels(n, edges)
    return None if levels is None else [v for level in levels for v in level]


def find_cycle(n: int, edges: Sequence[tuple[int, int]]) -> list[int] | None:
    """One cycle of the graph as its agents (``[0, 1, 2, 0]``), or None when it is acyclic."""
    out: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        out[a].append(b)
    state = [0] * n  # 0 unseen, 1 on the current path, 2 done
    for root in range(n):
        if state[root]:
            continue
        path: list[int] = [root]
        stack = [iter(out[root])]
        state[root] = 1
        while stack:
            w = next(stack[-1], None)
            if w is None:
                state[path.pop()] = 2
                stack.pop()
            elif state[w] == 1:
                return [*path[path.index(w) :], w]
            elif state[w] == 0:
                state[w] = 1
                path.append(w)
                stack.append(iter(out[w]))
    return None


def in_neighbours(n: int, edges: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each agent, the agents whose responses it is shown, in slot order."""
    ins: list[list[int]] = [[] for _ in range(n)]
    for a, b in edges:
        ins[b].append(a)
    return [sorted(x) for x in ins]
