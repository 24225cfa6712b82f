"""The least time this machine needs for the real-model comparison's work: a floor under
``vs_syndisco.py --model`` (issue 13's targets).

It times raw transformers forward passes, no synth-disco code, at the cheapest layout each
kind of work can have:

- prefill: fresh prompts, right-padded, causal, no mask and no cache offset, logits of the
  last position only (no engine computes prompt tokens faster);
- batched decoding: one-token steps of ``--rows`` rows over a KV cache of ``--context``
  tokens per row, written in place (random states: attention costs the same), no padding;
- one request at a time (what SynDisco does): a ``--syndisco-prompt``-token prefill and
  ``--new-tokens`` steps at batch 1.

From those rates and the token counts synth-disco's engine computes for the medium workload
(arguments; the defaults are the counts measured in the recorded run, ``bench/RESULTS.md``):
the least seconds per comment and per label any exact engine needs for that work, the most
comments/s and labels/s that allows, and that ceiling as a multiple of SynDisco's measured
rates (also arguments, from the same run). A target above the ceiling cannot be met by
scheduling; only by computing fewer tokens (other prompts) or cheaper ones (other hardware,
other precision).

    python bench/floor.py --model ~/.cache/synth-disco/models/smollm2-135m-instruct/hf-float32
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Timer, machine_info, markdown_table, median, reexec_pinned  # noqa: E402


def timed(fn: Any, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    runs = []
    for _ in range(repeats):
        with Timer() as t:
            fn()
        runs.append(t.seconds)
    return median(runs)


def prefill_seconds(model: Any, rows: int, length: int, repeats: int) -> float:
    """Seconds of one causal prefill of ``rows`` fresh prompts of ``length`` tokens."""
    import torch

    ids = torch.randint(100, 1000, (rows, length))
    with torch.inference_mode():
        return timed(lambda: model(input_ids=ids, use_cache=True, logits_to_keep=1), repeats)


def decode_seconds(model: Any, rows: int, context: int, steps: int, repeats: int) -> float:
    """Seconds of ``steps`` one-token steps of ``rows`` rows over ``context`` cached tokens
    (median of ``repeats`` after a warm-up; filling the cache is not timed)."""
    import torch
    from transformers import DynamicCache

    from synth_disco.engines.hf.cache_room import with_room

    cfg = model.config
    heads = cfg.num_key_value_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    runs = []
    for _ in range(repeats + 1):
        cache = DynamicCache()
        for layer in range(cfg.num_hidden_layers):
            kv = torch.randn(rows, heads, context, dim) * 0.1
            cache.update(kv, kv.clone(), layer)
        cache = with_room(cache, steps + 1)
        token = torch.full((rows, 1), 100)
        with Timer() as t, torch.inference_mode():
            for step in range(steps):
                pos = torch.full((rows, 1), context + step)
                out = model(input_ids=token, position_ids=pos, cache=cache, use_cache=True)
                cache = out.cache
                token = out.logits[:, -1:].argmax(-1)
        runs.append(t.seconds)
    return median(runs[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a transformers model directory")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=64, help="discussions decoding together")
    ap.add_argument(
        "--prefill-shape",
        default="8x512",
        help="ROWSxTOKENS of the timed prefill (8x512: a CPU prefill group of long prompts)",
    )
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--context", type=int, default=320, help="mean cached tokens per row while decoding"
    )
    ap.add_argument(
        "--comment-prompt-tokens",
        type=float,
        default=141,
        help="prompt tokens synth-disco computes per comment (the rest come from its store)",
    )
    ap.add_argument(
        "--label-tokens", type=float, default=53, help="tokens synth-disco computes per label"
    )
    ap.add_argument("--syndisco-prompt", type=int, default=300, help="SynDisco's prompt tokens")
    ap.add_argument("--syndisco-comments-per-s", type=float, default=0.51)
    ap.add_argument("--syndisco-labels-per-s", type=float, default=2.56)
    args = ap.parse_args()
    reexec_pinned(args.threads, allocator=False)

    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(args.model.expanduser()), dtype="float32")
    model.eval()
    n = args.new_tokens

    p_rows, p_len = (int(x) for x in args.prefill_shape.lower().split("x"))
    p_s = prefill_seconds(model, p_rows, p_len, args.repeats)
    prefill_rate = p_rows * p_len / p_s
    d_s = decode_seconds(model, args.rows, args.context, n, args.repeats)
    decode_per_reply = d_s / args.rows
    one_prefill = prefill_seconds(model, 1, args.syndisco_prompt, args.repeats)
    one_decode = decode_seconds(model, 1, args.syndisco_prompt, n, args.repeats)

    comment_floor = args.comment_prompt_tokens / prefill_rate + decode_per_reply
    label_floor = args.label_tokens / prefill_rate
    one_comment = one_prefill + one_decode
    best_comments = 1 / comment_floor
    best_labels = 1 / label_floor

    info = machine_info()
    print(
        f"model: {args.model.name}, float32, {args.threads} threads; machine: {info['cpu']}, "
        f"{info['cores']} cores, load {info['loadavg']}; torch {info.get('torch')}, "
        f"transformers {info.get('transformers')}; median of {args.repeats}"
    )
    print()
    print(
        markdown_table(
            ["raw rate", "value"],
            [
                [f"prefill, {p_rows} x {p_len} fresh tokens, tokens/s", prefill_rate],
                [
                    f"decode, {args.rows} rows over {args.context} cached tokens, "
                    f"s per {n}-token reply",
                    decode_per_reply,
                ],
                [
                    f"one request alone: {args.syndisco_prompt}-token prefill + {n} steps, "
                    "s per comment",
                    one_comment,
                ],
            ],
        )
    )
    print()
    rows = [
        [
            "comments/s",
            f"{args.comment_prompt_tokens:g} prompt + {n} new tokens per comment",
            comment_floor * 1000,
            best_comments,
            args.syndisco_comments_per_s,
            best_comments / args.syndisco_comments_per_s,
            8,
        ],
        [
            "labels/s",
            f"{args.label_tokens:g} tokens per label",
            label_floor * 1000,
            best_labels,
            args.syndisco_labels_per_s,
            best_labels / args.syndisco_labels_per_s,
            10,
        ],
    ]
    print(
        markdown_table(
            [
                "measure",
                "work synth-disco computes",
                "least ms per item",
                "ceiling per s",
                "SynDisco measured",
                "ceiling / SynDisco",
                "target",
            ],
            rows,
        )
    )
    print()
    print(
        f"one request alone at raw speed: {1 / one_comment:.2f} comments/s "
        f"(SynDisco measured: {args.syndisco_comments_per_s})"
    )
    for name, ceiling, target, base in (
        ("comments", best_comments, 8, args.syndisco_comments_per_s),
        ("labels", best_labels, 10, args.syndisco_labels_per_s),
    ):
        verdict = "within reach" if ceiling >= target * base else "above the ceiling"
        print(f"{name}: target {target}x SynDisco is {verdict} on this machine")


if __name__ == "__main__":
    main()
