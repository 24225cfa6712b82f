"""Quality flags for generated comments: which published comments are broken, and how.

One idea per module, bottom to top:

- ``text``: the text primitives every rule shares (whitespace collapsing, quote normalising,
  the letter test, words)
- ``template_text``: a Jinja template source as literal text, expressions and statements
- ``comment``: ``CommentCheck``, the comment being judged, and ``Flag``, a flag's record
- the rules, one flag (or two trivial ones) each: ``scaffold`` (``echoed_scaffolding``, and
  ``prompt_scaffolding`` that computes what it compares against), ``speakers``
  (``speaker_prefix``), ``persona_leak``, ``voice`` (``assistant_voice``), ``repetition``,
  ``near_duplicate``
- ``flags``: the registry ``FLAGS``, ``flag_docs`` and ``flag_comment``; its docstring says
  what the caller passes and each flag's rule
- ``headers``: the turn template's comment headers and the stop strings made from them
- ``__main__``: the rough benchmark (``python -m synth_disco.discussion.quality``)

The names below are the public surface other code uses. Configuration: ``FLAG_NAMES`` and
``QualityConfig`` live with the recipe schema (``recipe/quality.py``), which validates a
recipe's ``quality:`` block with them; they are re-exported here.
"""

from synth_disco.discussion.quality.comment import CommentCheck, Flag
from synth_disco.discussion.quality.flags import FLAG_DOCS, FLAGS, flag_comment, flag_docs
from synth_disco.discussion.quality.headers import (
    comment_headers,
    default_stop_strings,
    header_stop_strings,
    strip_dangling_header,
)
from synth_disco.discussion.quality.near_duplicate import shingle_jaccard
from synth_disco.discussion.quality.repetition import compression_ratio, repeated_ngram_ratio
from synth_disco.discussion.quality.scaffold import prompt_scaffolding, scaffold_fragments
from synth_disco.recipe.quality import FLAG_NAMES, QualityConfig

__all__ = [
    "FLAGS",
    "FLAG_DOCS",
    "FLAG_NAMES",
    "CommentCheck",
    "Flag",
    "QualityConfig",
    "comment_headers",
    "compression_ratio",
    "default_stop_strings",
    "flag_comment",
    "flag_docs",
    "header_stop_strings",
    "prompt_scaffolding",
    "repeated_ngram_ratio",
    "scaffold_fragments",
    "shingle_jaccard",
    "strip_dangling_header",
]
