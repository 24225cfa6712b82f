"""Reading a run directory for people: ``synth-disco status`` and ``synth-disco show``.

Both only read files, so they work while a build is writing to the same directory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.progress import fmt_duration
from synth_disco.recipe.schema import DEFAULT_VARIANT
from synth_disco.store.run_dir import RunStore


@dataclass
class StageStatus:
    stage: str
    shards_total: int
    shards_done: int = 0
    units_total: int = 0  # discussions (discuss) or planned shards' discussions (annotate)
    units_done: int = 0
    failed: int = 0
    items: int = 0  # comments or labels
    tokens: int = 0


@dataclass
class RunStatus:
    name: str
    version: str
    fingerprint: str
    elapsed: float
    stages: list[StageStatus] = field(default_factory=list)
    dataset: bool = False

    def eta(self, stage: StageStatus) -> str:
        if stage.units_done == 0 or stage.units_done >= stage.units_total:
            return "-" if stage.units_done >= stage.units_total else "?"
        left = stage.units_total - stage.units_done
        return fmt_duration(self.elapsed / stage.units_done * left)

    def render(self) -> str:
        lines = [
            f"{self.name} {self.version}  fingerprint {self.fingerprint[:12]}"
            f"  elapsed {fmt_duration(self.elapsed)}",
            f"{'stage':<10} {'shards':>9} {'units':>13} {'failed':>7} {'items':>9}"
            f" {'tokens':>10} {'ETA':>9}",
        ]
        for s in self.stages:
            lines.append(
                f"{s.stage:<10} {s.shards_done:>4}/{s.shards_total:<4}"
                f" {s.units_done:>6}/{s.units_total:<6} {s.failed:>7} {s.items:>9}"
                f" {s.tokens:>10} {self.eta(s):>9}"
            )
        lines.append(f"dataset: {'assembled' if self.dataset else 'not yet assembled'}")
        return "\n".join(lines)


def _created_seconds(info: dict) -> float:
    try:
        created = time.strptime(info["created"], "%Y-%m-%dT%H:%M:%SZ")
    except (KeyError, ValueError):
        return 0.0
    return max(0.0, time.time() - time.mktime(created) + time.mktime(time.gmtime(0)))


def run_status(run_dir: Path) -> RunStatus:
    store = RunStore(run_dir)
    info = store.read_run()
    if info is None or not store.plan_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a synth-disco run directory (no run.json)")
    shard_col = pq.read_table(store.plan_path, columns=["shard"]).column("shard")
    per_shard: dict[int, int] = {}
    for item in pc.value_counts(shard_col).to_pylist():
        per_shard[int(item["values"])] = int(item["counts"])
    status = RunStatus(info["name"], info["version"], info["fingerprint"], _created_seconds(info))
    discuss = StageStatus("discuss", len(per_shard), units_total=sum(per_shard.values()))
    annotate = StageStatus("annotate", len(per_shard))
    for shard in per_shard:
        done = store.shard_info("discuss", shard)
        if done is not None:
            discuss.shards_done += 1
            discuss.units_done += done.counts.get("discussions", 0)
            discuss.failed += done.counts.get("failed", 0)
            discuss.items += done.counts.get("comments", 0)
            discuss.tokens += done.counts.get("completion_tokens", 0)
        else:
            for r in store.read_journal("discuss", shard):
                if r["t"] == "end":
                    discuss.units_done += 1
                    discuss.failed += r["status"] == "failed"
                elif r["t"] == "comment":
                    discuss.items += 1
                    discuss.tokens += r.get("completion_tokens", 0)
        adone = store.shard_info("annotate", shard)
        if adone is not None:
            annotate.shards_done += 1
            annotate.units_done += per_shard[shard]
            annotate.items += adone.counts.get("annotations", 0)
            annotate.failed += adone.counts.get("failed", 0)
        else:
            annotate.items += sum(1 for _ in store.read_journal("annotate", shard))
    annotate.units_total = discuss.units_total
    status.stages.append(discuss)
    if (run_dir / "journal" / "annotate").exists() or annotate.shards_done:
        status.stages.append(annotate)
    status.dataset = (store.dataset_dir / "README.md").exists()
    return status


def _comments_of(store: RunStore, discussion_id: str) -> list[dict]:
    for path in store.shard_files("discuss", "comments"):
        table = pq.read_table(path, filters=[("discussion_id", "=", discussion_id)])
        if table.num_rows:
            return table.to_pylist()
    # Still running: read it from the journals.
    journal_dir = store.root / "journal" / "discuss"
    for path in sorted(journal_dir.glob("*.jsonl")) if journal_dir.exists() else []:
        rows = [
            {k: v for k, v in r.items() if k not in ("t", "d", "slot")}
            for r in store.read_journal("discuss", int(path.stem.split("-")[1]))
            if r["t"] == "comment" and r["d"] == discussion_id
        ]
        if rows:
            return rows
    return []


def render_thread(run_dir: Path, discussion_id: str, width: int = 100) -> str:
    """A discussion as an indented thread (replies under their parents)."""
    store = RunStore(run_dir)
    rows = _comments_of(store, discussion_id)
    if not rows:
        raise KeyError(f"no discussion {discussion_id!r} in {run_dir}")
    if any(r.get("cycle") is not None for r in rows):
        return render_structure(rows, _discussion_of(store, discussion_id), width)
    depth: dict[str, int] = {}
    lines = []
    children: dict[str | None, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["index"]):
        children.setdefault(r["parent_id"], []).append(r)
    linear = all(len(v) == 1 for v in children.values())

    def emit(r: dict, level: int) -> None:
        depth[r["comment_id"]] = level
        tag = {"op": "OP", "seed": "seed", "moderator": "moderator"}.get(r["role"], "")
        variant = r.get("variant")
        extra = ", ".join(
            x for x in (tag, variant if variant not in (None, DEFAULT_VARIANT) else "") if x
        )
        head = f"[{r['index']}] {r['author']}" + (f" ({extra})" if extra else "")
        pad = "" if linear else "    " * level
        lines.append(pad + head)
        for text_line in (r["text"] or "").splitlines() or [""]:
            lines.append(pad + "    " + text_line[:width])
        lines.append("")

    def walk(parent: str | None, level: int) -> None:
        for r in children.get(parent, []):
            emit(r, level)
            walk(r["comment_id"], level + 1)

    if linear:
        for r in sorted(rows, key=lambda r: r["index"]):
            emit(r, 0)
    else:
        walk(None, 0)
    return "\n".join(lines).rstrip() + "\n"


def list_discussions(run_dir: Path, limit: int = 20) -> list[dict]:
    store = RunStore(run_dir)
    out: list[dict] = []
    for path in store.shard_files("discuss", "discussions"):
        cols = ["discussion_id", "cell_id", "status", "n_comments"]
        out.extend(pq.read_table(path, columns=cols).to_pylist())
        if len(out) >= limit:
            break
    return out[:limit]


# -- deliberation structures (issue 14) ------------------------------------------------------


def _discussion_of(store: RunStore, discussion_id: str) -> dict:
    """The discussions row of a finished discussion; while it runs, what its journal says."""
    for path in store.shard_files("discuss", "discussions"):
        table = pq.read_table(path, filters=[("discussion_id", "=", discussion_id)])
        if table.num_rows:
            return table.to_pylist()[0]
    journal_dir = store.root / "journal" / "discuss"
    for path in sorted(journal_dir.glob("*.jsonl")) if journal_dir.exists() else []:
        for r in store.read_journal("discuss", int(path.stem.split("-")[1])):
            if r["t"] == "instructions" and r["d"] == discussion_id:
                return {"moderator_instructions": r["text"], "status": "running"}
    return {"status": "running"}


def render_structure(rows: list[dict], info: dict, width: int = 100) -> str:
    """A structured discussion: the task, each cycle's responses in order with what their
    authors were shown, the combiner's instructions and the final response."""
    rows = sorted(rows, key=lambda r: r["index"])
    index_of = {r["comment_id"]: r["index"] for r in rows}
    lines: list[str] = []

    def text(t: str | None, pad: str = "    ") -> None:
        for line in (t or "").splitlines() or [""]:
            lines.append(pad + line[:width])

    def saw(r: dict) -> str:
        ids = r.get("parent_ids") or []
        if not ids or ids == [rows[0]["comment_id"]]:
            return "the task"
        return " ".join(f"[{index_of.get(i, '?')}]" for i in ids)

    structure = info.get("structure") or "structure"
    cycles = max((r["cycle"] for r in rows if r.get("cycle") is not None), default=0)
    head = f"{structure}, {cycles} cycle{'s' if cycles != 1 else ''}"
    if info.get("status"):
        head += f", {info['status']}"
    lines += [head, "", f"[0] task ({rows[0]['author']})"]
    text(rows[0]["text"])
    lines.append("")
    for cycle in range(1, cycles + 1):
        lines.append(f"cycle {cycle}")
        mine = sorted(
            (r for r in rows if r.get("cycle") == cycle), key=lambda r: (r["position"], r["index"])
        )
        for r in mine:
            lines.append(f"  [{r['index']}] #{r['position'] + 1} {r['author']}  saw: {saw(r)}")
            text(r["text"], "      ")
        lines.append("")
    if info.get("moderator_instructions"):
        lines.append("moderator instructions")
        text(info["moderator_instructions"])
        lines.append("")
    for r in rows:
        if r.get("cycle") is None and r["role"] == "moderator":
            lines.append(f"[{r['index']}] final response by {r['author']}  saw: {saw(r)}")
            text(r["text"])
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
