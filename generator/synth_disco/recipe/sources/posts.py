"""Raw records as ``Post`` objects, the OPs or seed threads discussions start from, and
``load_posts``.

A post is a text, a mapping ``{text, author?, title?, id?}`` (``body`` or ``content`` stand in
for ``text``), or a seed thread ``{comments: [{author, text}, ...], title?, id?}`` whose first
comment is the OP; a comment without an author is ``OP`` (the first) or ``commenter_N``. SDF
topic directories (one ``.txt`` post per file) load as they are, and so do SynDisco log entries
(``{"name", "text"}``) as seed comments.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synth_disco.errors import SourceError
from synth_disco.recipe.schema import SourceSpec
from synth_disco.recipe.sources.fields import _check_unique, _field, _record_id, as_text
from synth_disco.recipe.sources.read import RawRecord
from synth_disco.recipe.sources.select import read_records
from synth_disco.records import Post, SeedComment

DEFAULT_OP_AUTHOR = "OP"


def _seed_comment(c: Any, i: int, where: str) -> SeedComment:
    if isinstance(c, str):
        return SeedComment(DEFAULT_OP_AUTHOR if i == 0 else f"commenter_{i}", c.strip())
    if isinstance(c, dict):
        text = c.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SourceError(f"{where}: comment {i} has no text", "")
        author = c.get("author", c.get("name"))
        if author in (None, ""):
            author = DEFAULT_OP_AUTHOR if i == 0 else f"commenter_{i}"
        return SeedComment(as_text(author), text.strip())
    raise SourceError(f"{where}: comment {i} must be a text or {{author, text}}", "")


def to_post(r: RawRecord, spec: SourceSpec) -> Post:
    """One raw record as a Post: a text, ``{text, author?, title?, id?}`` or a seed thread
    ``{comments: [{author, text}, ...], title?, id?}`` whose first comment is the OP."""
    if isinstance(r.value, str):
        if not r.value.strip():
            raise SourceError(f"post {r.index} is empty", "")
        pid = _record_id(r, None, spec, "post")
        return Post(id=pid, comments=(SeedComment(DEFAULT_OP_AUTHOR, r.value.strip()),))
    if not isinstance(r.value, dict):
        raise SourceError(
            f"post {r.index} is a {type(r.value).__name__}; use a text, {{text: ...}} "
            "or {comments: [...]}",
            "",
        )
    row = {str(k): v for k, v in r.value.items()}
    pid = _record_id(r, row, spec, "post")
    where = f"post {pid!r}"
    _, title = _field(row, spec, "title")
    _, comments = _field(row, spec, "comments")
    if comments not in (None, ""):
        if isinstance(comments, str):
            try:
                comments = json.loads(comments)  # a CSV cell holding a JSON list
            except json.JSONDecodeError as e:
                raise SourceError(f"{where}: `comments` is not a list", "") from e
        if not isinstance(comments, list) or not comments:
            raise SourceError(f"{where}: `comments` must be a non-empty list", "")
        seeds = tuple(_seed_comment(c, i, where) for i, c in enumerate(comments))
    else:
        _, text = _field(row, spec, "text", "body", "content")
        if text in (None, "") or not as_text(text):
            cols = ", ".join(row)
            raise SourceError(
                f"{where} has no text (columns: {cols}); map one with `columns: {{text: ...}}`",
                "columns" if spec.columns else "",
            )
        _, author = _field(row, spec, "author")
        seeds = (SeedComment(as_text(author) or DEFAULT_OP_AUTHOR, as_text(text)),)
    return Post(id=pid, comments=seeds, title=as_text(title))


def load_posts(spec: SourceSpec, base_dir: Path, *, seed: int, pool: str = "posts") -> list[Post]:
    """The posts (OPs or seed threads) discussions start from."""
    if spec.persona_template:
        raise SourceError(
            "persona_template applies to persona pools, not posts", "persona_template"
        )
    posts = [to_post(r, spec) for r in read_records(spec, base_dir, seed=seed, pool=pool)]
    _check_unique([p.id for p in posts], "posts")
    return posts
