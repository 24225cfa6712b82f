"""Test doubles: a fake engine whose text depends only on the request, and spec builders."""

from __future__ import annotations

import random
from collections.abc import Callable

from synth_disco.engines.base import ChatRequest, Completion, LabelScores, ScoreRequest
from synth_disco.records import DiscussionSpec, Participant, Persona, Post, SeedComment

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "bright",
    "quiet",
    "people",
    "argue",
    "agree",
    "think",
    "maybe",
    "never",
]


class FakeEngine:
    """Deterministic text from each request's seed; ``reply`` overrides the text per request."""

    model_id = "fake"
    revision = None

    def __init__(self, reply: Callable[[ChatRequest], str] | None = None):
        self.reply = reply
        self.calls: list[list[ChatRequest]] = []

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        self.calls.append(list(requests))
        out = []
        for r in requests:
            if self.reply is not None:
                text = self.reply(r)
            else:
                rng = random.Random(r.seed)
                text = " ".join(rng.choice(WORDS) for _ in range(6))
            out.append(Completion(r.id, text, 10, len(text.split()), "eos"))
        return out

    def score(self, requests: list[ScoreRequest]) -> list[LabelScores]:
        out = []
        for r in requests:
            p = 1.0 / len(r.labels)
            out.append(LabelScores(r.id, tuple(p for _ in r.labels), r.labels[0]))
        return out

    def count_tokens(self, messages):
        return sum(len(m["content"]) for m in messages)

    @property
    def max_context(self) -> int:
        return 10_000

    def close(self) -> None:
        pass


def make_spec(
    *,
    n: int = 4,
    turns: int = 6,
    policy: dict | None = None,
    moderator: dict | None = None,
    context_window: int = 3,
    seed: int = 1,
    seed_comments: int = 0,
    discussion_id: str = "base-r00000",
    extra: dict | None = None,
) -> DiscussionSpec:
    participants = tuple(
        Participant(
            name=f"user{i}",
            persona=Persona(id=f"p{i}", name=f"user{i}", description=f"Person number {i}."),
            variant="default",
            instructions="Be yourself.",
        )
        for i in range(n)
    )
    comments = [SeedComment("Original Poster", "Should cities ban cars from their centres?")]
    comments += [SeedComment(f"seeder{j}", f"Seed reply {j}.") for j in range(seed_comments)]
    discussion = {
        "turns": turns,
        "context_window": context_window,
        "turn_taking": policy or {"policy": "round_robin"},
        "moderator": moderator,
        **(extra or {}),
    }
    return DiscussionSpec(
        discussion_id=discussion_id,
        index=0,
        cell_id="base",
        cell={},
        replicate=0,
        seed=seed,
        shard=0,
        post=Post(id="post0", comments=tuple(comments), title="Car-free cities"),
        participants=participants,
        config={
            "models": {"m": {"engine": "tiny", "model": "tiny", "max_new_tokens": 16}},
            "discussion": discussion,
        },
    )


def run_alone(spec: DiscussionSpec, engine) -> object:
    """Run one discussion to the end, one request at a time."""
    from synth_disco.discussion.state import DiscussionState

    state = DiscussionState(spec)
    while not state.done:
        request = state.next_request()
        (completion,) = engine.generate([request])
        state.apply(completion)
    return state
