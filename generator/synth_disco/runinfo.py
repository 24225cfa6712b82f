"""Reading a run directory for people: ``synth-disco status`` and ``synth-disco show``.

Both only read files, so they work while a build is writing to the same directory.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth_disco.progress import fmt_duration
from synth_disco.recipe.schema import DEFAULT_VARIANT
from synth_disco.store.run_dir import RunStore
from synth_disco.store.schemas import discussions_schema

# Columns every discussions table has; the rest are factor columns.
DISCUSSION_COLUMNS = tuple(discussions_schema([]).names)


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
    # From the latest progress figures of the processes working on the stage.
    calls_total: int = 0
    calls_done: int = 0
    calls_resumed: int = 0
    active_seconds: float = 0.0


@dataclass
class RunStatus:
    name: str
    version: str
    fingerprint: str
    stages: list[StageStatus] = field(default_factory=list)
    dataset: bool = False

    def eta(self, stage: StageStatus) -> str:
        """From the stage's own pace in active time (``logs/progress-*.json``), never from
        when the run was created: a run resumed a day later is not a day slower."""
        if stage.units_done >= stage.units_total:
            return "-"
        if not stage.calls_total or stage.calls_done <= stage.calls_resumed:
            return "?"
        pace = stage.active_seconds / (stage.calls_done - stage.calls_resumed)
        return fmt_duration(pace * max(stage.calls_total - stage.calls_done, 0))

    @property
    def active(self) -> float:
        """Seconds the stages have spent working (their latest progress figures)."""
        return sum(s.active_seconds for s in self.stages)

    def render(self) -> str:
        lines = [
            f"{self.name} {self.version}  fingerprint {self.fingerprint[:12]}"
            f"  active {fmt_duration(self.active)}",
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


def _read_progress(run_dir: Path, stage: StageStatus) -> None:
    """Add the progress figures every process of ``stage`` saved (one file per rank)."""
    for path in sorted((run_dir / "logs").glob(f"progress-{stage.stage}*.json")):
        try:
            p = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being replaced right now: the next status call reads it
        stage.calls_total += int(p.get("total", 0))
        stage.calls_done += int(p.get("done", 0))
        stage.calls_resumed += int(p.get("resumed", 0))
        stage.active_seconds = max(stage.active_seconds, float(p.get("active_seconds", 0.0)))


def run_status(run_dir: Path) -> RunStatus:
    store = RunStore(run_dir)
    info = store.read_run()
    if info is None or not store.plan_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a synth-disco run directory (no run.json)")
    shard_col = pq.read_table(store.plan_path, columns=["shard"]).column("shard")
    per_shard: dict[int, int] = {}
    for item in pc.value_counts(shard_col).to_pylist():
        per_shard[int(item["values"])] = int(item["counts"])
    status = RunStatus(info["name"], info["version"], info["fingerprint"])
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
    _read_progress(run_dir, discuss)
    _read_progress(run_dir, annotate)
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
        shard = int(path.stem.split("-")[1])
        posts_file = store.posts_path(shard)
        posts = json.loads(posts_file.read_text(encoding="utf-8")) if posts_file.exists() else {}
        rows = [
            {k: v for k, v in r.items() if k not in ("t", "d", "slot")}
            for r in store.read_journal("discuss", shard)
            if r["t"] == "comment" and r["d"] == discussion_id
        ]
        if rows or discussion_id in posts:
            return [*posts.get(discussion_id, []), *rows]  # the post first, as it started
    return []


def _labels_of(store: RunStore, discussion_id: str) -> dict[str, list[str]]:
    """comment id -> "dimension=label (annotator)" of every finished label of a discussion."""
    out: dict[str, list[str]] = {}
    for path in store.shard_files("annotate", "annotations"):
        table = pq.read_table(
            path,
            columns=["comment_id", "annotator_id", "dimension", "label", "status"],
            filters=[("discussion_id", "=", discussion_id)],
        )
        for r in table.to_pylist():
            shown = r["label"] if r["status"] == "ok" else "failed"
            out.setdefault(r["comment_id"], []).append(
                f"{r['dimension']}={shown} ({r['annotator_id']})"
            )
    return out


def render_thread(run_dir: Path, discussion_id: str, width: int | None = None) -> str:
    """A discussion as an indented thread (replies under their parents), every comment in
    full, wrapped to ``width`` (the terminal's by default), with its labels and flags."""
    store = RunStore(run_dir)
    rows = _comments_of(store, discussion_id)
    if not rows:
        raise KeyError(f"no discussion {discussion_id!r} in {run_dir}")
    width = width or max(shutil.get_terminal_size((100, 24)).columns, 40)
    if any(r.get("cycle") is not None for r in rows):
        return render_structure(rows, _discussion_of(store, discussion_id), width)
    labels = _labels_of(store, discussion_id)
    lines = []
    children: dict[str | None, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["index"]):
        children.setdefault(r["parent_id"], []).append(r)
    linear = all(len(v) == 1 for v in children.values())

    def emit(r: dict, level: int) -> None:
        tag = {"op": "OP", "seed": "seed", "moderator": "moderator"}.get(r["role"], "")
        variant = r.get("variant")
        extra = ", ".join(
            x for x in (tag, variant if variant not in (None, DEFAULT_VARIANT) else "") if x
        )
        head = f"[{r['index']}] {r['author']}" + (f" ({extra})" if extra else "")
        pad = "" if linear else "    " * min(level, 8)
        lines.append(pad + head)
        body = textwrap.TextWrapper(
            width=max(width - len(pad) - 4, 20),
            initial_indent=pad + "    ",
            subsequent_indent=pad + "    ",
            break_long_words=True,
            replace_whitespace=False,
        )
        for text_line in (r["text"] or "").splitlines() or [""]:
            lines.extend(body.wrap(text_line) or [pad + "    "])
        notes = []
        if r.get("flags"):
            notes.append("flags: " + ", ".join(r["flags"]))
        if labels.get(r["comment_id"]):
            notes.append("labels: " + "; ".join(labels[r["comment_id"]]))
        for note in notes:
            lines.extend(body.wrap(f"-- {note}"))
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
    """The first ``limit`` finished discussions: id, factor levels, post title, status, size."""
    store = RunStore(run_dir)
    if store.read_run() is None:
        raise FileNotFoundError(f"{run_dir} is not a synth-disco run directory (no run.json)")
    out: list[dict] = []
    for path in store.shard_files("discuss", "discussions"):
        table = pq.read_table(path)
        fixed = set(DISCUSSION_COLUMNS)
        factors = [n for n in table.column_names if n not in fixed]
        for row in table.to_pylist():
            row["levels"] = {f: row[f] for f in factors}
            out.append(row)
        if len(out) >= limit:
            break
    return out[:limit]


def build_summary(run_dir: Path, seconds: float, dataset_dir: Path | None) -> list[str]:
    """The lines a finished build ends with: what was made, what failed and why, agreement,
    wall time, where the dataset is and what to do next."""
    store = RunStore(run_dir)
    disc = store.done_shards("discuss")
    n_disc = sum(s.counts.get("discussions", 0) for s in disc)
    n_failed = sum(s.counts.get("failed", 0) for s in disc)
    n_comments = sum(s.counts.get("comments", 0) for s in disc)
    ann = store.done_shards("annotate")
    n_labels = sum(s.counts.get("annotations", 0) for s in ann)
    n_bad_labels = sum(s.counts.get("failed", 0) for s in ann)
    lines = [
        f"discussions: {n_disc:,} ({n_failed:,} failed)   comments: {n_comments:,}"
        + (f"   labels: {n_labels:,} ({n_bad_labels:,} failed)" if ann else ""),
    ]
    reasons: dict[str, int] = {}
    for info in disc:
        if not info.counts.get("failed"):
            continue
        table = pq.read_table(store.shard_path("discuss", info.shard, "discussions"))
        for row in table.select(["status", "error"]).to_pylist():
            if row["status"] == "failed":
                why = (row["error"] or "unknown").splitlines()[0][:120]
                reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  failed x{n}: {why}")
    agreement = run_dir / "agreement.json"
    if agreement.exists():
        alphas = json.loads(agreement.read_text(encoding="utf-8"))
        shown = ", ".join(
            f"{dim} {'n/a' if a.get('alpha') is None else format(a['alpha'], '.2f')}"
            for dim, a in alphas.items()
        )
        lines.append(f"agreement (Krippendorff's alpha): {shown}")
    lines.append(f"wall time: {fmt_duration(seconds)}")
    if dataset_dir is not None:
        lines.append(f"dataset: {dataset_dir.as_posix()}")
        lines.append(f"next: synth-disco push {run_dir.as_posix()} --repo ORG/NAME")
    return lines


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


def render_structure(rows: list[dict], info: dict, width: int) -> str:
    """A structured discussion: the task, each cycle's responses in order with what their
    authors were shown, the combiner's instructions and the final response."""
    rows = sorted(rows, key=lambda r: r["index"])
    index_of = {r["comment_id"]: r["index"] for r in rows}
    lines: list[str] = []

    def text(t: str | None, pad: str = "    ") -> None:
        wrap = textwrap.TextWrapper(
            width=max(width - len(pad), 20),
            initial_indent=pad,
            subsequent_indent=pad,
            replace_whitespace=False,
        )
        for line in (t or "").splitlines() or [""]:
            lines.extend(wrap.wrap(line) or [pad])

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
