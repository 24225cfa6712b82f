"""The plan: cells x replicates -> discussion specs, with seeds and shards; plan.parquet.

Plan order is replicate-major: discussion ``index = replicate * n_cells + cell_index``. So
raising ``replicates`` only appends discussions; every earlier spec (id, seed, post,
participants, variants, shard) stays exactly as it was, and a dataset can be extended.

Matched design: a discussion's post and its participants depend on the recipe seed and the
replicate only, not on the cell. Every cell of one replicate therefore discusses the same post
with the same people (when the cells share a persona pool and participant count), which makes
comparisons across conditions paired. Instruction variants (e.g. trolls) are drawn per
replicate and participant position too, so the same people play the same variants in every
cell that offers those variants.

Nothing here touches a global RNG: every draw comes from ``random.Random(derive_seed(...))``
or from a hash of the replicate seed (``variant_draws``), so plans are identical everywhere.
"""

from __future__ import annotations

import hashlib
import math
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synth_disco.design.cells import Cell, discussion_id, make_cells
from synth_disco.design.estimate import PlanSummary, discussion_work
from synth_disco.recipe.factorial import n_full_factorial
from synth_disco.recipe.load import LoadedRecipe
from synth_disco.recipe.schema import DEFAULT_VARIANT, Range, Recipe
from synth_disco.records import DiscussionSpec, Participant, Persona, Post
from synth_disco.seeds import derive_seed
from synth_disco.store import schemas

PLAN_BATCH_ROWS = 8192


_EIGHT_U64 = struct.Struct(">8Q")
_INV_2_53 = 1.0 / (1 << 53)


def variant_draws(seed: int, n: int) -> list[float]:
    """``n`` numbers in [0, 1), one per participant position, from ``seed``:
    draw i is the i-th 8-byte chunk of blake2b("{seed}:variants:{block}") (8 per block)."""
    out: list[float] = []
    block = 0
    while len(out) < n:
        d = hashlib.blake2b(f"{seed}:variants:{block}".encode(), digest_size=64).digest()
        out.extend([(x >> 11) * _INV_2_53 for x in _EIGHT_U64.unpack(d)])
        block += 1
    return out[:n]


@dataclass(frozen=True)
class _Draw:
    cell: Cell
    replicate: int
    discussion_id: str
    seed: int
    pool: list[Persona]
    chosen: tuple[int, ...]
    post: Post
    picks: list[int]  # per participant: index into the cell's variants, -1 for the default


