"""A rough benchmark of the quality flags: ``python -m synth_disco.discussion.quality`` flags
10,000 random comments and prints the CPU time spent in ``prompt_scaffolding`` and
``flag_comment`` (``flags``'s docstring quotes the figures)."""

from __future__ import annotations

import random
import time

from synth_disco.discussion.prompts import Shown, Speaker, build_messages, builtin_template
from synth_disco.discussion.quality.flags import flag_comment
from synth_disco.discussion.quality.scaffold import prompt_scaffolding
from synth_disco.recipe.quality import QualityConfig


def _benchmark(n: int = 10_000) -> tuple[float, float]:  # pragma: no cover - a manual check
    """CPU seconds spent in (prompt_scaffolding, flag_comment) flagging ``n`` random comments
    in discussions of 20, each against all its predecessors and with the scaffolding of its
    own rendered prompt (rendering is not timed)."""
    rng = random.Random(0)
    vocab = [
        *["the", "bus", "route", "council", "park", "tree", "rent", "library", "late", "early"],
        *["people", "think", "agree", "why", "how", "never", "always", "maybe", "street"],
        *["night", "morning", "shop", "school", "money", "vote", "plan", "road"],
    ]

    def sentence() -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(8, 20))).capitalize() + "."

    names = ["alder", "jonah.b", "marguerite_b", "tomas.k", "deltaSteve"]
    values = ["38", "male", "bus driver", "high school", "patient, dry humour", "Leeds"]
    turn, system = builtin_template("turn.j2"), builtin_template("system.j2")
    texts = [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(n)]
    jobs = []
    for i, text in enumerate(texts):
        earlier = texts[i - i % 20 : i]
        shown = [Shown(rng.choice(names), "user", t) for t in earlier[-6:]]
        messages = build_messages(
            {"system": system, "turn": turn},
            context="A forum.",
            title="Buses",
            op=Shown("alder", "op", "The bus is late."),
            seed_comments=[],
            visible=shown,
            omitted=len(earlier) - len(shown),
            speaker=Speaker("jonah.b", "user", "Age: 38.", "Be brief.\nStay in character."),
            parent=shown[-1] if shown else None,
        )
        jobs.append((text, earlier, "\n".join(m["content"] for m in messages), shown))
    cfg = QualityConfig()
    scaffolding_s = flags_s = 0.0
    for text, earlier, prompt, shown in jobs:
        t0 = time.process_time()
        scaffolding = prompt_scaffolding(
            prompt, [turn, system], ["The bus is late.", *(s.text for s in shown)]
        )
        t1 = time.process_time()
        flag_comment(
            text,
            finish_reason="stop",
            earlier=earlier,
            persona_values=values,
            participant_names=names,
            scaffolding=scaffolding,
            config=cfg,
        )
        scaffolding_s += t1 - t0
        flags_s += time.process_time() - t1
    return scaffolding_s, flags_s


if __name__ == "__main__":  # pragma: no cover
    scaffolding_s, flags_s = _benchmark()
    print(
        f"10,000 comments: prompt_scaffolding {scaffolding_s:.2f} CPU s, flag_comment "
        f"{flags_s:.2f} CPU s ({(scaffolding_s + flags_s) * 100:.0f} us per comment in all)"
    )
