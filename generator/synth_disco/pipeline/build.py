"""The build executor: plan -> discuss -> annotate -> assemble (-> push), resumable.

Steps are separate modules that do one thing each; this module only decides which step runs,
in which process, on which shards, and what happens when the run directory already exists.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from synth_disco import __version__
from synth_disco.annotation.aggregate import write_aggregates
from synth_disco.annotation.prompts import PromptBuilder, text_value
from synth_disco.annotation.stage import default_generate_params, run_annotation_stage
from synth_disco.dataset.assembly.build import assemble
from synth_disco.dataset.bundle import make_bundle
from synth_disco.dataset.manifest import read_manifest, used_pools
from synth_disco.dataset.stats import quality_summary
from synth_disco.design.plan import plan as make_plan
from synth_disco.design.plan import write_plan
from synth_disco.discussion.stage import DiscussionRunner
from synth_disco.engines.base import LOAD_FIELDS, Engine, EngineConfig
from synth_disco.engines.registry import load_engine
from synth_disco.engines.sampling import sampling_params_from
from synth_disco.errors import RecipeError, SynthDiscoError
from synth_disco.faults import crash_point
from synth_disco.pipeline.world import World, detect_world
from synth_disco.progress import Progress
from synth_disco.recipe.load import LoadedRecipe, load_recipe
from synth_disco.recipe.preflight import preflight
from synth_disco.recipe.schema import ModelConfig
from synth_disco.store.run_dir import RunStore, StoreError
from synth_disco.store.shards import StageResult

log = logging.getLogger("synth_disco")

Stage = Literal["all", "discuss", "annotate", "assemble"]


class RunChangedError(SynthDiscoError):
    """The recipe differs from the one the run directory was started with."""

    exit_code = 2


class TooManyFailures(SynthDiscoError):
    """More discussions failed than ``output.max_failed_fraction`` allows."""


class Interrupted(SynthDiscoError):
    """Stopped by SIGINT/SIGTERM at a step boundary; the run can be resumed."""

    exit_code = 130


@dataclass
class BuildReport:
    run_dir: Path
    dataset_dir: Path | None = None
    discuss: StageResult | None = None
    annotate: StageResult | None = None
    nothing_to_do: bool = False
    extended_from: int | None = None
    seconds: float = 0.0  # wall time of this call


def default_run_dir(loaded: LoadedRecipe) -> Path:
    return Path("runs") / f"{loaded.recipe.name}-{loaded.recipe.version}"


# -- logging and signals -----------------------------------------------------------------------
@contextmanager
def run_logging(
    store: RunStore, world: World, verbose: bool = False, *, quiet: bool = False
) -> Iterator[None]:
    """Log to the console and to ``logs/run.log`` while a build runs; restore the logger after
    (a library call must not leave handlers behind in the caller's process)."""
    store.log_path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger("synth_disco")
    saved = (logger.level, logger.propagate)
    file_handler = logging.FileHandler(store.log_path, encoding="utf-8")
    file_handler.setLevel(logging.DEBUG)
    rank = f"[rank {world.rank}] " if world.size > 1 else ""
    file_handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {rank}%(message)s"))
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter(f"{rank}%(message)s"))
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for h in (file_handler, console):
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in (file_handler, console):
            logger.removeHandler(h)
            h.close()
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


@contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Silence transformers' and the Hub's progress bars and warnings while a build runs,
    unless ``verbose``; restore them after (they are process-wide settings)."""
    if verbose:
        yield
        return
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tf_logging

    verbosity = tf_logging.get_verbosity()
    bars = tf_logging.is_progress_bar_enabled()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    tf_logging.set_verbosity_error()
    tf_logging.disable_progress_bar()
    hub_utils.disable_progress_bars()
    # Bars that libraries draw with plain tqdm (e.g. GGUF de-quantizing): off by default;
    # synth-disco's own bar asks for itself explicitly (progress.py). tqdm reads TQDM_DISABLE
    # once, when it is imported, so in this process the default itself is switched (and
    # TQDM_DISABLE kept for child processes).
    import tqdm.std

    saved_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    saved_init = tqdm.std.tqdm.__dict__["__init__"]
    tqdm.std.tqdm.__init__ = functools.partialmethod(tqdm.std.tqdm.__init__, disable=True)
    try:
        with warnings.catch_warnings():
            for module in ("transformers", "torch", "accelerate", "huggingface_hub"):
                warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
            # Warnings raised from our calls into them carry our module's name: match on text.
            warnings.filterwarnings("ignore", message=r".*deprecated")
            yield
    finally:
        tqdm.std.tqdm.__init__ = saved_init
        if saved_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = saved_tqdm
        tf_logging.set_verbosity(verbosity)
        if bars:
            tf_logging.enable_progress_bar()
        if hub_bars:
            hub_utils.enable_progress_bars()


@contextmanager
def stop_on_signals() -> Iterator[Callable[[], bool]]:
    """First SIGINT/SIGTERM asks for a stop at the next step boundary; a second one aborts."""
    requested = {"n": 0}

    def handler(signum, frame):
        requested["n"] += 1
        if requested["n"] > 1:
            raise KeyboardInterrupt
        log.warning("stopping after the current step (press Ctrl-C again to abort now)")

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        # signal() raises ValueError outside the main thread (e.g. in a test's thread).
        with contextlib.suppress(ValueError):
            previous[sig] = signal.signal(sig, handler)
    try:
        yield lambda: requested["n"] > 0
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


# -- engines ----------------------------------------------------------------------------------
def load_model(cfg: ModelConfig) -> Engine:
    """The engine for a recipe's model config (its decoding settings travel with requests)."""
    return load_engine(EngineConfig.from_mapping(cfg.model_dump()))


