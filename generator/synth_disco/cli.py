"""The ``synth-disco`` command line.

Each command is a thin layer over the library: load the recipe (``recipe_argument`` gives
every command the same RECIPE argument and ``--set`` overrides), do the work, print a short
report. ``cli_errors`` turns domain errors into a message on stderr and an exit code
(2: the input is wrong, 1: something failed while running), never a traceback.

To add a command: decorate it with ``@main.command()``, ``@recipe_argument`` if it takes a
recipe, and ``@cli_errors()``, then call ``load(recipe, overrides)``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, TypeVar

import click

from synth_disco import __version__
from synth_disco.errors import RecipeError, SynthDiscoError

F = TypeVar("F", bound=Callable[..., Any])

SCAFFOLD = "scaffold"


@contextmanager
def cli_errors() -> Iterator[None]:
    """Report ``SynthDiscoError``s as messages with their exit code (also a decorator)."""
    try:
        yield
    except RecipeError as e:
        for p in e.problems:
            click.echo(str(p), err=True)
        n = len(e.problems)
        click.echo(f"error: {n} problem{'s' if n != 1 else ''} found", err=True)
        raise click.exceptions.Exit(e.exit_code) from None
    except SynthDiscoError as e:
        click.echo(f"error: {e}", err=True)
        raise click.exceptions.Exit(e.exit_code) from None
    except OSError as e:  # a full disk, a permission: the environment, not a bug
        where = f": {Path(e.filename).as_posix()}" if e.filename else ""
        click.echo(f"error: {e.strerror or e}{where}", err=True)
        raise click.exceptions.Exit(1) from None


def recipe_argument(f: F) -> F:
    """Add the RECIPE argument and repeated ``--set KEY=VALUE`` overrides to a command."""
    f = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a recipe key before validation (dotted path, YAML value); repeatable, "
        "e.g. --set replicates=5 --set discussion.turns=8",
    )(f)
    return click.argument("recipe", type=click.Path(dir_okay=True, path_type=Path))(f)


def load(recipe: Path, overrides: Sequence[str] = ()) -> Any:
    """Load and validate a recipe (raises RecipeError); returns a ``LoadedRecipe``.
    A directory stands for the ``recipe.yaml`` in it."""
    from synth_disco.recipe_load import load_recipe

    if recipe.is_dir():
        recipe = recipe / "recipe.yaml"
    return load_recipe(recipe, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="synth-disco")
def main() -> None:
    """Turn a YAML recipe into a dataset of synthetic online discussions."""


# ---------------------------------------------------------------------------------------------
# init


def _scaffold_files(root: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        rel = f"{prefix}{entry.name}"
        if entry.is_dir():
            yield from _scaffold_files(entry, rel + "/")
        else:
            yield rel, entry


def _study_name(directory: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", directory.resolve().name).strip("-.")
    return name[:96] or "my-study"


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@cli_errors()
def init(directory: Path, force: bool) -> None:
    """Create DIRECTORY with a starter recipe, personas and posts (runs offline as is)."""
    files = list(_scaffold_files(resources.files("synth_disco").joinpath(SCAFFOLD)))
    existing = [rel for rel, _ in files if (directory / rel).exists()]
    if existing and not force:
        click.echo(
            f"error: {directory.as_posix()}/{existing[0]} already exists "
            "(use --force to overwrite)",
            err=True,
        )
        raise click.exceptions.Exit(1)
    name = _study_name(directory)
    for rel, entry in files:
        target = directory / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        data = entry.read_bytes()
        if rel == "recipe.yaml":
            text = re.sub(r"(?m)^name: .*$", f"name: {name}", data.decode(), count=1)
            data = text.encode()
        target.write_bytes(data)
    recipe = (directory / "recipe.yaml").as_posix()
    click.echo(f"created {directory.as_posix()}/ with {len(files)} files. Next:")
    click.echo(f"  synth-disco validate {recipe}")
    click.echo(f"  synth-disco plan {recipe}")


# ---------------------------------------------------------------------------------------------
# validate, plan


@main.command()
@recipe_argument
@cli_errors()
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE and every file it uses; list every problem with its line."""
    from synth_disco.design import plan as make_plan

    loaded = load(recipe, overrides)
    p = make_plan(loaded)
    click.echo(
        f"{loaded.display_path}: ok ({p.n_cells:,} cell{'s' if p.n_cells != 1 else ''}, "
        f"{p.n_discussions:,} discussions, fingerprint {loaded.short_fingerprint})"
    )


@main.command()
@recipe_argument
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the plan, one row per discussion (parquet).",
)
@cli_errors()
def plan(recipe: Path, overrides: tuple[str, ...], output: Path | None) -> None:
    """Show the design of RECIPE: cells, discussions and the work they take."""
    from synth_disco.design import plan as make_plan
    from synth_disco.design import write_plan

    loaded = load(recipe, overrides)
    p = make_plan(loaded)
    r = loaded.recipe
    click.echo(f"recipe:                {r.name} {r.version} ({loaded.display_path})")
    for line in p.summary().lines():
        click.echo(line)
    if output is not None:
        write_plan(p, output)
        click.echo(f"wrote {output.as_posix()} ({p.n_discussions:,} rows)")
