"""One structured discussion (ensemble, chain, debate, graph) as a replayable state machine.

It is driven like a forum thread (``machine.py``): ``next_requests()`` gives every request
that can be made now (all ready agents of the current cycle, as ``structures.py`` says who is
ready and what each is shown; the combiner after the last cycle; its `auto` instructions at
the start, next to the first agents), ``apply_all`` turns the answers into journal records and
``absorb`` applies a record, so replaying the journal rebuilds the state.

Journal records (``t``): ``comment`` (a response, its ``slot`` key ``c<cycle>s<agent>`` or
``final``), ``instructions`` (the combiner's `auto` instructions: written once per discussion,
reused from the journal after a resume), ``retry`` (an empty answer is asked again with a seed
derived from the key and the attempt), ``event`` (a failed turn), ``end`` and ``reopen``
(``--retry-failed``), as in the forum.

Rows: the task is the discussion's first comment (role ``op``: the post itself, by its author,
when the task is the post; else the rendered ``task``, by ``task``); every response is a
comment (role ``user``; the combiner's final response role ``moderator``) with ``cycle``,
``position``, ``parent_ids`` (what its author was shown, or the task) and ``prompt_id``: the
prompt it was made from (``prompts()``, one per agent and one for the combiner, as
``structure_prompts.agent_prompt`` and ``combiner_prompt`` say). The `auto` instructions are
no comment: they are the discussion's ``moderator_instructions``, and part of the combiner's
system message.

An empty answer (after cleaning) is retried up to ``max_empty_retries`` times, then the
discussion fails, as a forum turn does; an engine error fails it at once. The `auto`
instructions follow the same rule.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from synth_disco.discussion.cleaning import clean_reply
from synth_disco.discussion.machine import Ask, generation_column, spec_columns
from synth_disco.discussion.state import model_label
from synth_disco.discussion.structure_prompts import (
    agent_messages,
    agent_prompt,
    combiner_messages,
    combiner_prompt,
    instruction_messages,
    render_task,
    templates_for_structure,
)
from synth_disco.discussion.structures import (
    Said,
    Shown,
    Structure,
    has_combiner,
    order_seed,
    writes_instructions,
)
from synth_disco.engines.base import ChatRequest, Completion
from synth_disco.engines.sampling import sampling_params_from
from synth_disco.recipe.schema import DiscussionConfig, ModelConfig
from synth_disco.records import DiscussionSpec, Event, Prompt, Response
from synth_disco.seeds import derive_seed

FINAL = "final"
INSTRUCTIONS = "instructions"
TASK_AUTHOR = "task"


@dataclass(frozen=True)
class _Pending:
    """A request the discussion has asked for and waits to hear back on."""

    key: str  # "c<cycle>s<slot>", "final" or "instructions"
    slot: int | None
    cycle: int | None
    shown: tuple[Shown, ...]


def _persona_text(persona: str | dict[str, Any]) -> str:
    if isinstance(persona, str):
        return persona
    return "; ".join(f"{k}: {v}" for k, v in persona.items())


def agent_key(cycle: int, slot: int) -> str:
    return f"c{cycle}s{slot}"


class StructureState:
    def __init__(self, spec: DiscussionSpec):
        self.spec = spec
        self.cfg = DiscussionConfig.model_validate(spec.config["discussion"])
        models = {k: ModelConfig.model_validate(v) for k, v in spec.config["models"].items()}
        self._models = models
        self.model_name = self.cfg.model or next(iter(models))
        self.combiner = self.cfg.moderator if has_combiner(self.cfg) else None
        mod = self.combiner
        self.moderator_model_name = (mod.model if mod and mod.model else None) or self.model_name
        self.agents = list(spec.participants)
        self.structure = Structure(self.cfg, len(self.agents), order_seed(spec.seed))
        self._templates = templates_for_structure(self.cfg)
        self.task = render_task(self._templates["task"], spec.post)
        combiner_task = self._templates.get("combiner_task")
        self.moderator_task = render_task(combiner_task, spec.post) if combiner_task else self.task
        self._names = [p.name for p in self.agents] + ([mod.name] if mod else [])
        self._prompts: dict[int | None, Prompt] = {}  # slot (None: the combiner) -> its prompt

        self.comments: list[Response] = []
        self.events: list[Event] = []
        self.said: list[Said] = []
        self.answered: dict[int, set[int]] = defaultdict(set)
        self.attempts: dict[str, int] = {}
        self.round = 0
        self.final: Response | None = None
        self.instructions: str | None = None
        self._instruction_tokens = (0, 0)
        if mod is not None and not writes_instructions(self.cfg):
            self.instructions = mod.instructions if isinstance(mod.instructions, str) else ""
        self.status = "running"
        self.error: str | None = None
        self._asked: list[_Pending] = []
        self._task_comment()

    # -- setup ---------------------------------------------------------------------------------
    def _task_comment(self) -> None:
        post = self.spec.post
        author = post.op.author if self.cfg.task is None else TASK_AUTHOR
        self.comments.append(
            Response(
                discussion_id=self.spec.discussion_id,
                comment_id=self._comment_id(0),
                index=0,
                parent_id=None,
                author=author,
                role="op",
                persona_id=None,
                variant=None,
                text=self.task,
                raw_text=self.task,
                model=None,
                finish_reason=None,
                attempts=0,
            )
        )

    def _comment_id(self, index: int) -> str:
        return f"{self.spec.discussion_id}-c{index:03d}"

    @property
    def task_id(self) -> str:
        return self.comments[0].comment_id

    def prompt(self, slot: int | None) -> Prompt:
        """The prompt agent ``slot``'s responses are made from (None: the combiner's final
        response, once its instructions are known)."""
        context = _text(self.cfg.context)
        if slot is None:
            return combiner_prompt(
                self._templates,
                context=context,
                moderator=self._moderator_vars(),
                task=self.moderator_task,
            )
        return agent_prompt(
            self._templates,
            context=context,
            agent=self._agent_vars(slot),
            structure=self.structure.kind,
        )

    def _made_from(self, slot: int | None) -> Prompt:
        """:meth:`prompt`, rendered once per agent (and once for the combiner, whose
        instructions are known by the time its final response is made)."""
        if slot not in self._prompts:
            self._prompts[slot] = self.prompt(slot)
        return self._prompts[slot]

    def prompts(self) -> list[Prompt]:
        """The prompts config's rows of this discussion: those its responses point at by
        ``prompt_id``, the agents' in slot order, then the combiner's."""
        out = [self._made_from(slot) for slot in sorted({s.slot for s in self.said})]
        if self.final is not None:
            out.append(self._made_from(None))
        return out

    @property
    def wrote_instructions(self) -> bool:
        """Whether the model has written the combiner's ``auto`` instructions (one call)."""
        return self._instruction_tokens != (0, 0)

    @property
    def done(self) -> bool:
        return self.status != "running"

    # -- scheduling ----------------------------------------------------------------------------
    def _cycle(self) -> int | None:
        """The cycle in progress (1-based), or None once every cycle is complete."""
        n = len(self.agents)
        for cycle in range(1, self.structure.cycles + 1):
            if len(self.answered[cycle]) < n:
                return cycle
        return None

    def _finished(self) -> bool:
        return self._cycle() is None and (self.combiner is None or self.final is not None)

    def _pending(self) -> list[_Pending]:
        out: list[_Pending] = []
        if self.combiner is not None and self.instructions is None:
            out.append(_Pending(INSTRUCTIONS, None, None, ()))
        cycle = self._cycle()
        if cycle is not None:
            for slot in self.structure.ready(cycle, self.answered[cycle]):
                shown = self.structure.visible(slot, cycle, self.said)
                out.append(_Pending(agent_key(cycle, slot), slot, cycle, tuple(shown)))
        elif self.combiner is not None and self.final is None and self.instructions is not None:
            out.append(_Pending(FINAL, None, None, tuple(self.structure.for_combiner(self.said))))
        return out

    def next_requests(self) -> list[Ask]:
        if self.done:
            return []
        self._asked = self._pending()
        return [Ask(self._request(p), self._model_for(p)) for p in self._asked]

    def _model_for(self, p: _Pending) -> ModelConfig:
        agent = p.slot is not None
        return self._models[self.model_name if agent else self.moderator_model_name]

    def _moderator_vars(self) -> dict[str, Any]:
        mod = self.combiner
        assert mod is not None
        return {
            "name": mod.name,
            "persona": _persona_text(mod.persona),
            "instructions": self.instructions or "",
        }

    def _agent_vars(self, slot: int) -> dict[str, Any]:
        """What the agent templates see of agent ``slot`` (``agent``): its prompt and its
        requests render from the same variables."""
        agent = self.agents[slot]
        return {
            "name": agent.name,
            "label": self.structure.label(slot, None),
            "persona": agent.persona.description,
            "instructions": agent.instructions,
            "slot": slot,
        }

    def _request(self, p: _Pending) -> ChatRequest:
        structure = self.structure
        if p.key == INSTRUCTIONS:
            messages = instruction_messages(
                self._templates, task=self.moderator_task, moderator=self._moderator_vars()
            )
        elif p.key == FINAL:
            messages = combiner_messages(
                self._templates,
                context=_text(self.cfg.context),
                moderator=self._moderator_vars(),
                task=self.moderator_task,
                shown=p.shown,
                structure=structure.kind,
                cycles=structure.cycles,
            )
        else:
            assert p.slot is not None and p.cycle is not None
            messages = agent_messages(
                self._templates,
                system=self._made_from(p.slot).system,
                agent=self._agent_vars(p.slot),
                task=self.task,
                shown=p.shown,
                structure=structure.kind,
                cycle=p.cycle,
                cycles=structure.cycles,
            )
        attempt = self.attempts.get(p.key, 0)
        seed = derive_seed(self.spec.seed, p.key, attempt, self.round)
        rid = f"{self.spec.discussion_id}/{p.key}/{self.round}.{attempt}"
        # Only an agent's next cycle starts with the prompt of its answer in this one.
        later = p.cycle is not None and p.cycle < structure.cycles
        params = sampling_params_from(self._model_for(p))
        return ChatRequest(rid, messages, seed, params, keep_prefix=later)

    # -- applying answers ----------------------------------------------------------------------
    def apply_all(self, completions: list[Completion]) -> list[dict[str, Any]]:
        """The answers to the last ``next_requests()``, in its order, as journal records."""
        asked, self._asked = self._asked, []
        records: list[dict[str, Any]] = []

        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            self.absorb(record)

        d = self.spec.discussion_id
        for p, completion in zip(asked, completions, strict=True):
            if self.done:
                break
            speaker = self._speaker(p)
            if completion.finish_reason == "error":
                reason = f"engine error on {p.key}: {completion.error}"
                emit(self._event_record(p, speaker, "failed_turn", reason, completion.text))
                emit({"t": "end", "d": d, "status": "failed", "error": reason})
                break
            if p.key == INSTRUCTIONS:
                text = completion.text.strip()
            else:
                others = [n for n in self._names if n != speaker]
                text = clean_reply(completion.text, speaker, others)
            if not text:
                attempt = self.attempts.get(p.key, 0)
                if attempt + 1 > self.cfg.max_empty_retries:
                    what = "moderator instructions" if p.key == INSTRUCTIONS else "reply"
                    reason = f"empty {what} on {p.key} after {attempt + 1} attempts"
                    emit(self._event_record(p, speaker, "failed_turn", reason, completion.text))
                    emit({"t": "end", "d": d, "status": "failed", "error": reason})
                    break
                emit({"t": "retry", "d": d, "slot": p.key, "attempt": attempt + 1})
            elif p.key == INSTRUCTIONS:
                emit(
                    {
                        "t": "instructions",
                        "d": d,
                        "slot": p.key,
                        "text": text,
                        "raw_text": completion.text,
                        "prompt_tokens": completion.prompt_tokens,
                        "completion_tokens": completion.completion_tokens,
                        "attempts": self.attempts.get(p.key, 0) + 1,
                    }
                )
            else:
                emit(self._comment_record(p, speaker, text, completion))
        if not self.done and self._finished():
            emit({"t": "end", "d": d, "status": "ok", "error": None})
        return records

    def settle(self) -> list[dict[str, Any]]:
        """After a replay: the end record a crash may have cut off, if the work is over."""
        if self.done or not self._finished():
            return []
        record = {"t": "end", "d": self.spec.discussion_id, "status": "ok", "error": None}
        self.absorb(record)
        return [record]

    def _speaker(self, p: _Pending) -> str:
        if p.slot is not None:
            return self.agents[p.slot].name
        assert self.combiner is not None
        return self.combiner.name

    def _comment_record(
        self, p: _Pending, speaker: str, text: str, c: Completion
    ) -> dict[str, Any]:
        index = len(self.comments)
        parents = tuple(s.comment_id for s in p.shown) or (self.task_id,)
        agent = self.agents[p.slot] if p.slot is not None else None
        response = Response(
            discussion_id=self.spec.discussion_id,
            comment_id=self._comment_id(index),
            index=index,
            parent_id=parents[-1],
            author=speaker,
            role="user" if agent is not None else "moderator",
            persona_id=agent.persona.id if agent is not None else None,
            variant=agent.variant if agent is not None else None,
            text=text,
            raw_text=c.text,
            model=model_label(self._model_for(p)),
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            finish_reason=c.finish_reason,
            attempts=self.attempts.get(p.key, 0) + 1,
            cycle=p.cycle,
            position=self.structure.position(p.slot, p.cycle)
            if p.slot is not None and p.cycle is not None
            else None,
            parent_ids=parents,
            prompt_id=self._made_from(p.slot).id,
        )
        return {"t": "comment", "d": response.discussion_id, "slot": p.key, **response.to_dict()}

    def _event_record(
        self, p: _Pending, speaker: str, kind: str, detail: str, raw: str
    ) -> dict[str, Any]:
        event = Event(
            discussion_id=self.spec.discussion_id,
            index=len(self.comments),
            kind=kind,
            author=speaker,
            detail=detail,
            raw_text=raw,
        )
        return {"t": "event", "d": event.discussion_id, "slot": p.key, **event.to_dict()}

    def absorb(self, record: dict[str, Any]) -> None:
        """Apply one journal record to the state (used live and when replaying)."""
        kind = record["t"]
        if kind == "comment":
            fields = {k: v for k, v in record.items() if k not in ("t", "d", "slot")}
            fields["parent_ids"] = tuple(fields.get("parent_ids") or ())
            response = Response(**fields)
            self.comments.append(response)
            self.attempts.pop(record["slot"], None)
            if record["slot"] == FINAL:
                self.final = response
            else:
                cycle, position = response.cycle, response.position
                assert cycle is not None and position is not None
                slot = self.structure.order(cycle)[position]
                self.answered[cycle].add(slot)
                self.said.append(
                    Said(response.comment_id, slot, cycle, position, response.author, response.text)
                )
        elif kind == "instructions":
            self.instructions = record["text"]
            self._instruction_tokens = (record["prompt_tokens"], record["completion_tokens"])
            self.attempts.pop(INSTRUCTIONS, None)
        elif kind == "retry":
            self.attempts[record["slot"]] = record["attempt"]
        elif kind == "event":
            fields = {k: v for k, v in record.items() if k not in ("t", "d", "slot")}
            self.events.append(Event(**fields))
        elif kind == "end":
            self.status = record["status"]
            self.error = record["error"]
        elif kind == "reopen":
            self.status = "running"
            self.error = None
            self.attempts.clear()
            self.round += 1
        else:
            raise ValueError(f"unknown journal record {kind!r}")

    # -- output rows ---------------------------------------------------------------------------
    def discussion_row(self, factors: list[str]) -> dict[str, Any]:
        spec = self.spec
        model_cfg = self._models[self.model_name]
        mod = self.combiner
        generated = self.comments[1:]
        params = sampling_params_from(model_cfg)
        structure = self.structure
        return {
            **spec_columns(spec, factors),
            "moderator": None
            if mod is None
            else {
                "name": mod.name,
                "policy": "combiner",
                "k": None,
                "instructions": mod.instructions if isinstance(mod.instructions, str) else "",
                "model": model_label(self._models[self.moderator_model_name]),
            },
            "turn_policy": None,
            "turns": structure.planned_responses,
            "context_window": structure.last_n,
            "model": model_label(model_cfg),
            "model_revision": model_cfg.revision,
            "generation": generation_column(params),
            "status": self.status,
            "error": self.error,
            "n_comments": len(self.comments),
            "prompt_tokens": sum(c.prompt_tokens for c in generated) + self._instruction_tokens[0],
            "completion_tokens": sum(c.completion_tokens for c in generated)
            + self._instruction_tokens[1],
            "structure": structure.kind,
            "task": self.task,
            "orders": [structure.order(c) for c in range(1, structure.cycles + 1)],
            "final_response": self.final.text if self.final is not None else None,
            "moderator_instructions": self.instructions if mod is not None else None,
        }


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