class EngineCache:
    """One engine per distinct set of weights, loaded on first use, shared by all stages.

    ``close_engines=False`` leaves the engines open at the end: a caller that passed its own
    engine (a notebook that keeps a model loaded across builds) closes it itself. With a
    ``store``, what each engine reports about itself (``engine_info``: the model id a server
    reported, the dtype loaded, ...) is recorded in the run directory for the card.
    """

    def __init__(
        self,
        loader: Callable[[ModelConfig], Engine] = load_model,
        store: RunStore | None = None,
        *,
        close_engines: bool = True,
    ):
        self._loader = loader
        self._store = store
        self._close = close_engines
        self._engines: dict[str, Engine] = {}

    def __call__(self, cfg: ModelConfig) -> Engine:
        key = cfg.model_dump_json(include=LOAD_FIELDS)
        if key not in self._engines:
            log.info("loading model %s (%s engine)", cfg.model, cfg.engine)
            engine = self._engines[key] = self._loader(cfg)
            info = getattr(engine, "engine_info", None)
            if self._store is not None and callable(info):
                self._store.record_engine({**info(), "engine": cfg.engine, "model": cfg.model})
        return self._engines[key]

    def close(self) -> None:
        if self._close:
            for engine in self._engines.values():
                engine.close()
        self._engines.clear()


