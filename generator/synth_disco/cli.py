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
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from synth_disco import __version__
from synth_disco.errors import RecipeError, SynthDiscoError

if TYPE_CHECKING:  # importlib.resources.abc is Python 3.11+; the name is only an annotation
    from importlib.resources.abc import Traversable

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
    from synth_disco.recipe.load import load_recipe

    if recipe.is_dir():
        recipe = recipe / "recipe.yaml"
    return load_recipe(recipe, overrides)


# The order a study goes through, which ``--help`` follows, with one example each.
WORKFLOW = {
    "init": "synth-disco init my-study",
    "validate": "synth-disco validate my-study/recipe.yaml",
    "plan": "synth-disco plan my-study/recipe.yaml",
    "build": "synth-disco build my-study/recipe.yaml --out runs/my-study",
    "status": "synth-disco status runs/my-study",
    "show": "synth-disco show runs/my-study --discussion ID",
    "annotate": "synth-disco annotate runs/other recipe.yaml",
    "card": "synth-disco card runs/my-study",
    "push": "synth-disco push runs/my-study --repo ORG/NAME",
    "schema": "synth-disco schema > recipe.schema.json",
}


class WorkflowGroup(click.Group):
    """Lists commands in workflow order (not alphabetically), each with an example."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        return [n for n in WORKFLOW if n in names] + [n for n in names if n not in WORKFLOW]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is None or cmd.hidden:
                continue
            rows.append((name, cmd.get_short_help_str(limit=60)))
            if name in WORKFLOW:
                rows.append(("", f"e.g. {WORKFLOW[name]}"))
        with formatter.section("Commands, in the order a study uses them"):
            formatter.write_dl(rows)


@click.group(cls=WorkflowGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    run = f"runs/{name}"
    click.echo(f"created {directory.as_posix()}/ with {len(files)} files. Next:")
    for step in (
        f"synth-disco validate {recipe}      # every problem, with file:line",
        f"synth-disco plan {recipe}          # the design and the work it takes",
        f"synth-disco build {recipe} --out {run}   # resumes where it stopped",
        f"synth-disco show {run}             # the discussions; --discussion ID for one",
        f"synth-disco push {run} --repo ORG/NAME   # one commit, tagged v<version>",
    ):
        click.echo(f"  {step}")


# ---------------------------------------------------------------------------------------------
# validate, plan


@main.command()
@recipe_argument
@cli_errors()
def validate(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE and every file it uses; list every problem with its line."""
    from synth_disco.design.plan import plan as make_plan
    from synth_disco.recipe.preflight import preflight

    loaded = load(recipe, overrides)
    p = make_plan(loaded)
    checks = preflight(loaded, p.n_shards)
    for w in checks.warnings:
        click.echo(f"warning: {w}", err=True)
    if checks.errors:
        raise RecipeError(checks.errors)
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
    from synth_disco.design.plan import plan as make_plan
    from synth_disco.design.plan import write_plan

    loaded = load(recipe, overrides)
    p = make_plan(loaded)
    r = loaded.recipe
    click.echo(f"recipe:                {r.name} {r.version} ({loaded.display_path})")
    for line in p.summary().lines():
        click.echo(line)
    if output is not None:
        write_plan(p, output)
        click.echo(f"wrote {output.as_posix()} ({p.n_discussions:,} rows)")


# ---------------------------------------------------------------------------------------------
# build, status, show


