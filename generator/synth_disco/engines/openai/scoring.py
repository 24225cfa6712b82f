"""Label scores from an OpenAI-compatible server's log-probabilities.

``score`` asks for one reply token with its top log-probs (``top_logprobs``, 20 by default)
and renormalises over the labels, as the transformers engine renormalises over the labels'
first tokens. A listed token counts for the label it spells, else for the labels it begins
(leading whitespace aside). A label absent from the list cannot be read from the server, only
bounded: it gets the floor, ten times less likely than the least likely listed token (or the
probability left outside the list, if that is less); a request where no label is listed fails
instead of returning a uniform guess.

Labels that share their first token (known from the server's ``/tokenize``) are scored whole:
each label's tokens appended to the templated prompt go to ``/v1/completions`` with ``echo``
and vLLM's ``prompt_logprobs``, and the sums of their log-probs are renormalised. A server
without ``/tokenize`` has its labels scored by first token, matched as text. A server that
gives no log-probabilities raises
:class:`~synth_disco.engines.openai.errors.ScoreUnsupportedError`, suggesting
``method: generate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from synth_disco.engines.base import LabelScores, ScoreRequest
from synth_disco.engines.common import error_scores
from synth_disco.engines.openai.errors import Exhausted, ScoreUnsupportedError
from synth_disco.engines.openai.tokens import ServerTokenizer
from synth_disco.engines.openai.transport import ServerPool

CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"

# A label missing from the server's top log-probs gets this much less than the least likely
# token listed (ln 10: ten times less likely), or the unlisted mass if that is smaller.
FLOOR_MARGIN = math.log(10.0)
# Answers that do not have the shape asked for: the request fails, the others go on.
MALFORMED = (KeyError, IndexError, TypeError, ValueError, AttributeError)


class LabelScorer:
    """Scores label sets through ``pool``; ``served()`` is the model id requests name."""

    def __init__(
        self,
        pool: ServerPool,
        tokenizer: ServerTokenizer,
        served: Callable[[], str],
        top_logprobs: int,
    ) -> None:
        self._pool = pool
        self._tokenizer = tokenizer
        self._served = served
        self._top_logprobs = top_logprobs

    async def score_one(self, req: ScoreRequest) -> LabelScores:
        """The label scores of ``req``; a failed result when retries ran out or the answer
        was malformed."""
        if not req.labels:
            return error_scores(req.id, 0, "no labels to score")
        if any(not lab for lab in req.labels):
            return error_scores(req.id, 0, "an empty label cannot be scored")
        try:
            ids = [await self._tokenizer.label_ids(lab) for lab in req.labels]
            if all(x is not None for x in ids):
                firsts = [x[0] for x in ids if x]
                if len(firsts) == len(ids) and len(set(firsts)) < len(firsts):
                    return await self._score_sequences(req, ids)  # type: ignore[arg-type]
            return await self._score_first(req)
        except Exhausted as exc:
            self._pool.counts["failed"] += 1
            return error_scores(req.id, 0, str(exc))
        except MALFORMED as exc:
            self._pool.counts["failed"] += 1
            return error_scores(req.id, 0, f"malformed answer from the server ({exc!r})")

    async def _score_first(self, req: ScoreRequest) -> LabelScores:
        """Softmax over the labels of the first reply token's top log-probs."""
        body = {
            "model": self._served(),
            "messages": [{"role": m["role"], "content": m["content"]} for m in req.messages],
            "max_tokens": 1,
            "temperature": 0.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": self._top_logprobs,
        }
        answer = await self._pool.call("POST", CHAT_PATH, body)
        choice = answer["choices"][0]
        prompt_tokens = int((answer.get("usage") or {}).get("prompt_tokens") or 0)
        logprobs = choice.get("logprobs")
        content = logprobs.get("content") if isinstance(logprobs, dict) else None
        if not content:
            raise ScoreUnsupportedError(
                f"{self._pool.where()} returned no log-probabilities for {self._served()!r} "
                "(logprobs: true, top_logprobs), so labels cannot be scored; use "
                "`method: generate` in the annotation settings instead"
            )
        first = content[0]
        entries = first.get("top_logprobs") or [first]
        lps = label_logprobs(entries, req.labels)
        if lps is None:
            listed = ", ".join(repr(e.get("token")) for e in entries[:5])
            return error_scores(
                req.id,
                prompt_tokens,
                f"none of the labels is among the server's top {len(entries)} first tokens "
                f"(most likely: {listed})",
            )
        return _label_scores(req, softmax(lps), prompt_tokens)

    async def _score_sequences(self, req: ScoreRequest, label_ids: list[list[int]]) -> LabelScores:
        """Sum of each label's token log-probs after the prompt (labels sharing a first token)."""
        prompt_ids = await self._tokenizer.prompt_ids(req.messages)
        unsupported = ScoreUnsupportedError(
            f"labels {list(req.labels)} share their first token, and {self._pool.where()} gives "
            "no prompt log-probabilities (/tokenize and /v1/completions with prompt_logprobs, "
            "as vLLM serves) to score whole labels; use labels that start differently or "
            "`method: generate`"
        )
        if prompt_ids is None:
            raise unsupported
        body = {
            "model": self._served(),
            "prompt": [prompt_ids + ids for ids in label_ids],
            "max_tokens": 1,
            "temperature": 0.0,
            "seed": 0,
            "echo": True,
            "logprobs": 1,
            "prompt_logprobs": 1,
        }
        answer = await self._pool.call("POST", COMPLETIONS_PATH, body, missing=(404, 405, 501))
        if answer is None:
            raise unsupported
        choices = sorted(answer["choices"], key=lambda c: int(c.get("index", 0)))
        if len(choices) != len(label_ids):
            raise ValueError(f"{len(choices)} choices for {len(label_ids)} prompts")
        sums = []
        for choice, ids in zip(choices, label_ids, strict=True):
            lp = sequence_logprob(choice, len(prompt_ids), ids)
            if lp is None:
                raise unsupported
            sums.append(lp)
        return _label_scores(req, softmax(sums), len(prompt_ids))


