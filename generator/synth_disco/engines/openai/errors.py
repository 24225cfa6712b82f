"""How the ``openai`` engine fails: answers no retry can fix, and retries that ran out.

The first kind raise (a build stops early with one message); the second become failed results
(a build journals a failed turn or label, and ``--retry-failed`` asks again).
"""

from __future__ import annotations

from synth_disco.errors import SynthDiscoError


class EndpointError(SynthDiscoError):
    """The server answered what no retry can fix, or could not be reached when loading.

    ``status`` is the HTTP status (``None`` when the server was not reached); exit code 2
    for answers that mean the recipe or the environment is wrong (auth, model, request), 1
    for a server that is down.
    """

    exit_code = 2

    def __init__(self, message: str, *, status: int | None = None, exit_code: int = 2) -> None:
        super().__init__(message)
        self.status = status
        self.exit_code = exit_code


class ScoreUnsupportedError(EndpointError):
    """The server gives no log-probabilities, so the ``score`` method cannot work with it."""


class ContextUnknownError(EndpointError):
    """The server does not report the model's context length (``max_model_len``)."""


class Exhausted(Exception):
    """A request failed transiently more than ``max_retries`` times; the text says why.

    Never leaves the engine: it becomes a failed result.
    """
