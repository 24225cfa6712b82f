"""One discussion as a small state machine driven by the runner.

The runner asks ``next_request()`` for the pending chat request (or None when the discussion is
over) and hands the engine's answer to ``apply()``, which returns the journal records for it.
All state changes go through ``absorb(record)``, so replaying a discussion's journal records
rebuilds exactly the state the discussion had: resuming after a crash is replaying.

Turn semantics:
- Who speaks: the turn-taking policy (``policies.py``) picks each participant turn; when the
  moderator speaks is stated in ``moderation.py``. Which prompt each speaker gets:
  ``prompts.py``.
- An empty reply (after cleaning) is retried with a new seed derived from the turn and the
  attempt, up to ``max_empty_retries``; then the turn is recorded as failed and the discussion
  ends with status ``failed``. An engine error (e.g. prompt too long) fails it at once.
- Quality (the recipe's ``quality:`` block, rules in ``quality/``): every comment gets its
  flags when it is made, from its cleaned text, its prompt and the comments before it. With
  ``regenerate: N`` a reply raising one of ``regenerate_on`` is asked again, at most N times,
  each attempt with its own derived seed (the same seed rule as empty retries); each discarded
  reply is journaled as one ``regenerated`` event (its attempt, flags and text), and the last
  attempt is kept with whatever flags it has. Requests carry the turn template's header stop
  strings (``quality.header_stop_strings``), and a name a stop left dangling is removed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from synth_disco.discussion.cleaning import clean_reply, is_no_intervention
from synth_disco.discussion.machine import Ask, generation_column, spec_columns
from synth_disco.discussion.moderation import may_decline, speaks_after, takes_turns
from synth_disco.discussion.policies import Node, next_turn
from synth_disco.discussion.prompts import (
    NO_INTERVENTION,
    Shown,
    Speaker,
    build_messages,
    render,
    templates_for,
)
from synth_disco.discussion.quality.flags import flag_comment
from synth_disco.discussion.quality.headers import header_stop_strings, strip_dangling_header
from synth_disco.discussion.quality.scaffold import prompt_scaffolding
from synth_disco.engines.base import ChatRequest, Completion, SamplingParams
from synth_disco.engines.sampling import sampling_params_from
from synth_disco.recipe.schema import DiscussionConfig, ModelConfig, QualitySettings
from synth_disco.records import Comment, DiscussionSpec, Event, Prompt
from synth_disco.seeds import derive_seed


def model_label(cfg: ModelConfig) -> str:
    """The model as recorded in outputs: a hub id as is, a local path by its last part."""
    model = cfg.model.rstrip("/")
    if model.startswith(("/", ".", "~")) or "\\" in model:
        return model.replace("\\", "/").split("/")[-1]
    return model


def _persona_text(persona: str | dict[str, Any]) -> str:
    if isinstance(persona, str):
        return persona
    return "; ".join(f"{k}: {v}" for k, v in persona.items())


_UNSET = object()


@dataclass(frozen=True)
class Slot:
    """The turn the discussion is waiting for."""

    key: str  # "t3" (participant turn 3) or "m3" (moderator after participant turn 3)
    role: str  # "user" | "moderator"
    speaker: str
    parent_id: str
    on_demand: bool


class DiscussionState:
    def __init__(self, spec: DiscussionSpec):
        self.spec = spec
        self.cfg = DiscussionConfig.model_validate(spec.config["discussion"])
        models = {k: ModelConfig.model_validate(v) for k, v in spec.config["models"].items()}
        self.model_name = self.cfg.model or next(iter(models))
        mod = self.cfg.moderator
        self.moderator_model_name = (mod.model if mod and mod.model else None) or self.model_name
        self._models = models
        self.participants = {p.name: p for p in spec.participants}
        self.speakers = list(self.participants)
        if mod is not None and takes_turns(mod):
            self.speakers.append(mod.name)
        self._templates = templates_for(self.cfg)
        self.quality = QualitySettings.model_validate(spec.config.get("quality") or {})
        self._quality_config = self.quality.config()
        self._stops = (
            header_stop_strings(self._templates["turn"]) if self.quality.stop_strings else []
        )
        self._messages: tuple[tuple[str, int], list[dict[str, str]]] | None = None
        self._prompt_ids: dict[str, str] = {}

        self.comments: list[Comment] = []
        self.events: list[Event] = []
        self.user_turns = 0
        self.mod_due = False
        self.attempt = 0  # attempts made at the pending turn so far
        self.regenerated = 0  # of which discarded for their quality flags
        self.round = 0
        self.status = "running"
        self.error: str | None = None
        self._pending: object = _UNSET
        self._seed_comments()

    # -- setup ---------------------------------------------------------------------------------
    def _seed_comments(self) -> None:
        """The OP and seed comments, attributed to their real authors."""
        parent = None
        for i, c in enumerate(self.spec.post.comments):
            cid = self._comment_id(i)
            self.comments.append(
                Comment(
                    discussion_id=self.spec.discussion_id,
                    comment_id=cid,
                    index=i,
                    parent_id=parent,
                    author=c.author,
                    role="op" if i == 0 else "seed",
                    persona_id=None,
                    variant=None,
                    text=c.text,
                    raw_text=c.text,
                    model=None,
                    finish_reason=None,
                    attempts=0,
                )
            )
            parent = cid
        self.n_seed = len(self.comments)

    def _comment_id(self, index: int) -> str:
        return f"{self.spec.discussion_id}-c{index:03d}"

    @property
    def done(self) -> bool:
        return self.status != "running"

    # -- scheduling ----------------------------------------------------------------------------
    def _slot(self) -> Slot | None:
        """The pending turn; computed once per state change (it is asked for several times)."""
        if self._pending is _UNSET:
            self._pending = self._next_slot()
        return self._pending  # type: ignore[return-value]

    def _next_slot(self) -> Slot | None:
        mod = self.cfg.moderator
        if self.user_turns >= self.cfg.turns:
            return None
        if self.mod_due and mod is not None:
            return Slot(
                key=f"m{self.user_turns}",
                role="moderator",
                speaker=mod.name,
                parent_id=self.comments[-1].comment_id,
                on_demand=may_decline(mod),
            )
        history = [Node(c.comment_id, c.author, c.parent_id) for c in self.comments]
        turn = next_turn(
            self.cfg.turn_taking, self.speakers, history, self.user_turns, self.spec.seed
        )
        role = "moderator" if mod is not None and turn.speaker == mod.name else "user"
        return Slot(f"t{self.user_turns}", role, turn.speaker, turn.parent_id, False)

    def _visible(self, parent_id: str) -> tuple[list[Comment], int]:
        """The comments shown to the speaker beyond the OP and seeds, and how many were hidden."""
        generated = self.comments[self.n_seed :]
        if self.cfg.turn_taking.policy == "reply_tree":
            by_id = {c.comment_id: c for c in self.comments}
            path: list[Comment] = []
            node = by_id.get(parent_id)
            while node is not None and node.index >= self.n_seed:
                path.append(node)
                node = by_id.get(node.parent_id) if node.parent_id else None
            generated = path[::-1]
        window = self.cfg.context_window
        shown = generated[-window:] if window else []
        return shown, len(generated) - len(shown)

    def next_request(self) -> ChatRequest | None:
        if self.done:
            return None
        slot = self._slot()
        if slot is None:
            return None
        messages = self._slot_messages(slot)
        seed = derive_seed(self.spec.seed, slot.key, self.attempt, self.round)
        rid = f"{self.spec.discussion_id}/{slot.key}/{self.round}.{self.attempt}"
        return ChatRequest(rid, messages, seed, self._params(self.model_config_for_next()))

    def _params(self, model_cfg: ModelConfig) -> SamplingParams:
        """The model's decoding settings, with the quality stop strings added."""
        params = sampling_params_from(model_cfg)
        if not self._stops:
            return params
        return replace(params, stop=tuple(dict.fromkeys((*params.stop, *self._stops))))

    def _speaker(self, slot: Slot) -> Speaker:
        mod = self.cfg.moderator
        if slot.role == "moderator" and mod is not None:
            return Speaker(mod.name, "moderator", _persona_text(mod.persona), mod.instructions)
        p = self.participants[slot.speaker]
        return Speaker(p.name, "user", p.persona.description, p.instructions)

    def _shown(self, slot: Slot) -> tuple[list[Shown], int, Shown]:
        """What the speaker of ``slot`` sees: the visible comments, how many were hidden, and
        the comment it replies to."""
        visible, omitted = self._visible(slot.parent_id)
        parent = next(c for c in self.comments if c.comment_id == slot.parent_id)
        shown = [Shown(c.author, c.role, c.text) for c in visible]
        return shown, omitted, Shown(parent.author, parent.role, parent.text)

    def _slot_messages(self, slot: Slot) -> list[dict[str, str]]:
        """The chat messages of ``slot`` (rendered once per turn: attempts share them)."""
        key = (slot.key, len(self.comments))
        if self._messages is not None and self._messages[0] == key:
            return self._messages[1]
        shown, omitted, parent = self._shown(slot)
        post = self.spec.post
        messages = build_messages(
            self._templates,
            context=self.cfg.context,
            title=post.title,
            op=Shown(post.op.author, "op", post.op.text),
            seed_comments=[Shown(c.author, "seed", c.text) for c in post.comments[1:]],
            visible=shown,
            omitted=omitted,
            speaker=self._speaker(slot),
            parent=parent,
            on_demand=slot.on_demand,
        )
        self._messages = (key, messages)
        return messages

    def model_config_for_next(self) -> ModelConfig:
        """The model config that must answer the pending request."""
        slot = self._slot()
        moderator = slot is not None and slot.role == "moderator"
        return self._models[self.moderator_model_name if moderator else self.model_name]

    # -- the stage's interface (discussion/machine.py) -----------------------------------------
    def next_requests(self) -> list[Ask]:
        """Every request the thread waits on now: a forum waits on one turn at a time."""
        request = self.next_request()
        return [] if request is None else [Ask(request, self.model_config_for_next())]

    def apply_all(self, completions: list[Completion]) -> list[dict[str, Any]]:
        """The answer to the last ``next_requests()`` (one), as journal records."""
        (completion,) = completions
        return self.apply(completion)

    # -- applying answers ----------------------------------------------------------------------
    def apply(self, completion: Completion) -> list[dict[str, Any]]:
        """Turn the engine's answer into journal records, absorbing each as it is made."""
        slot = self._slot()
        assert slot is not None, "apply() without a pending request"
        d = self.spec.discussion_id
        records: list[dict[str, Any]] = []

        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            self.absorb(record)

        if completion.finish_reason == "error":
            reason = f"engine error on {slot.key}: {completion.error}"
            emit(self._event_record(slot, "failed_turn", reason, completion.text))
            emit({"t": "end", "d": d, "status": "failed", "error": reason})
            return records
        names = self._all_names()
        others = [s for s in names if s != slot.speaker]
        raw = completion.text
        if completion.finish_reason == "stop" and self._stops:
            raw = strip_dangling_header(raw, names)
        text = clean_reply(raw, slot.speaker, others)
        if slot.on_demand and is_no_intervention(text, NO_INTERVENTION):
            emit(self._event_record(slot, "no_intervention", "", completion.text))
        elif not text:
            if self.attempt - self.regenerated + 1 > self.cfg.max_empty_retries:
                reason = f"empty reply on {slot.key} after {self.attempt + 1} attempts"
                emit(self._event_record(slot, "failed_turn", reason, completion.text))
                emit({"t": "end", "d": d, "status": "failed", "error": reason})
                return records
            emit({"t": "retry", "d": d, "attempt": self.attempt + 1})
        else:
            flags = self._flags(slot, text, completion.finish_reason)
            if self.regenerated < self.quality.regenerate and set(flags) & set(
                self.quality.regenerate_flags
            ):
                # One record: replaying it both counts the attempt and moves the seed on.
                emit(
                    self._event_record(
                        slot, "regenerated", ", ".join(flags), completion.text, flags=flags
                    )
                )
                return records
            emit(self._comment_record(slot, text, completion, flags))
        if self._slot() is None:
            emit({"t": "end", "d": d, "status": "ok", "error": None})
        return records

    def settle(self) -> list[dict[str, Any]]:
        """After a replay: the end record a crash may have cut off, if the talk is over."""
        if self.done or self._slot() is not None:
            return []
        record = {"t": "end", "d": self.spec.discussion_id, "status": "ok", "error": None}
        self.absorb(record)
        return [record]

    def _all_names(self) -> list[str]:
        names = [*self.participants, *(c.author for c in self.comments[: self.n_seed])]
        if self.cfg.moderator is not None:
            names.append(self.cfg.moderator.name)
        return list(dict.fromkeys(names))

    def prompt(self, role: str) -> Prompt:
        """The prompt a ``role`` ("user" or "moderator") speaks from in this discussion."""
        system = "moderator_system" if role == "moderator" else "system"
        return Prompt(
            "moderator" if role == "moderator" else "participant",
            render(self._templates[system], context=self.cfg.context),
            (("turn", self._templates["turn"]),),
        )

    def prompts(self) -> list[Prompt]:
        """The prompts of this discussion's generated comments, participant's first."""
        roles = {c.role for c in self.comments[self.n_seed :]}
        return [self.prompt(r) for r in ("user", "moderator") if r in roles]

    def _flags(self, slot: Slot, text: str, finish_reason: str) -> list[str]:
        """The quality flags of the reply ``text`` to ``slot`` (see ``quality.flag_comment``)."""
        cfg = self._quality_config
        if not cfg.flags:
            return []
        p = self.participants.get(slot.speaker) if slot.role == "user" else None
        speaker = self._speaker(slot)
        shown, _, parent = self._shown(slot)
        post = self.spec.post
        system = "moderator_system" if slot.role == "moderator" else "system"
        messages = self._slot_messages(slot)
        scaffolding = prompt_scaffolding(
            "\n".join(m["content"] for m in messages),
            [self._templates[system], self._templates["turn"]],
            quoted=[*(c.text for c in post.comments), *(c.text for c in shown), parent.text],
            extra=[x for x in (speaker.instructions, self.cfg.context) if isinstance(x, str)],
        )
        return flag_comment(
            text,
            finish_reason=finish_reason,
            earlier=[c.text for c in self.comments],
            persona_values=[v for _, v in p.persona.fields] if p is not None else [],
            participant_names=self._all_names(),
            scaffolding=scaffolding,
            config=cfg,
        )

    def _comment_record(
        self, slot: Slot, text: str, c: Completion, flags: list[str]
    ) -> dict[str, Any]:
        index = len(self.comments)
        p = self.participants.get(slot.speaker)
        model = self._models[
            self.moderator_model_name if slot.role == "moderator" else self.model_name
        ]
        comment = Comment(
            discussion_id=self.spec.discussion_id,
            comment_id=self._comment_id(index),
            index=index,
            parent_id=slot.parent_id,
            author=slot.speaker,
            role=slot.role,
            persona_id=p.persona.id if p and slot.role == "user" else None,
            variant=p.variant if p and slot.role == "user" else None,
            text=text,
            raw_text=c.text,
            model=c.model or model_label(model),  # the model the engine says answered
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            finish_reason=c.finish_reason,
            attempts=self.attempt + 1,
            flags=flags,
            prompt_id=self._prompt_id(slot.role),
        )
        return {"t": "comment", "d": comment.discussion_id, "slot": slot.key, **comment.to_dict()}

    def _prompt_id(self, role: str) -> str:
        if role not in self._prompt_ids:  # rendered once per role
            self._prompt_ids[role] = self.prompt(role).id
        return self._prompt_ids[role]

    def _event_record(
        self, slot: Slot, kind: str, detail: str, raw: str, flags: list[str] | None = None
    ) -> dict[str, Any]:
        event = Event(
            discussion_id=self.spec.discussion_id,
            index=len(self.comments),
            kind=kind,
            author=slot.speaker,
            detail=detail,
            raw_text=raw,
            attempt=self.attempt + 1,
            flags=list(flags or []),
        )
        return {"t": "event", "d": event.discussion_id, "slot": slot.key, **event.to_dict()}

    def absorb(self, record: dict[str, Any]) -> None:
        """Apply one journal record to the state (used live and when replaying)."""
        self._pending = _UNSET
        kind = record["t"]
        if kind == "comment":
            fields = {k: v for k, v in record.items() if k not in ("t", "d", "slot")}
            self.comments.append(Comment(**fields))
            self.attempt = self.regenerated = 0
            if record["slot"].startswith("t"):
                self.user_turns += 1
                self.mod_due = speaks_after(self.cfg, self.user_turns)
            else:
                self.mod_due = False
        elif kind == "event":
            fields = {k: v for k, v in record.items() if k not in ("t", "d", "slot")}
            self.events.append(Event(**fields))
            if fields["kind"] == "no_intervention":
                self.mod_due = False
                self.attempt = self.regenerated = 0
            elif fields["kind"] == "regenerated":
                self.attempt = fields["attempt"]  # the next attempt gets the next seed
                self.regenerated += 1
        elif kind == "retry":
            self.attempt = record["attempt"]
        elif kind == "end":
            self.status = record["status"]
            self.error = record["error"]
        elif kind == "reopen":
            self.status = "running"
            self.error = None
            self.attempt = self.regenerated = 0
            self.round += 1
        else:
            raise ValueError(f"unknown journal record {kind!r}")

    # -- output rows ---------------------------------------------------------------------------
    def _answered_by(self, role: str, config_name: str) -> str:
        """The model recorded for ``role``'s comments: the one its first comment says answered
        (a server reports its own id), else the configured one."""
        first = next((c.model for c in self.comments if c.role == role and c.model), None)
        return first or model_label(self._models[config_name])

    def discussion_row(self, factors: list[str]) -> dict[str, Any]:
        spec = self.spec
        model_cfg = self._models[self.model_name]
        mod = self.cfg.moderator
        generated = self.comments[self.n_seed :]
        params = self._params(model_cfg)
        return {
            **spec_columns(spec, factors),
            "moderator": None
            if mod is None
            else {
                "name": mod.name,
                "policy": mod.policy,
                "k": mod.k,
                "instructions": mod.instructions if isinstance(mod.instructions, str) else "",
                "model": self._answered_by("moderator", self.moderator_model_name),
            },
            "turn_policy": self.cfg.turn_taking.policy,
            "turns": self.cfg.turns,
            "context_window": self.cfg.context_window,
            "model": self._answered_by("user", self.model_name),
            "model_revision": model_cfg.revision,
            "generation": generation_column(params),
            "status": self.status,
            "error": self.error,
            "n_comments": len(self.comments),
            "prompt_tokens": sum(c.prompt_tokens for c in generated),
            "completion_tokens": sum(c.completion_tokens for c in generated),
        }
