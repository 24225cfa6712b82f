"""Deliberation structures: who answers when, and which earlier responses each one is shown.

A structured discussion has a task (by default the post), agents (the participant slots
``0 .. n-1`` the plan drew, in plan order) and ``cycles`` rounds. In every cycle each agent
answers the task once; what it is shown of the responses written so far is the structure:

- ``ensemble``: nobody sees anything of the current cycle; from cycle 2 on, an agent sees the
  responses of the earlier cycles. All agents of a cycle answer at once.
- ``chain``: the agents answer one after the other; each sees every response written before
  its own (earlier cycles included).
- ``debate``: exactly two agents answer in turn, each seeing the debate so far; its own
  responses are labelled as its own ("You"), the other's as the other's ("The other
  debater"). The combiner sees them as "Debater 1" and "Debater 2" (slot 0 and slot 1).
- ``graph``: agents are nodes of a directed acyclic graph (``graph.edges``); an agent answers
  once its in-neighbours have answered in the same cycle (Kahn order, level by level) and sees
  the responses of its in-neighbours (earlier cycles included), nothing else.

Then ``last_n`` keeps the last n of what an agent would see (all when unset). What is shown is
ordered by cycle, then by position in the cycle. ``shuffle`` draws the agents' order anew for
each discussion and cycle, from the discussion's own seed (which the plan derives from the
discussion id; ``order_seed``) and the cycle, so the order is the same after a resume and on
any machine. It counterbalances the order within each discussion: the cells of a replicate
share their people and task (the matched design pairs those), not their orders, which are
drawn independently (a chain and an ensemble of one replicate hear the same agents in
orders of their own). It is recorded per response (``position``) and per discussion
(``orders``), and the ``seed`` column reproduces it. A graph's order is given by its edges,
so it is not shuffled.

A combiner moderator, if any, answers after the last cycle and sees every response of the last
cycle, in position order (``last_n`` does not apply to it).

Responses are labelled for their readers by slot: ``Participant 1`` .. ``Participant n``, or
the node names of a graph that names its nodes. Authors' persona names are not shown by the
built-in combinations (so a persona's name does not sway the others); a custom combination
template has them as ``author``.
"""

from __future__ import annotations

from dataclasses import dataclass

from synth_disco.recipe.graph import in_neighbours, kahn_levels, kahn_order, resolve_edges
from synth_disco.recipe.schema import AUTO_INSTRUCTIONS, DiscussionConfig, Range
from synth_disco.seeds import derive_seed, rng

DEBATE_OWN = "You"
DEBATE_OTHER = "The other debater"


@dataclass(frozen=True)
class Said:
    """A response as the structure knows it: who wrote it, when, and where it is stored."""

    comment_id: str
    slot: int
    cycle: int  # 1-based
    position: int  # 0-based place in the cycle's order
    author: str
    text: str


@dataclass(frozen=True)
class Shown:
    """A response as one reader is shown it."""

    comment_id: str
    label: str
    author: str
    text: str
    cycle: int
    position: int
    slot: int
    own: bool

    def as_context(self) -> dict[str, object]:
        """The variables a combination template sees of this response."""
        return {
            "label": self.label,
            "author": self.author,
            "text": self.text,
            "cycle": self.cycle,
            "position": self.position,
            "slot": self.slot,
            "own": self.own,
        }


def order_seed(discussion_seed: int) -> int:
    """The seed one discussion's agents' orders are drawn from (with the cycle, ``order``).

    It comes from the discussion's own seed (``DiscussionSpec.seed``), so every discussion,
    each cell of a replicate included, gets orders of its own, and a rebuild or a resume of
    that discussion draws the same ones. The ``Structure`` takes the seed, not the recipe."""
    return derive_seed(discussion_seed, "order")


