"""The card's models table, cell by cell: the model id the engine reported, the dtype
loaded, the decoding parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _reported(m: Mapping[str, Any]) -> str:
    """The model id(s) the engine reported, when they differ from the recipe's."""
    reported = m.get("reported_id")
    ids = [reported] if isinstance(reported, str) else list(reported or [])
    return ", ".join(f"`{r}`" for r in ids if r != m["id"])


def _dtype(m: Mapping[str, Any]) -> str:
    """The dtype asked for, and the one loaded where they differ (``auto`` -> float32)."""
    loaded = sorted({str(e["dtype"]) for e in m.get("loaded") or [] if e.get("dtype")})
    if not loaded or loaded == [m["dtype"]]:
        return m["dtype"]
    return f"{m['dtype']} (loaded {', '.join(loaded)})"


def _generation(g: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in g.items() if v not in ([], None))