def label_logprobs(entries: list[dict[str, Any]], labels: Sequence[str]) -> list[float] | None:
    """Each label's first-token log-prob from the top candidates, None if no label is there.

    A candidate token belongs to the label it spells exactly, else to every label it begins
    (leading whitespace ignored unless the label has some); a label takes its best candidate.
    Labels no candidate reaches get the floor: ``FLOOR_MARGIN`` below the least likely
    candidate, or the log of the probability left outside the candidates if that is lower.
    """
    best = [-math.inf] * len(labels)
    seen: list[float] = []
    for entry in entries:
        token, lp = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str) or not isinstance(lp, (int, float)) or math.isnan(lp):
            continue
        lp = max(float(lp), -1e4)  # some servers write -9999 or -inf for "impossible"
        seen.append(lp)
        variants = {token, token.lstrip()} - {""}
        exact = [j for j, lab in enumerate(labels) if lab in variants]
        owners = exact or [
            j
            for j, lab in enumerate(labels)
            if (v := token if lab[:1].isspace() else token.lstrip()) and lab.startswith(v)
        ]
        for j in owners:
            best[j] = max(best[j], lp)
    if all(b == -math.inf for b in best):
        return None
    floor = min(seen) - FLOOR_MARGIN
    rest = 1.0 - sum(math.exp(lp) for lp in seen)
    if rest > 0:
        floor = min(floor, math.log(rest))
    return [b if b > -math.inf else floor for b in best]


def sequence_logprob(choice: dict[str, Any], start: int, ids: list[int]) -> float | None:
    """Sum of the log-probs of tokens ``ids`` at prompt positions ``start...``, or None.

    Reads vLLM's ``prompt_logprobs`` (one ``{token_id: {"logprob": ...}}`` per prompt
    position) or, failing that, the legacy ``logprobs.token_logprobs`` that ``echo`` fills.
    """
    positions = range(start, start + len(ids))
    rows = choice.get("prompt_logprobs")
    if isinstance(rows, list) and len(rows) >= start + len(ids):
        total = 0.0
        for pos, tok in zip(positions, ids, strict=True):
            row = rows[pos] or {}
            item = row.get(str(tok), row.get(tok)) if isinstance(row, dict) else None
            value = item.get("logprob") if isinstance(item, dict) else item
            if not isinstance(value, (int, float)):
                return None
            total += float(value)
        return total
    legacy = (choice.get("logprobs") or {}).get("token_logprobs")
    if isinstance(legacy, list) and len(legacy) >= start + len(ids):
        values = [legacy[pos] for pos in positions]
        if all(isinstance(v, (int, float)) for v in values):
            return float(sum(values))
    return None


def softmax(logprobs: list[float]) -> list[float]:
    top = max(logprobs)
    exps = [math.exp(lp - top) for lp in logprobs]
    total = sum(exps)
    return [e / total for e in exps]


def _label_scores(req: ScoreRequest, probs: list[float], prompt_tokens: int) -> LabelScores:
    best = max(range(len(probs)), key=probs.__getitem__)
    return LabelScores(req.id, tuple(probs), req.labels[best], prompt_tokens)