class Structure:
    """The fixed shape of one structured discussion: its agents' order in each cycle, who is
    ready to answer, and what each is shown. It holds no responses (the state does)."""

    def __init__(self, cfg: DiscussionConfig, n_agents: int, seed: int):
        """``seed``: where the agents' order is drawn from (``order_seed``)."""
        self.kind = cfg.structure
        assert self.kind != "forum", "a forum is a DiscussionState, not a Structure"
        self.n = n_agents
        self.cycles = cfg.cycles
        self.last_n = cfg.last_n
        self.shuffle = cfg.shuffle and self.kind != "graph"
        self.seed = seed
        self.names = list(cfg.graph.nodes) if self.kind == "graph" else []
        self.edges: list[tuple[int, int]] = []
        self._ins: list[list[int]] = [[] for _ in range(n_agents)]
        self._base = list(range(n_agents))
        self.levels: list[list[int]] = [self._base]
        if self.kind == "graph":
            edges, problems = resolve_edges(cfg.graph.edges, self.names, n_agents)
            levels = kahn_levels(n_agents, edges)
            if problems or levels is None:  # the recipe checker refuses these
                raise ValueError(f"invalid graph: {problems[0].message if problems else 'cycle'}")
            self.edges = edges
            self._ins = in_neighbours(n_agents, edges)
            self._base = kahn_order(n_agents, edges) or []
            self.levels = levels
        self._orders: dict[int, list[int]] = {}

    # -- order ---------------------------------------------------------------------------------
    def order(self, cycle: int) -> list[int]:
        """The slots in the order they answer in ``cycle`` (1-based)."""
        if cycle not in self._orders:
            order = list(self._base)
            if self.shuffle:
                rng(self.seed, "shuffle", cycle).shuffle(order)
            self._orders[cycle] = order
        return self._orders[cycle]

    def position(self, slot: int, cycle: int) -> int:
        return self.order(cycle).index(slot)

    def ready(self, cycle: int, answered: set[int]) -> list[int]:
        """The slots that may answer now in ``cycle``, in order, given those that have."""
        order = self.order(cycle)
        waiting = [s for s in order if s not in answered]
        if not waiting:
            return []
        if self.kind == "ensemble":
            return waiting
        if self.kind == "graph":
            return [s for s in waiting if all(i in answered for i in self._ins[s])]
        return waiting[:1]  # chain, debate: one at a time

    # -- what is shown -------------------------------------------------------------------------
    def label(self, slot: int, reader: int | None) -> str:
        """How the response of ``slot`` is labelled for ``reader`` (None: the combiner)."""
        if self.kind == "debate":
            if reader is None:
                return f"Debater {slot + 1}"
            return DEBATE_OWN if slot == reader else DEBATE_OTHER
        if self.names:
            return self.names[slot]
        return f"Participant {slot + 1}"

    def _shown(self, said: list[Said], reader: int | None) -> list[Shown]:
        said = sorted(said, key=lambda r: (r.cycle, r.position))
        return [
            Shown(
                r.comment_id,
                self.label(r.slot, reader),
                r.author,
                r.text,
                r.cycle,
                r.position,
                r.slot,
                r.slot == reader,
            )
            for r in said
        ]

    def visible(self, slot: int, cycle: int, said: list[Said]) -> list[Shown]:
        """What agent ``slot`` is shown when it answers in ``cycle``, from the responses
        ``said`` so far, with ``last_n`` applied."""
        if self.kind == "ensemble":
            seen = [r for r in said if r.cycle < cycle]
        elif self.kind == "graph":
            ins = set(self._ins[slot])
            seen = [r for r in said if r.slot in ins and r.cycle <= cycle]
        else:  # chain, debate: everything written before this answer
            mine = self.position(slot, cycle)
            seen = [r for r in said if (r.cycle, r.position) < (cycle, mine)]
        shown = self._shown(seen, slot)
        if self.last_n is not None:
            shown = shown[-self.last_n :]
        return shown

    def for_combiner(self, said: list[Said]) -> list[Shown]:
        """What the combiner is shown: every response of the last cycle."""
        return self._shown([r for r in said if r.cycle == self.cycles], None)

    @property
    def planned_responses(self) -> int:
        return self.n * self.cycles


def agent_count(cfg: DiscussionConfig) -> int:
    """The most agents a discussion with ``cfg`` has (participants, or their maximum)."""
    p = cfg.participants
    return p.max if isinstance(p, Range) else p


def has_combiner(cfg: DiscussionConfig) -> bool:
    return cfg.moderator is not None and cfg.moderator.role == "combiner"


def writes_instructions(cfg: DiscussionConfig) -> bool:
    """Whether the model writes the combiner's instructions first (``instructions: auto``)."""
    return has_combiner(cfg) and cfg.moderator.instructions == AUTO_INSTRUCTIONS  # type: ignore[union-attr]


