"""``speaker_prefix``: a reply that starts with a speaker label ("alder:", "**alder**:",
"[3] alder:", "User X posted:"); see ``flags``'s docstring for the rule."""

from __future__ import annotations

import functools
import re

from synth_disco.discussion.quality.comment import CommentCheck

_VERB = (
    r"(?:wrote|writes|says|said|posted|posts|replied|replies|responded|responds|"
    r"commented|comments|asked|asks|added|adds)"
)
_GENERIC = r"(?:user|speaker|participant|commenter|poster|member|person)"
_DECOR = r"[\s>#*_\"'`\u201c\u201d]*"
_NUMBER = r"(?:(?:\[\d+\]|\(\d+\)|#\d+|\d+[.)])\s*)?"
_OPEN = r"(?:\*\*|__|\[|\()?"
_CLOSE = r"(?:\*\*|__|\]|\))?"
_AFTER = rf"\s*(?:\([^)\n]{{0,40}}\))?\s*(?:{_VERB})?\s*(?:\*\*|__)?\s*:"


@functools.lru_cache(maxsize=1024)
def _prefix_pattern(names: tuple[str, ...]) -> re.Pattern[str]:
    alts = [
        # A generic label with a verb: any handle ("User GreenTea posted:").
        rf"{_GENERIC}\s+[\w.-]{{1,40}}{_CLOSE}\s*(?:\([^)\n]{{0,40}}\))?\s*{_VERB}"
        r"\s*(?:\*\*|__)?\s*:",
        # A generic label without one: a handle-like id ("User 12:", "Speaker B:").
        rf"{_GENERIC}(?:\s*#?\d+|\s+[a-z]|\s+[\w.-]*[\d_.][\w.-]*){_CLOSE}{_AFTER}",
        rf"(?:moderator|mod){_CLOSE}{_AFTER}",
    ]
    if names:
        alt = "|".join(re.escape(n) for n in names)
        alts.insert(0, rf"(?:{_GENERIC}\s+)?(?:{alt}){_CLOSE}{_AFTER}")
    return re.compile(rf"^{_DECOR}{_NUMBER}{_OPEN}\s*(?:{'|'.join(alts)})", re.IGNORECASE)


def _speaker_prefix(c: CommentCheck) -> bool:
    names = tuple(sorted({n for n in c.participant_names if n}, key=lambda n: (-len(n), n)))
    return _prefix_pattern(names).match(c.text) is not None