@main.command()
@recipe_argument
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory (default: runs/<name>-<version>).",
)
@click.option(
    "--stage",
    type=click.Choice(["all", "discuss", "annotate", "assemble"]),
    default="all",
    show_default=True,
    help="Run only one step (the ones before it must be done).",
)
@click.option("--retry-failed", is_flag=True, help="Run failed discussions again.")
@click.option("--push", "do_push", is_flag=True, help="Push the dataset to the Hub when done.")
@click.option("--repo", help="Hub dataset repo for --push (default: output.hub.repo).")
@click.option("--create-pr", is_flag=True, help="With --push: open a pull request instead.")
@click.option("-v", "--verbose", is_flag=True, help="Print debug detail and library warnings too.")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and the final summary.")
@cli_errors()
def build(
    recipe: Path,
    overrides: tuple[str, ...],
    out: Path | None,
    stage: str,
    retry_failed: bool,
    do_push: bool,
    repo: str | None,
    create_pr: bool,
    verbose: bool,
    quiet: bool,
) -> None:
    """Plan, generate, annotate and assemble RECIPE into a dataset; resumes where it stopped."""
    # Say something at once: importing the engines and loading a model take seconds.
    if not quiet:
        click.echo(f"synth-disco {__version__}: building {recipe.as_posix()}", err=True)
    from synth_disco.pipeline.build import build as run_build

    if recipe.is_dir():
        recipe = recipe / "recipe.yaml"
    report = run_build(
        recipe,
        list(overrides),
        out=out,
        stage=stage,  # type: ignore[arg-type]
        retry_failed=retry_failed,
        verbose=verbose,
        progress="quiet" if quiet else "lines" if verbose else "auto",
    )
    from synth_disco.runinfo import build_summary

    if report.nothing_to_do:
        click.echo(f"nothing to do: {report.run_dir.as_posix()} is complete")
    for line in build_summary(report.run_dir, report.seconds, report.dataset_dir):
        click.echo(line)
    if do_push and report.dataset_dir is not None:
        _push(report.run_dir, repo, private=None, create_pr=create_pr, overwrite_card=False)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@cli_errors()
def status(run_dir: Path) -> None:
    """Progress of a run: shards, discussions, comments, tokens, ETA (also while it runs)."""
    from synth_disco.runinfo import run_status

    try:
        click.echo(run_status(run_dir).render())
    except FileNotFoundError as e:
        click.echo(f"error: {e}", err=True)
        raise click.exceptions.Exit(2) from None


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--discussion", "discussion_id", help="Print this discussion as a thread.")
@click.option("--limit", default=20, show_default=True, help="How many discussions to list.")
@cli_errors()
def show(run_dir: Path, discussion_id: str | None, limit: int) -> None:
    """List a run's discussions, or print one as a thread."""
    from synth_disco.runinfo import list_discussions, render_thread

    if discussion_id is None:
        try:
            rows = list_discussions(run_dir, limit)
        except FileNotFoundError as e:
            click.echo(f"error: {e}", err=True)
            raise click.exceptions.Exit(2) from None
        if not rows:
            click.echo("no finished discussions yet")
        for r in rows:
            levels = " ".join(f"{k}={v}" for k, v in r["levels"].items())
            title = (r.get("title") or r.get("post_id") or "")[:50]
            click.echo(
                f"{r['discussion_id']}  {r['status']:<6} {r['n_comments']:>3} comments  "
                f"{levels}  | {title}"
            )
        return
    try:
        click.echo(render_thread(run_dir, discussion_id), nl=False)
    except KeyError as e:
        click.echo(f"error: {e.args[0]}", err=True)
        raise click.exceptions.Exit(2) from None


# ---------------------------------------------------------------------------------------------
# annotate


@main.command()
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@recipe_argument
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory for the labels (default: DATA itself for a run directory, "
    "else DATA-annotated).",
)
@cli_errors()
def annotate(data: Path, recipe: Path, overrides: tuple[str, ...], out: Path | None) -> None:
    """Label the comments in DATA (a run directory, a dataset folder, or SynDisco JSON files)
    with the annotation section of RECIPE."""
    from synth_disco.annotation.existing import annotate_existing
    from synth_disco.pipeline.build import stop_on_signals

    loaded = load(recipe, overrides)
    with stop_on_signals() as should_stop:
        run_dir = annotate_existing(data, loaded, out, should_stop=should_stop)
    click.echo(f"annotations: {run_dir.as_posix()}")


# ---------------------------------------------------------------------------------------------
# rebuild, export


