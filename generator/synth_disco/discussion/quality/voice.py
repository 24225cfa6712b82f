"""``assistant_voice``: a reply that speaks as an AI assistant rather than a forum user, or
refuses ("As an AI", "I can't fulfill this request", "Sure! Here's a comment"); see
``flags``'s docstring for the rule."""

from __future__ import annotations

import re

from synth_disco.discussion.quality.comment import CommentCheck
from synth_disco.discussion.quality.text import _collapse, _norm_quotes

_AI = (
    r"(?:an?\s+)?(?:ai|artificial intelligence)"
    r"(?:\s+(?:language\s+)?model|\s+assistant|\s+chatbot)?"
)
_THEN = (
    r"(?=\s*(?:[,.;:!)]|$)|\s+(?:and|so|but|i|my|that|with|without|developed|trained|created|"
    r"built|designed|programmed|made)\b)"
)
_CANT = (
    r"i\s+(?:can't|cannot|can\s+not|won't|will\s+not|am\s+unable\s+to|'m\s+unable\s+to|"
    r"am\s+not\s+able\s+to|'m\s+not\s+able\s+to|must\s+(?:respectfully\s+)?decline\s+to)"
)
_REQUEST = r"(?:this|that|your|the|such\s+a)\s+(?:request|task|prompt)"
# Each rule: the words one of which must be in the (casefolded) text for it to apply, checked
# first because a substring test is far cheaper than the pattern; then the pattern.
_ASSISTANT: tuple[tuple[tuple[str, ...], re.Pattern[str]], ...] = tuple(
    (triggers, re.compile("|".join(patterns), re.MULTILINE))
    for triggers, patterns in [
        (
            (" ai", "artificial", "language model", "assistant"),
            [
                rf"\bas\s+{_AI}{_THEN}",
                r"\bas\s+a\s+(?:large\s+)?language\s+model\b",
                rf"\bi(?:'m|\s+am)\s+(?:just\s+|only\s+|merely\s+|simply\s+|not\s+)?"
                rf"(?:{_AI}|an?\s+(?:large\s+)?language\s+model|an?\s+(?:virtual\s+)?assistant)"
                rf"{_THEN}",
                rf"\bas\s+(?:a|an|your)\s+(?:helpful\s+|friendly\s+|virtual\s+)?assistant{_THEN}",
            ],
        ),
        (
            ("can't", "cannot", "can not", "won't", "will not", "unable", "not able", "decline"),
            [
                rf"\b{_CANT}\s+(?:fulfill|fulfil|comply\s+with|complete|help\s+with|"
                rf"assist\s+with|process|respond\s+to)\s+{_REQUEST}",
                rf"\b{_CANT}\s+(?:comply|assist)(?=\s*[.!,]|\s+with\s+(?:this|that)\b)",
                rf"\b{_CANT}\s+(?:generate|create|produce|write)\s+(?:content|a\s+response|"
                r"(?:a|this|that|such)\s+(?:\w+\s+){0,2}(?:content|comment|response|post)\s+that)",
                rf"\b{_CANT}\s+(?:engage\s+in|continue)\s+(?:this|that)\s+"
                r"(?:role-?\s?play|conversation)",
            ],
        ),
        (
            ("sorry",),
            [
                r"\bi(?:'m|\s+am)\s+(?:really\s+|very\s+|so\s+)?sorry,?\s+but\s+(?:"
                rf"{_CANT}|i\s+(?:don't|do\s+not)\s+(?:feel\s+comfortable|have\s+(?:personal|"
                r"the\s+ability|access))|as\s+an?\s+(?:ai|language)|i\s+must\s+"
                r"(?:respectfully\s+)?(?:decline|refuse))",
            ],
        ),
        (
            ("personal",),
            [
                r"\bi\s+(?:don't|do\s+not)\s+have\s+personal\s+(?:opinions|beliefs|feelings|"
                r"experiences|preferences|views)\b",
            ],
        ),
        (
            ("sure", "certainly", "of course", "absolutely"),
            [
                r"^\W*(?:sure|certainly|of\s+course|absolutely)\s*[!,.]\s*(?:"
                r"here(?:'s|\s+is|\s+are)\b[^.\n]{0,40}?\b"
                r"(?:comment|response|reply|post|message|version|draft)s?\b|"
                r"i(?:'d|\s+would)\s+be\s+(?:happy|glad)\s+to\b)",
            ],
        ),
        (
            ("here's", "here is"),
            [
                r"\bhere(?:'s|\s+is)\s+(?:a|an|my|the|your)\s+(?:[\w-]+\s+){0,3}?"
                r"(?:comment|response|reply|forum\s+post|message|draft)\s*"
                r"(?::|\b(?:as|from|in\s+the\s+(?:voice|style|persona))\b)",
            ],
        ),
        (
            ("let me know",),
            [
                r"\blet\s+me\s+know\s+if\s+you(?:'d|\s+would)\s+like\s+(?:me\s+to\s+)?"
                r"(?:any\s+)?(?:changes|adjust|revis|modif|rephras|another\s+version|"
                r"a\s+different)",
            ],
        ),
    ]
)


def _assistant_voice(c: CommentCheck) -> bool:
    text = _norm_quotes(c.text).casefold()
    flat = " " + _collapse(text)  # triggers are tested on this: " ai" also at the start
    return any(
        any(t in flat for t in triggers) and pattern.search(text) is not None
        for triggers, pattern in _ASSISTANT
    )
