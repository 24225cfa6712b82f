"""Errors raised by model engines."""

from __future__ import annotations


class EngineLoadError(RuntimeError):
    """A model or tokenizer could not be loaded; the message names the model and the fix."""
