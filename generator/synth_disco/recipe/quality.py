"""What a recipe's ``quality:`` block configures: the flag names and their thresholds.

The rules themselves (what each flag means and how it is computed) are in
``synth_disco.discussion.quality``; this module holds only the configuration, so that the
recipe schema (a layer below the discussion code) can validate a recipe with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

FLAG_NAMES: tuple[str, ...] = (
    "truncated",
    "empty",
    "echoed_scaffolding",
    "speaker_prefix",
    "persona_leak",
    "assistant_voice",
    "repetition",
    "near_duplicate",
)


@dataclass(frozen=True)
class QualityConfig:
    """Which flags to compute and their thresholds (``discussion/quality/`` has each rule)."""

    flags: tuple[str, ...] = FLAG_NAMES  # the flags to compute (any order; a list is fine)
    scaffold_min_chars: int = 8  # shorter fragments ("wrote:", "You are") are not matched
    scaffold_anywhere_chars: int = 30  # fragments this long count anywhere in a reply
    persona_min_values: int = 2  # persona values a reply must contain to leak
    persona_self_description: bool = True  # "As a <value>" alone is a leak
    repetition_ngram: int = 3  # word n-grams measured for loops
    repetition_min_words: int = 20  # shorter replies are not measured by n-grams
    repetition_max_ratio: float = 0.5  # share of repeated n-grams at which a reply loops
    compression_min_chars: int = 200  # shorter replies are not measured by compression
    compression_min_ratio: float = 0.25  # compression ratio at or under which a reply loops
    near_duplicate_threshold: float = 0.7  # Jaccard similarity at which a reply is a copy
    near_duplicate_ngram: int = 2  # word n-grams compared
    near_duplicate_window: int = 50  # how many of the latest earlier comments are compared
    near_duplicate_min_chars: int = 20  # shorter texts are neither flagged nor compared

    def __post_init__(self) -> None:
        if isinstance(self.flags, str):
            raise ValueError(f"flags must be a list of flag names, got the string {self.flags!r}")
        object.__setattr__(self, "flags", tuple(self.flags))  # a list from a recipe, too
        unknown = [f for f in self.flags if f not in FLAG_NAMES]
        if unknown:
            raise ValueError(
                f"unknown quality flag(s) {', '.join(map(repr, unknown))}; "
                f"known: {', '.join(FLAG_NAMES)}"
            )
        if len(set(self.flags)) != len(self.flags):
            raise ValueError("quality flags are listed twice")
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith(("_chars", "_words", "_window", "_values")) and v < 1:
                raise ValueError(f"{f.name} must be at least 1, got {v}")
        if self.repetition_ngram < 1 or self.near_duplicate_ngram < 1:
            raise ValueError("n-gram sizes must be at least 1")
        for name in ("repetition_max_ratio", "near_duplicate_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.compression_min_ratio < 1.0:
            raise ValueError(
                f"compression_min_ratio must be in [0, 1), got {self.compression_min_ratio}"
            )

    @property
    def enabled(self) -> tuple[str, ...]:
        """The flags to compute, in registry order."""
        return tuple(n for n in FLAG_NAMES if n in self.flags)


def threshold_names() -> tuple[str, ...]:
    """The thresholds a recipe may set under ``quality.thresholds`` (every field but ``flags``)."""
    return tuple(f.name for f in fields(QualityConfig) if f.name != "flags")
