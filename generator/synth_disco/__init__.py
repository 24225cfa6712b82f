"""synth-disco: declarative recipes to versioned datasets of synthetic discussions.

The public Python API (see :mod:`synth_disco.api`)::

    import synth_disco as sd
    data = sd.build("recipes/smoke.yaml", out="runs/smoke")   # a datasets.DatasetDict

``build``, ``load``, ``load_engine`` and ``Recipe`` are imported on first use, so importing the
package (as the command line does) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from synth_disco.api import Engine, Recipe, build, load, load_engine
    from synth_disco.errors import RecipeError, SynthDiscoError

__all__ = [
    "Engine",
    "Recipe",
    "RecipeError",
    "SynthDiscoError",
    "__version__",
    "build",
    "load",
    "load_engine",
]


def __getattr__(name: str) -> Any:
    if name in ("Engine", "Recipe", "build", "load", "load_engine"):
        from synth_disco import api

        return getattr(api, name)
    if name in ("RecipeError", "SynthDiscoError"):
        from synth_disco import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'synth_disco' has no attribute {name!r}")