# -- the run directory -------------------------------------------------------------------------
def open_run(
    loaded: LoadedRecipe,
    store: RunStore,
    overrides: list[str],
    world: World,
) -> int | None:
    """Create the run directory or check that it belongs to this recipe.

    Returns the earlier replicate count when the run is being extended, else None.
    """
    recipe = loaded.recipe
    info = store.read_run()
    extended_from = None
    if info is not None and info["fingerprint"] != loaded.fingerprint:
        old = int(info.get("replicates", 0))
        # Raising `replicates` (and bumping `version` to release it) keeps every earlier
        # discussion; any other change would mix two experiments in one run.
        earlier = [*overrides, f"replicates={old}", f"version={info['version']}"]
        same_but_replicates = (
            recipe.replicates >= old and loaded.reload(earlier).fingerprint == info["fingerprint"]
        )
        if not same_but_replicates:
            raise RunChangedError(
                f"{store.root.name}: the recipe changed since this run started "
                f"(fingerprint {info['fingerprint'][:12]} -> {loaded.fingerprint[:12]}). "
                "Start a new run with another --out directory (or bump `version`), or, to add "
                "discussions to this run, change only `replicates` (raise it) and `version`."
            )
        extended_from = old
    if world.is_main and (info is None or extended_from is not None):
        history = (info or {}).get("history", [])
        if info is not None:
            history.append({"fingerprint": info["fingerprint"], "replicates": info["replicates"]})
        store.write_run(
            {
                "name": recipe.name,
                "version": recipe.version,
                "fingerprint": loaded.fingerprint,
                "replicates": recipe.replicates,
                "synth_disco": __version__,
                "created": (info or {}).get(
                    "created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                ),
                "history": history,
            }
        )
        store.write_text(
            store.recipe_path,
            yaml.safe_dump(loaded.raw, sort_keys=False, allow_unicode=True, width=100),
        )
    return extended_from


def build(
    recipe: Path | LoadedRecipe,
    overrides: Sequence[str] = (),
    *,
    out: Path | None = None,
    stage: Stage = "all",
    retry_failed: bool = False,
    engine_loader: Callable[[ModelConfig], Engine] = load_model,
    engine: Engine | None = None,
    verbose: bool = False,
    progress: str = "auto",
    confine: Path | None = None,
) -> BuildReport:
    """Run (or resume) every step of a recipe into ``out``; see the module docstring.

    ``recipe`` is a recipe file (loaded with ``overrides``) or an already loaded recipe (its
    own overrides apply). ``engine`` serves every model of the recipe and stays open after
    the build; without it, engines are loaded with ``engine_loader`` and closed at the end.
    ``progress`` is ``auto`` (a bar on a terminal, lines otherwise), ``bar``, ``lines`` or
    ``quiet`` (warnings and the end only). ``confine``: the recipe may read files inside this
    folder only (``load_recipe``): how ``rebuild`` runs the recipe a dataset ships.
    """
    started = time.monotonic()
    if isinstance(recipe, LoadedRecipe):
        loaded, overrides = recipe, list(recipe.overrides)
    else:
        overrides = list(overrides)
        loaded = load_recipe(recipe, overrides, confine=confine)
    recipe_path = loaded.path
    checks = preflight(loaded)
    if checks.errors and engine is None and engine_loader is load_model:
        raise RecipeError(checks.errors)  # before any run directory is touched
    recipe_cfg = loaded.recipe
    store = RunStore(out or default_run_dir(loaded))
    store.check_writable()
    world = detect_world()
    with run_logging(store, world, verbose, quiet=progress == "quiet"), quiet_libraries(verbose):
        extended_from = open_run(loaded, store, overrides, world)
        report = BuildReport(store.root, extended_from=extended_from)
        if extended_from is not None:
            log.info(
                "extending the run from %d to %d replicates", extended_from, recipe_cfg.replicates
            )

        plan = make_plan(loaded)
        if world.is_main:
            write_plan(plan, store.plan_path)
        world.barrier()
        crash_point("planned")
        mine = [s for s in range(plan.n_shards) if s % world.size == world.rank]
        log.info(
            "%s %s: %d discussions in %d shards (%d for this process), fingerprint %s",
            recipe_cfg.name,
            recipe_cfg.version,
            plan.n_discussions,
            plan.n_shards,
            len(mine),
            loaded.fingerprint[:12],
        )

        if stage == "all" and not retry_failed and is_complete(loaded, store, plan.n_shards):
            log.info("nothing to do: %s is complete (dataset in %s)", store.root, store.dataset_dir)
            report.nothing_to_do = True
            report.dataset_dir = store.dataset_dir
            report.seconds = time.monotonic() - started
            return report

        engines = (
            EngineCache(lambda cfg: engine, store, close_engines=False)
            if engine is not None
            else EngineCache(engine_loader, store)
        )
        try:
            with stop_on_signals() as should_stop:
                if stage in ("all", "discuss"):
                    runner = DiscussionRunner(
                        store,
                        plan.specs_for_shard,
                        engines,
                        list(plan.factors),
                        max_concurrent=recipe_cfg.run.max_concurrent,
                        retry_failed=retry_failed,
                        should_stop=should_stop,
                        progress=stage_progress("discuss", "calls", progress, store, world),
                    )
                    report.discuss = runner.run(mine)
                    if report.discuss.stopped:
                        raise Interrupted(resume_hint(recipe_path, overrides, store))
                    world.barrier()
                    crash_point("between.stages")
                if stage in ("all", "annotate") and recipe_cfg.annotation is not None:
                    require_discussions(
                        store, mine, "run the discussions first (`--stage discuss`, or no --stage)"
                    )
                    report.annotate = run_annotation(
                        loaded,
                        store,
                        mine,
                        engines,
                        should_stop,
                        retry_failed,
                        stage_progress("annotate", "labels", progress, store, world),
                    )
                    if report.annotate.stopped:
                        raise Interrupted(resume_hint(recipe_path, overrides, store))
                    world.barrier()
                    if world.is_main:
                        write_aggregates(store, recipe_cfg.annotation, recipe_cfg.seed)
        finally:
            engines.close()

        if not world.is_main:
            report.seconds = time.monotonic() - started
            return report
        require_discussions(
            store,
            range(plan.n_shards),
            "another process may still be working on them: re-run when it is done",
        )
        if stage in ("all", "assemble"):
            report.dataset_dir = assemble_run(loaded, store)
            summary = quality_summary(read_manifest(report.dataset_dir)["stats"])
            if summary:
                log.info(summary)
            crash_point("end")
        check_failures(loaded, store)
        report.seconds = time.monotonic() - started
        return report


def stage_progress(stage: str, unit: str, mode: str, store: RunStore, world: World) -> Progress:
    """The progress display of one stage in this process, saving its figures for ``status``."""
    rank = f"-rank{world.rank}" if world.size > 1 else ""
    return Progress(
        stage,
        0,  # the stage sets its total before it starts
        unit=unit,
        mode=mode,
        state_file=store.root / "logs" / f"progress-{stage}{rank}.json",
    )


def is_complete(loaded: LoadedRecipe, store: RunStore, n_shards: int) -> bool:
    """Every shard of every stage is done and the dataset was assembled from this recipe."""
    manifest = store.dataset_dir / "synth_disco" / "manifest.json"
    if not manifest.exists():
        return False
    if json.loads(manifest.read_text(encoding="utf-8")).get("fingerprint") != loaded.fingerprint:
        return False
    stages = ["discuss"] + (["annotate"] if loaded.recipe.annotation is not None else [])
    return all(store.is_done(st, s) for st in stages for s in range(n_shards))


def require_discussions(store: RunStore, shards: Iterable[int], what_to_do: str) -> None:
    """Raise unless every given discussion shard is done; ``what_to_do`` ends the message."""
    missing = [s for s in shards if not store.is_done("discuss", s)]
    if missing:
        raise StoreError(
            f"{len(missing)} discussion shards are not finished (e.g. shard {missing[0]}): "
            + what_to_do
        )


def run_annotation(
    loaded: LoadedRecipe,
    store: RunStore,
    mine: list[int],
    engines: EngineCache,
    should_stop: Callable[[], bool],
    retry_failed: bool,
    progress: Progress | None = None,
) -> StageResult:
    """The annotation stage over this process's shards (see ``annotation/stage.py``)."""
    recipe = loaded.recipe
    cfg = recipe.annotation
    model_cfg = recipe.model_for(cfg.model)
    annotators = loaded.personas(cfg.annotators.pool)
    override = recipe.discussion.templates.annotation
    prompts = PromptBuilder(
        cfg, user_template=text_value(override, "discussion.templates.annotation") or None
    )
    engine = engines(model_cfg)
    result = run_annotation_stage(
        store,
        lambda shard: store.read_shard("discuss", shard, "comments"),
        mine,
        cfg,
        annotators,
        engine,
        # The id the engine reports (a server's own name for the model), else the recipe's.
        model_name=getattr(engine, "model_id", None) or model_cfg.model,
        seed=recipe.seed,
        should_stop=should_stop,
        params=default_generate_params(cfg, sampling_params_from(model_cfg)),
        retry_failed=retry_failed,
        prompts=prompts,
        progress=progress,
    )
    return result


def assemble_run(loaded: LoadedRecipe, store: RunStore) -> Path:
    agreement = None
    path = store.root / "agreement.json"
    if path.exists():
        agreement = json.loads(path.read_text(encoding="utf-8"))
    return assemble(
        store,
        loaded.recipe,
        loaded.raw,
        loaded.fingerprint,
        agreement=agreement,
        personas={pool: loaded.personas(pool) for pool in used_pools(loaded.recipe)},
        source_files=loaded.files,
        repo=loaded.recipe.output.hub.repo,
        bundle=make_bundle(loaded.raw, loaded.files, loaded.text_refs),
        recipe_dir=loaded.base_dir,
    )


def check_failures(loaded: LoadedRecipe, store: RunStore) -> None:
    """Summarise failed discussions; too many of them fail the build."""
    shards = store.done_shards("discuss")
    total = sum(s.counts.get("discussions", 0) for s in shards)
    failed = sum(s.counts.get("failed", 0) for s in shards)
    retry = f"synth-disco build {loaded.path.name} --out {store.root} --retry-failed"
    if failed:
        log.warning("%d of %d discussions failed:", failed, total)
        shown = 0
        for info in shards:
            if not info.counts.get("failed") or shown >= 10:
                continue
            table = store.read_shard("discuss", info.shard, "discussions")
            for row in table.select(["discussion_id", "status", "error"]).to_pylist():
                if row["status"] == "failed" and shown < 10:
                    log.warning("  %s: %s", row["discussion_id"], row["error"])
                    shown += 1
        log.warning("retry them with: %s", retry)
    limit = loaded.recipe.output.max_failed_fraction
    if total and failed / total > limit:
        raise TooManyFailures(
            f"{failed} of {total} discussions failed ({failed / total:.0%}), more than "
            f"output.max_failed_fraction={limit:g}; retry them with `{retry}`"
        )


def resume_hint(recipe_path: Path, overrides: list[str], store: RunStore) -> str:
    sets = "".join(f" --set {o}" for o in overrides)
    return f"stopped; resume with: synth-disco build {recipe_path}{sets} --out {store.root}"
