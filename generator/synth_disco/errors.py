"""Domain errors: what went wrong and where, in words a user can act on.

Every error the command line reports on purpose derives from ``SynthDiscoError``; its
``exit_code`` tells the CLI how to exit (2: the input is wrong, 1: something failed while
running). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One problem in a recipe: the file, its 1-based line and column, and the dotted key path.

    ``line`` / ``column`` are ``None`` when the place is not in a file (e.g. a ``--set`` value
    or a key the recipe does not have).
    """

    file: str
    line: int | None
    column: int | None
    key_path: str
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        key = f" {self.key_path}:" if self.key_path else ""
        return f"{where}:{key} {self.message}"


class SynthDiscoError(Exception):
    """Base of every error the CLI reports as a message instead of a traceback."""

    exit_code: int = 1


class RecipeError(SynthDiscoError):
    """A recipe (or a file it references) is invalid; holds every problem found."""

    exit_code = 2

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class SourceError(SynthDiscoError):
    """A persona or post source cannot be read. ``key`` is relative to the source's key path,
    e.g. ``"file"`` or ``"filter"``, so the loader can point at the right line."""

    exit_code = 2

    def __init__(self, message: str, key: str = "") -> None:
        self.message = message
        self.key = key
        super().__init__(message)
