"""The dataset card: README.md with a YAML header the Hub and ``datasets`` read, and a body
rendered from the Jinja template ``templates/dataset_card.md.j2`` of the ``dataset`` package.

The generated body sits between the card markers; re-rendering replaces only that block and the
YAML keys synth-disco writes, so text a person added around it survives (the merge and its rules
are in ``readme.py``). Everything the card says comes from the recipe, the manifest and the
statistics computed at assembly, so ``synth-disco card RUN_DIR`` re-renders it without
re-reading the rows. The card prints the exact text of every prompt template the run rendered
(``prompt_templates``).

Modules, bottom to top:

- the sections, one each: ``header`` (the YAML front matter), ``columns`` (each config's rows
  and columns), ``prompts`` (templates and instructions), ``sources``, ``annotation``,
  ``models``, ``design`` (factor levels and structures), ``quality`` (the flags' rates),
  ``citation``, ``reproduce`` (install and rebuild)
- ``context``: ``card_context``, everything the template shows, from the sections
- ``render``: the Jinja environment, ``render_card`` and ``rerender_card``

The names below are the public surface.
"""

from synth_disco.dataset.card.context import card_context
from synth_disco.dataset.card.header import card_header, size_category
from synth_disco.dataset.card.prompts import prompt_templates
from synth_disco.dataset.card.render import TEMPLATE, render_card, rerender_card, template_dir

__all__ = [
    "TEMPLATE",
    "card_context",
    "card_header",
    "prompt_templates",
    "render_card",
    "rerender_card",
    "size_category",
    "template_dir",
]
