"""The batched runner: same text as one-at-a-time, journaled, resumable, failures isolated."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from fakes import FakeEngine, make_spec, run_alone
from synth_disco.discussion.stage import DiscussionRunner
from synth_disco.store.run_dir import RunStore


def specs(n_shards=3, per_shard=3, **kw):
    out = {}
    for shard in range(n_shards):
        out[shard] = [
            dataclasses.replace(
                make_spec(discussion_id=f"d{shard}-{i}", seed=100 * shard + i, **kw),
                shard=shard,
                index=shard * per_shard + i,
            )
            for i in range(per_shard)
        ]
    return out


def make_runner(store, plan, engine, **kw):
    return DiscussionRunner(store, lambda s: plan[s], lambda cfg: engine, [], **kw)


def comments_of(store, shard):
    return pq.read_table(store.shard_path("discuss", shard, "comments")).to_pylist()


def test_batched_equals_alone_and_batches_are_used(tmp_path):
    plan = specs(policy={"policy": "random_weighted", "p_respond": 0.4})
    engine = FakeEngine()
    store = RunStore(tmp_path)
    result = make_runner(store, plan, engine, max_concurrent=5).run([0, 1, 2])
    assert result.shards_done == 3 and result.failed == 0
    assert max(len(c) for c in engine.calls) == 5  # many discussions per engine call
    for shard, shard_specs in plan.items():
        rows = comments_of(store, shard)
        for spec in shard_specs:
            alone = run_alone(spec, FakeEngine())
            got = [r for r in rows if r["discussion_id"] == spec.discussion_id]
            assert [r["text"] for r in got] == [c.text for c in alone.comments]
            assert [r["author"] for r in got] == [c.author for c in alone.comments]


def test_rerun_of_finished_run_does_nothing(tmp_path):
    plan = specs()
    store = RunStore(tmp_path)
    make_runner(store, plan, FakeEngine()).run([0, 1, 2])
    engine = FakeEngine()
    result = make_runner(store, plan, engine).run([0, 1, 2])
    assert engine.calls == [] and result.shards_done == 0


def test_stop_and_resume_gives_identical_shards(tmp_path):
    plan = specs()
    full = RunStore(tmp_path / "full")
    make_runner(full, plan, FakeEngine(), max_concurrent=4).run([0, 1, 2])

    part = RunStore(tmp_path / "part")
    steps = {"n": 0}

    def stop():
        steps["n"] += 1
        return steps["n"] > 5

    r = make_runner(part, plan, FakeEngine(), max_concurrent=4, should_stop=stop).run([0, 1, 2])
    assert r.stopped
    make_runner(part, plan, FakeEngine(), max_concurrent=2).run([0, 1, 2])
    for shard in plan:
        assert comments_of(part, shard) == comments_of(full, shard)


def test_one_failing_discussion_does_not_stop_the_others(tmp_path):
    plan = specs(n_shards=1, per_shard=4)

    def reply(request):
        return "" if request.id.startswith("d0-1/") else "fine by me"

    store = RunStore(tmp_path)
    result = make_runner(store, plan, FakeEngine(reply)).run([0])
    assert result.failed == 1 and result.finished == 4
    assert result.failures[0][0] == "d0-1"
    rows = pq.read_table(store.shard_path("discuss", 0, "discussions")).to_pylist()
    status = {r["discussion_id"]: r["status"] for r in rows}
    assert status == {"d0-0": "ok", "d0-1": "failed", "d0-2": "ok", "d0-3": "ok"}
    # retry-failed reruns only the failed one
    engine = FakeEngine(lambda r: "fine by me")
    result = make_runner(store, plan, engine, retry_failed=True).run([0])
    assert {r.id.split("/")[0] for call in engine.calls for r in call} == {"d0-1"}
    rows = pq.read_table(store.shard_path("discuss", 0, "discussions")).to_pylist()
    assert all(r["status"] == "ok" for r in rows)


# -- with the real tiny model (transformers code path) -------------------------------------------


def tiny_specs(temperature: float, n: int = 6):
    out = []
    for i in range(n):
        spec = make_spec(
            discussion_id=f"t-{i}",
            seed=1000 + i,
            turns=3,
            policy={"policy": "random_weighted", "p_respond": 0.4},
        )
        config = {
            **spec.config,
            "models": {
                "m": {
                    "engine": "tiny",
                    "model": "tiny",
                    "max_new_tokens": 12,
                    "temperature": temperature,
                }
            },
        }
        out.append(dataclasses.replace(spec, config=config, index=i))
    return {0: out}


@pytest.fixture(scope="module")
def tiny_engine():
    from synth_disco.engines.base import EngineConfig
    from synth_disco.engines.registry import load_engine

    return load_engine(EngineConfig("tiny", engine="tiny"))


def test_tiny_greedy_batched_equals_each_discussion_alone(tmp_path, tiny_engine):
    plan = tiny_specs(temperature=0.0)
    store = RunStore(tmp_path)
    make_runner(store, plan, tiny_engine, max_concurrent=6).run([0])
    rows = comments_of(store, 0)
    for spec in plan[0]:
        alone = run_alone(spec, tiny_engine)
        got = [r["text"] for r in rows if r["discussion_id"] == spec.discussion_id]
        assert got == [c.text for c in alone.comments]


def test_tiny_sampled_text_does_not_depend_on_max_concurrent(tmp_path, tiny_engine):
    plan = tiny_specs(temperature=0.9)
    texts = []
    for k in (1, 4, 6):
        store = RunStore(tmp_path / f"k{k}")
        make_runner(store, plan, tiny_engine, max_concurrent=k).run([0])
        texts.append([r["text"] for r in comments_of(store, 0)])
    assert texts[0] == texts[1] == texts[2]
    generated = [t for t in texts[0] if "cities ban cars" not in t]
    assert len(set(generated)) > len(generated) // 2  # sampling really varies the text


def test_a_shard_locked_by_another_process_is_left_alone(tmp_path):
    plan = specs()
    store = RunStore(tmp_path)
    with store.lock_shard("discuss", 1) as mine:
        assert mine
        result = make_runner(store, plan, FakeEngine()).run([0, 1, 2])
    assert result.shards_skipped == 1 and result.shards_done == 2
    assert not store.is_done("discuss", 1)
    assert not store.journal_path("discuss", 1).exists()
    # Once the other process is gone, the shard is built like any other.
    result = make_runner(store, plan, FakeEngine()).run([0, 1, 2])
    assert result.shards_done == 1 and store.is_done("discuss", 1)


def test_full_disk_is_a_clear_error_and_finished_shards_stay_intact(tmp_path, monkeypatch):
    import errno

    from synth_disco.store import run_dir as store_module
    from synth_disco.store.run_dir import StoreError

    plan = specs()
    store = RunStore(tmp_path)
    make_runner(store, plan, FakeEngine()).run([0])
    before = store.shard_path("discuss", 0, "comments").read_bytes()

    def full(path, table):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store_module, "atomic_write_parquet", full)
    with pytest.raises(StoreError, match="no space left"):
        make_runner(store, plan, FakeEngine()).run([1])
    assert store.is_done("discuss", 0)
    assert store.shard_path("discuss", 0, "comments").read_bytes() == before
    assert not store.is_done("discuss", 1)
    monkeypatch.undo()
    # With space again, the journal lets the shard finish without generating anything twice.
    engine = FakeEngine()
    make_runner(store, plan, engine).run([1])
    assert store.is_done("discuss", 1) and engine.calls == []
