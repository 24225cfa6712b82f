"""A run's finished shards as a Hub-layout dataset folder, with its card.

Modules, bottom to top:

- ``portable``: local paths made portable, and the one leak scan (also used by ``hub.push``)
- ``manifest``: the folder's layout, the manifest, ``AssembleError``
- ``stats``: the statistics the card shows, folded while assembling
- ``tables``: the published tables shaped for analysis (design columns, typed labels and
  persona attributes, one type per column name)
- ``bundle``: what the folder ships so it can be rebuilt (the recipe copy, the files read)
- ``readme``: the one merge of a generated card into an existing README (also used by ``hub``)
- ``figures``: the card's figures, drawn from the statistics
- ``card``: the card's sections, context, rendering and re-rendering (a package, a module a
  section); ``templates/dataset_card.md.j2``
- ``assembly``: the streaming writer and ``assemble``, which ends by rendering the card (a
  package: configs, batches, shards, swap, writers, build)
- ``export``: an assembled folder in other tools' formats (SynDisco's JSON logs)

The names below are the public surface. They are imported on first use, so that ``hub``, which
needs only ``readme`` and ``portable``, does not load pyarrow, ``datasets`` and matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synth_disco.dataset.assembly.build import assemble
    from synth_disco.dataset.card.render import render_card, rerender_card
    from synth_disco.dataset.manifest import AssembleError, read_manifest, used_pools

_PUBLIC = {
    "assemble": "assembly.build",
    "render_card": "card.render",
    "rerender_card": "card.render",
    "AssembleError": "manifest",
    "read_manifest": "manifest",
    "used_pools": "manifest",
}
__all__ = [
    "AssembleError",
    "assemble",
    "read_manifest",
    "render_card",
    "rerender_card",
    "used_pools",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