class Plan:
    """The discussions a recipe asks for; specs are made on demand, in plan order."""

    def __init__(self, loaded: LoadedRecipe) -> None:
        self.loaded = loaded
        recipe = loaded.recipe
        self.recipe = recipe
        self.seed = recipe.seed
        self.factors = loaded.factor_levels()
        self.cells: list[Cell] = make_cells(loaded)
        self._variants = [
            [(name, v.share, v.instructions) for name, v in c.recipe.discussion.variants.items()]
            for c in self.cells
        ]
        self.replicates = recipe.replicates
        self.shard_size = recipe.output.shard_size
        self._posts: list[Post] = loaded.posts()
        self._post_cycle: tuple[int, list[int]] = (-1, [])
        self._who_cache: tuple[int, dict[Any, tuple[int, ...]]] = (-1, {})

    # -- sizes ------------------------------------------------------------------------------

    @property
    def n_cells(self) -> int:
        return len(self.cells)

    @property
    def n_discussions(self) -> int:
        return self.n_cells * self.replicates

    @property
    def n_shards(self) -> int:
        return -(-self.n_discussions // self.shard_size)

    @property
    def fingerprint(self) -> str:
        return self.loaded.fingerprint

    def shard_range(self, shard: int) -> range:
        if not 0 <= shard < self.n_shards:
            raise IndexError(f"shard {shard} out of range (0..{self.n_shards - 1})")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.n_discussions))

    # -- specs ------------------------------------------------------------------------------

    def _post_index(self, replicate: int) -> int:
        """Balanced: each run of ``len(posts)`` replicates uses every post once, in an order
        shuffled per run, so no post is used twice before all were used once."""
        n = len(self._posts)
        run, pos = divmod(replicate, n)
        if self._post_cycle[0] != run:
            order = list(range(n))
            random.Random(derive_seed(self.seed, "posts", run)).shuffle(order)
            self._post_cycle = (run, order)
        return self._post_cycle[1][pos]

    def _who(self, replicate: int, pool: str, count: int | Range, size: int) -> tuple[int, ...]:
        """Positions in the pool of a replicate's participants (cached for the replicate,
        since plan order visits all its cells in a row)."""
        key = (replicate, pool, count if isinstance(count, int) else (count.min, count.max))
        if self._who_cache[0] != replicate:
            self._who_cache = (replicate, {})
        cache = self._who_cache[1]
        if key not in cache:
            rng = random.Random(derive_seed(self.seed, "replicate", replicate))
            k = count if isinstance(count, int) else rng.randint(count.min, count.max)
            cache[key] = tuple(rng.sample(range(size), k))
        return cache[key]

    def _draw(self, index: int) -> _Draw:
        """The random choices of discussion ``index`` (no record objects: cheap to stream)."""
        if not 0 <= index < self.n_discussions:
            raise IndexError(f"discussion {index} out of range (0..{self.n_discussions - 1})")
        replicate, ci = divmod(index, self.n_cells)
        cell = self.cells[ci]
        did = discussion_id(cell.id, replicate)
        seed = derive_seed(self.seed, did)
        d = cell.recipe.discussion
        pool = self.loaded.personas(d.persona_pool)

        # Who and what: from the replicate alone, so every cell of a replicate matches.
        chosen = self._who(replicate, d.persona_pool, d.participants, len(pool))
        post = self._posts[self._post_index(replicate)]

        # Instruction variants: an independent draw per participant position; -1 = default.
        # Drawn per replicate too, so the same people get the same variants in every cell.
        variants = self._variants[ci]
        picks = [-1] * len(chosen)
        if variants:
            draws = variant_draws(derive_seed(self.seed, "replicate", replicate), len(chosen))
            for pos, u in enumerate(draws):
                acc = 0.0
                for v, (_, share, _) in enumerate(variants):
                    acc += share
                    if u < acc:
                        picks[pos] = v
                        break
        return _Draw(cell, replicate, did, seed, pool, chosen, post, picks)

    def spec(self, index: int) -> DiscussionSpec:
        """The discussion at plan position ``index``."""
        dr = self._draw(index)
        cell = dr.cell
        variants = self._variants[cell.index]
        default = cell.recipe.discussion.instructions
        participants = []
        for i, v in zip(dr.chosen, dr.picks, strict=True):
            persona = dr.pool[i]
            name, text = (DEFAULT_VARIANT, default) if v < 0 else (variants[v][0], variants[v][2])
            assert isinstance(text, str)  # the loader replaced file references by text
            participants.append(Participant(persona.name, persona, name, text))
        return DiscussionSpec(
            discussion_id=dr.discussion_id,
            index=index,
            cell_id=cell.id,
            cell=dict(cell.levels),
            replicate=dr.replicate,
            seed=dr.seed,
            shard=index // self.shard_size,
            post=dr.post,
            participants=tuple(participants),
            config=cell.config,  # shared by the cell's specs: treat as read-only
        )

    def rows(self, start: int = 0, stop: int | None = None) -> Iterator[dict[str, Any]]:
        """plan.parquet rows in plan order (what ``write_plan`` writes)."""
        stop = self.n_discussions if stop is None else min(stop, self.n_discussions)
        for index in range(start, stop):
            dr = self._draw(index)
            variants = self._variants[dr.cell.index]
            yield {
                "discussion_id": dr.discussion_id,
                "index": index,
                "cell_id": dr.cell.id,
                **dr.cell.levels,
                "replicate": dr.replicate,
                "seed": dr.seed,
                "shard": index // self.shard_size,
                "post_id": dr.post.id,
                "participants": [dr.pool[i].id for i in dr.chosen],
                "variants": [DEFAULT_VARIANT if v < 0 else variants[v][0] for v in dr.picks],
                "n_participants": len(dr.chosen),
                "config_json": dr.cell.config_json,
            }

    def iter_specs(self, start: int = 0, stop: int | None = None) -> Iterator[DiscussionSpec]:
        """Specs in plan order, made one at a time (memory does not grow with the plan)."""
        stop = self.n_discussions if stop is None else min(stop, self.n_discussions)
        for index in range(start, stop):
            yield self.spec(index)

    def specs_for_shard(self, shard: int) -> list[DiscussionSpec]:
        return [self.spec(i) for i in self.shard_range(shard)]

    # -- summary ----------------------------------------------------------------------------

    def summary(self) -> PlanSummary:
        """The design at a glance, with the work it takes (``estimate.py``)."""
        seeds_per_post = max((len(p.comments) for p in self._posts), default=1)
        turns = mod_calls = ann_calls = retry_calls = tokens = 0
        lo, hi = math.inf, 0
        for cell in self.cells:
            d = cell.recipe.discussion
            if isinstance(d.participants, Range):
                lo, hi = min(lo, d.participants.min), max(hi, d.participants.max)
            else:
                lo, hi = min(lo, d.participants), max(hi, d.participants)
            work = discussion_work(
                cell.recipe, seeds_per_post, lambda pool: len(self.loaded.personas(pool))
            )
            reps = self.replicates
            turns += reps * work.turns
            mod_calls += reps * work.moderator_calls
            ann_calls += reps * work.annotation_calls
            retry_calls += reps * work.calls_with_retries
            tokens += reps * work.generated_tokens
        return PlanSummary(
            factors=self.factors,
            n_cells=self.n_cells,
            n_full_factorial=n_full_factorial(self.factors),
            replicates=self.replicates,
            n_discussions=self.n_discussions,
            participants=(int(lo) if self.cells else 0, hi),
            turns=turns,
            discussion_calls=turns,
            moderator_calls=mod_calls,
            annotation_calls=ann_calls,
            calls_with_retries=retry_calls,
            generated_tokens=tokens,
            n_shards=self.n_shards,
            shard_size=self.shard_size,
            fingerprint=self.fingerprint,
        )


