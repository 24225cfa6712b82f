"""Persona pools and posts from inline lists, local files, directories and Hub datasets.

A source yields raw records (a string, or a mapping of columns). ``filter`` keeps some,
``sample`` draws n of them (seeded by the recipe seed and the pool name, optionally weighted),
``columns`` says which source column holds which record field, and the records become
``Persona`` or ``Post`` objects with stable ids (an ``id`` column, the file name, or the
position in the source, never the position after filtering or sampling).

Layouts that load as they are: SynDisco / SDF persona directories (one ``.json`` record per
file with ``username, age, sex, ...``), SDF topic directories (one ``.txt`` post per file),
and SynDisco log entries (``{"name", "text"}``) as seed comments.

Modules, bottom to top:

- ``read``: raw records from files, directories and the Hub (formats, ``RawRecord``, the
  commit a Hub source reads, the local files a source reads)
- ``select``: ``filter`` and ``sample``, and ``read_records``, which reads a source and
  applies them
- ``fields``: what personas and posts read from a record alike (mapped columns, values as
  text, ids)
- ``personas``: records as ``Persona`` (descriptions, handles, ``persona_template``) and
  ``load_personas``
- ``posts``: records as ``Post`` (texts or seed threads) and ``load_posts``

The names below are the public surface; code in synth-disco imports from the modules.
"""

from synth_disco.recipe.sources.fields import as_text
from synth_disco.recipe.sources.personas import describe, handle_for, load_personas, to_persona
from synth_disco.recipe.sources.posts import load_posts, to_post
from synth_disco.recipe.sources.read import RawRecord, hub_commit, is_local_hub, source_files
from synth_disco.recipe.sources.select import read_records, select_indices

__all__ = [
    "RawRecord",
    "as_text",
    "describe",
    "handle_for",
    "hub_commit",
    "is_local_hub",
    "load_personas",
    "load_posts",
    "read_records",
    "select_indices",
    "source_files",
    "to_persona",
    "to_post",
]