@main.command()
@click.argument("source")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run directory for the rebuilt run (a Hub SOURCE is downloaded into OUT/source).",
)
@click.option("--revision", help="For a Hub SOURCE: the tag, branch or commit (or SOURCE@TAG).")
@click.option("-v", "--verbose", is_flag=True, help="Print debug detail too.")
@cli_errors()
def rebuild(source: str, out: Path, revision: str | None, verbose: bool) -> None:
    """Re-create the run of a dataset from the dataset alone, and compare its data files.

    SOURCE is a dataset folder, or a Hub dataset (ORG/NAME, ORG/NAME@v1.0.0). Its recipe is not
    trusted: it may read only files inside the dataset folder."""
    from synth_disco.pipeline.rebuild import rebuild as run_rebuild

    folder = Path(source)
    if not folder.is_dir():
        from synth_disco.hub.pull import pull_folder

        repo, _, tag = source.partition("@")
        folder = pull_folder(repo, revision or tag or None, out / "source")
        click.echo(f"downloaded {repo}{'@' + (revision or tag) if revision or tag else ''}")
    report = run_rebuild(folder, out, verbose=verbose)
    click.echo(f"fingerprint: {report.fingerprint[:12]} (as recorded)")
    n = len(report.identical) + len(report.differing) + len(report.missing)
    click.echo(f"data files: {len(report.identical)} of {n} identical to the shipped ones")
    for label, paths in (
        ("differs", report.differing),
        ("not made", report.missing),
        ("new", report.extra),
    ):
        for rel in paths:
            click.echo(f"  {label}: {rel}")
    if report.build.dataset_dir is not None:
        click.echo(f"dataset: {report.build.dataset_dir.as_posix()}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["syndisco"]), required=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the files (default: RUN_DIR/export-FORMAT).",
)
@cli_errors()
def export(run_dir: Path, fmt: str, out: Path | None) -> None:
    """Write RUN_DIR's dataset in another tool's format (syndisco: SynDisco's JSON logs)."""
    from synth_disco.dataset.export import export as run_export

    folder, files = run_export(run_dir, fmt, out)
    click.echo(f"wrote {len(files)} files to {folder.as_posix()}")


# ---------------------------------------------------------------------------------------------
# card, push


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", help="Repo id used in the card's loading examples.")
@cli_errors()
def card(run_dir: Path, repo: str | None) -> None:
    """Re-render the dataset card (README.md and figures) of an assembled run."""
    from synth_disco.dataset.card.render import rerender_card

    path = rerender_card(run_dir, repo=repo)
    click.echo(f"card: {path.as_posix()}")


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repo", help="Hub dataset repo (default: output.hub.repo of the recipe).")
@click.option("--private/--public", default=None, help="Visibility when creating the repo.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing.")
@click.option(
    "--overwrite-card",
    is_flag=True,
    help="Replace the README on the Hub instead of merging the generated card into it.",
)
@cli_errors()
def push(
    run_dir: Path, repo: str | None, private: bool | None, create_pr: bool, overwrite_card: bool
) -> None:
    """Publish RUN_DIR's dataset to the Hub in one commit tagged v<version>."""
    _push(run_dir, repo, private=private, create_pr=create_pr, overwrite_card=overwrite_card)


def _push(
    run_dir: Path,
    repo: str | None,
    *,
    private: bool | None,
    create_pr: bool,
    overwrite_card: bool,
) -> None:
    import yaml

    from synth_disco.errors import SynthDiscoError
    from synth_disco.hub.push import push_folder

    dataset = run_dir / "dataset"
    recipe_file = run_dir / "recipe.yaml"
    if not (dataset / "README.md").exists() or not recipe_file.exists():
        raise SynthDiscoError(f"{run_dir.as_posix()} has no assembled dataset: build it first")
    raw = yaml.safe_load(recipe_file.read_text(encoding="utf-8"))
    hub = (raw.get("output") or {}).get("hub") or {}
    repo = repo or hub.get("repo")
    if not repo:
        raise SynthDiscoError("no repo given: pass --repo ORG/NAME or set output.hub.repo")
    result = push_folder(
        dataset,
        repo,
        raw["version"],
        private=bool(hub.get("private")) if private is None else private,
        create_pr=create_pr,
        overwrite_card=overwrite_card,
    )
    click.echo(result.message or f"{result.status}: {result.url}")


# ---------------------------------------------------------------------------------------------
# schema


@main.command()
def schema() -> None:
    """Print the recipe's JSON Schema (for editor completion and checks)."""
    import json

    from synth_disco.recipe.schema import recipe_json_schema

    click.echo(json.dumps(recipe_json_schema(), indent=2))