def plan(loaded: LoadedRecipe) -> Plan:
    """The plan of a loaded (validated) recipe."""
    return Plan(loaded)


# ---------------------------------------------------------------------------------------------
# plan.parquet


def plan_schema(factors: list[str], fingerprint: str, recipe: Recipe) -> pa.Schema:
    """plan.parquet's schema (``schemas.plan_schema``) with the recipe it was planned from."""
    meta = {
        "synth_disco.fingerprint": fingerprint,
        "synth_disco.recipe": recipe.name,
        "synth_disco.recipe_version": recipe.version,
    }
    return schemas.plan_schema(factors).with_metadata(meta)


def write_plan(plan: Plan, path: str | Path, batch_rows: int = PLAN_BATCH_ROWS) -> Path:
    """Write one row per discussion to ``path`` (parquet), streaming in batches; the file
    appears only when complete (written to a temporary name, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    factors = list(plan.factors)
    schema = plan_schema(factors, plan.fingerprint, plan.recipe)
    names = schema.names
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for start in range(0, plan.n_discussions, batch_rows):
                cols: dict[str, list[Any]] = {n: [] for n in names}
                for row in plan.rows(start, start + batch_rows):
                    for n in names:
                        cols[n].append(row[n])
                writer.write_batch(pa.record_batch([cols[n] for n in names], schema=schema))
        tmp.replace(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