def planned_calls(cfg: DiscussionConfig, n_agents: int) -> tuple[int, int]:
    """(agent responses, moderator calls) of a structured discussion when nothing is retried:
    every agent once per cycle; a combiner once, and once more to write `auto` instructions."""
    moderator = (1 + writes_instructions(cfg)) if has_combiner(cfg) else 0
    return n_agents * cfg.cycles, moderator


# -- in words, for the dataset card and `show` ------------------------------------------------


def _slot_names(cfg: DiscussionConfig, n: int) -> list[str]:
    if cfg.structure == "graph" and cfg.graph.nodes:
        return list(cfg.graph.nodes)
    if cfg.structure == "debate":
        return ["Debater 1", "Debater 2"]
    return [f"Participant {i + 1}" for i in range(n)]


def describe(cfg: DiscussionConfig) -> str:
    """What a structure does, in a few sentences (the dataset card prints them)."""
    n = agent_count(cfg)
    p = cfg.participants
    agents = f"{p.min} to {p.max} agents" if isinstance(p, Range) else f"{n} agents"
    kind = cfg.structure
    if kind == "ensemble":
        text = (
            f"Ensemble of {agents}: each answers the task on its own, all at the same time; "
            "nobody sees the answers of the same cycle."
        )
        if cfg.cycles > 1:
            text += " From the second cycle on, each agent sees the answers of earlier cycles."
    elif kind == "chain":
        text = (
            f"Chain of {agents}: they answer one after the other, each shown the answers "
            "written before its own."
        )
    elif kind == "debate":
        text = (
            "Debate between 2 agents: they answer in turn, each shown the debate so far, its "
            "own answers marked as its own and the other's as the other's."
        )
    else:
        n_edges = len(resolve_edges(cfg.graph.edges, cfg.graph.nodes, n)[0])
        text = (
            f"Graph of {agents} and {n_edges} edge{'s' if n_edges != 1 else ''}: an agent "
            "answers once the agents with an edge to it have, and is shown their answers "
            "only (Kahn order, one level at a time)."
        )
    text += f" The structure runs {cfg.cycles} cycle{'s' if cfg.cycles != 1 else ''}"
    text += (
        "; the agents' order is drawn anew in each discussion and cycle (seeded by the "
        "discussion's seed)."
        if cfg.shuffle and kind != "graph"
        else "."
    )
    if cfg.last_n is not None:
        text += f" Each agent sees at most the last {cfg.last_n} of those answers."
    if has_combiner(cfg):
        mod = cfg.moderator
        assert mod is not None
        how = (
            "instructions the model wrote from the task first (`auto`)"
            if mod.instructions == AUTO_INSTRUCTIONS
            else "the instructions given"
        )
        task = " It is given its own task." if mod.task else ""
        text += (
            f" Then the combiner `{mod.name}` reads every answer of the last cycle and writes "
            f"the final response, following {how}.{task}"
        )
    return text


def diagram(cfg: DiscussionConfig) -> str:
    """The structure as a Mermaid flowchart (the Hub renders it): who is shown whose answers."""
    n = agent_count(cfg)
    names = _slot_names(cfg, n)
    lines = ["flowchart LR", "  task([task])"]
    ids = [f"a{i}" for i in range(n)]
    for i, name in enumerate(names):
        lines.append(f'  {ids[i]}["{name}"]')
    kind = cfg.structure
    if kind == "ensemble":
        lines += [f"  task --> {a}" for a in ids]
    elif kind in ("chain", "debate"):
        shuffled = "|order drawn per cycle| " if cfg.shuffle else ""
        lines.append(f"  task -->{shuffled}" + " --> ".join(ids))
        if kind == "debate" or cfg.cycles > 1:
            lines.append(f"  {ids[-1]} -. next cycle .-> {ids[0]}")
    else:
        edges, _ = resolve_edges(cfg.graph.edges, cfg.graph.nodes, n)
        ins = in_neighbours(n, edges)
        lines += [f"  task --> {ids[v]}" for v in range(n) if not ins[v]]
        lines += [f"  {ids[a]} --> {ids[b]}" for a, b in edges]
    if has_combiner(cfg):
        assert cfg.moderator is not None
        lines.append(f'  combiner[["{cfg.moderator.name} (combiner)"]]')
        lines += [f"  {a} --> combiner" for a in ids]
        lines.append("  combiner --> final([final response])")
    return "\n".join(lines)
