"""Stage ``render``: subset rows -> mel images in ``data/shards/<split>/part-NNNNN.parquet``.

Shards are written by a pool of worker processes, each shard atomically, then a record
beside it (``part-NNNNN.json``: the shard's SHA-256 and a digest of the code that wrote
it). A shard is kept only while it is intact (every byte still matches that SHA-256), was
written by the same code, and carries the fingerprint of what it was made from: its rows,
the bytes of their clips, the SpectrogramSpec and the shard layout. So a run killed half
way finishes the rest without redoing what is done (``data/shards`` is a persistent DVC
output), while a changed clip, changed code or a damaged shard is rendered again. Rows
whose audio is missing, unreadable, not 16 kHz mono, truncated, silent or not finite
(NaN, inf) are skipped and listed, by reason, in ``data/shards/report.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline import params as params_module
from pipeline.audio.shards import encode_png, read_fingerprint, shard_schema
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey, waveform_to_log_mel
from pipeline.audio.waveforms import SkipRow, row_clips
from pipeline.errors import stage_main
from pipeline.files import atomic_path, remove_partials, sha256_file, write_json
from pipeline.paths import RAW_DIR, SHARDS_DIR, SPLITS, SUBSET_DIR
from pipeline.processes import die_with_parent
from pipeline.provenance import code_digest

CODE = "pipeline.stages.render"  # the module whose import closure writes shards: see is_reusable


@dataclass(frozen=True)
class ShardTask:
    split: str
    number: int
    rows: list[dict]
    clip_sha256: list[list[str | None]]  # per row, per clip path; None for a missing file
    spec: SpectrogramSpec
    mix_domain: str
    row_group_rows: int
    raw_dir: Path
    path: Path

    @property
    def fingerprint(self) -> str:
        """What the shard's content follows from (the code that encodes it is checked apart,
        in the record beside the shard: see :func:`is_reusable`)."""
        layout = shard_schema(self.spec, "").to_string(show_schema_metadata=False)
        content = json.dumps([layout, asdict(self.spec), self.mix_domain, self.rows, self.clip_sha256],
                             sort_keys=True, default=str)
        return hashlib.sha256(content.encode()).hexdigest()


def row_log_mel(row: dict, task: ShardTask) -> torch.Tensor:
    clips = row_clips(row["paths"], task.raw_dir, task.spec)
    if len(clips) == 1 or task.mix_domain == "waveform":
        return waveform_to_log_mel(clips.mean(dim=0), task.spec)
    return waveform_to_log_mel(clips, task.spec).mean(dim=0)


def render_shard(task: ShardTask) -> tuple[str, int, list[tuple[str, str]], int]:
    """Write one shard; returns (split, rows written, skipped (id, reason), bytes)."""
    kept, mels, skipped = [], [], []
    for row in task.rows:
        try:
            mels.append(row_log_mel(row, task))
            kept.append(row)
        except SkipRow as why:
            skipped.append((row["id"], str(why)))
    if mels:
        log_mels = torch.stack(mels)
        grey = log_mel_to_grey(log_mels, task.spec).numpy()
        columns = {name: [row[name] for row in kept] for name in
                   ("id", "caption", "target", "target_name", "labels", "source_ids", "is_mixture")}
        columns["image"] = [{"bytes": encode_png(g), "path": None} for g in grey]
        columns["log_mel"] = list(log_mels.reshape(len(kept), -1).numpy().astype(np.float16))
    else:
        columns = {name: [] for name in shard_schema(task.spec, "").names}
    schema = shard_schema(task.spec, task.fingerprint)
    table = pa.Table.from_pydict(columns, schema=schema)
    with atomic_path(task.path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=task.row_group_rows)
    write_record(task.path)
    return task.split, len(kept), skipped, task.path.stat().st_size


def record_path(shard: Path) -> Path:
    return shard.with_suffix(".json")


def write_record(shard: Path) -> None:
    """Written after the shard: a run killed in between leaves a shard without a matching
    record, which the next run renders again."""
    record = {"file": shard.name, "sha256": sha256_file(shard), "code": code_digest(CODE)}
    write_json(record_path(shard), record)


def is_reusable(task: ShardTask) -> bool:
    """The shard on disk is whole (every byte, not only the footer, matches its record),
    was written by this code, and was made from exactly what this task makes it from."""
    try:
        record = json.loads(record_path(task.path).read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("code") == code_digest(CODE)
            and read_fingerprint(task.path) == task.fingerprint
            and record.get("sha256") == sha256_file(task.path))


def plan_shards(index: pa.Table, params: params_module.Params, raw_dir: Path,
                out_dir: Path) -> list[ShardTask]:
    config = params.render
    columns = ["id", "caption", "target", "target_name", "labels", "source_ids", "is_mixture", "paths"]
    digests: dict[str, str | None] = {}

    def clip_sha256(path: str) -> str | None:
        if path not in digests:
            digests[path] = sha256_file(raw_dir / path) if (raw_dir / path).is_file() else None
        return digests[path]

    tasks = []
    for split in SPLITS:
        rows = [r for r in index.select(columns + ["split"]).to_pylist() if r.pop("split") == split]
        for number, start in enumerate(range(0, len(rows), config.shard_rows)):
            shard_rows = rows[start:start + config.shard_rows]
            tasks.append(ShardTask(
                split=split, number=number, rows=shard_rows,
                clip_sha256=[[clip_sha256(p) for p in row["paths"]] for row in shard_rows],
                spec=params.spec, mix_domain=params.subset.mix_domain,
                row_group_rows=config.row_group_rows, raw_dir=raw_dir,
                path=out_dir / split / f"part-{number:05d}.parquet"))
    return tasks


def render(params: params_module.Params, index_path: Path = SUBSET_DIR / "index.parquet",
           raw_dir: Path = RAW_DIR, out_dir: Path = SHARDS_DIR) -> dict:
    tasks = plan_shards(pq.read_table(index_path), params, raw_dir, out_dir)
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        remove_partials(out_dir / split)
    planned = {task.path for task in tasks} | {record_path(task.path) for task in tasks}
    for stale in out_dir.glob("*/part-*"):
        if stale not in planned:
            stale.unlink()
    reused, todo = [], []
    for task in tasks:
        (reused if is_reusable(task) else todo).append(task)
    report = {"rows": Counter(), "skipped": [], "bytes_written": 0,
              "shards": len(tasks), "shards_reused": len(reused)}
    earlier = _earlier_skips(out_dir) if reused else []
    for task in reused:
        report["rows"][task.split] += pq.read_metadata(task.path).num_rows
        report["skipped"] += [s for s in earlier if (s["split"], s["shard"]) == (task.split, task.path.name)]
    progress = tqdm(total=sum(len(t.rows) for t in todo), desc="render", unit="row", file=sys.stderr)
    with _shard_pool(min(params.render.workers, len(todo))) as pool:
        for task, (split, written, skipped, size) in zip(todo, pool.map(render_shard, todo)):
            report["rows"][split] += written
            report["skipped"] += [dict(id=i, split=split, reason=r, shard=task.path.name) for i, r in skipped]
            report["bytes_written"] += size
            progress.update(len(task.rows))
    progress.close()
    report["rows"] = dict(report["rows"])
    report["skipped_by_reason"] = dict(Counter(s["reason"] for s in report["skipped"]))
    # The file describes the data; how much this run reused or wrote is only returned, so a
    # re-run gives a byte-identical report.
    facts = {key: report[key] for key in ("rows", "shards", "skipped", "skipped_by_reason")}
    write_json(out_dir / "report.json", facts)
    return report


class _InProcess:
    """The pool interface without processes: one worker is not worth a spawn (~2 s of imports).
    It renders on one thread, as each pool worker does: the STFT's sums are grouped by thread
    count, so a shard rendered here must not differ in its last bits from one rendered there."""

    map = staticmethod(map)

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        return False


def _start_worker(parent_pid: int) -> None:
    die_with_parent(parent_pid)
    torch.set_num_threads(1)  # one process per core beats threads fighting over cores


def _shard_pool(workers: int):
    if workers <= 1:
        return _InProcess()
    # spawn, not fork: forking a process whose torch/OpenMP threads have run can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))


def _earlier_skips(out_dir: Path) -> list[dict]:
    """Skips the previous run recorded, kept for the shards this run reuses."""
    try:
        return json.loads((out_dir / "report.json").read_text())["skipped"]
    except (OSError, KeyError, ValueError):
        return []


@stage_main("render")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(params_module.PARAMS_YAML))
    args = parser.parse_args(argv)
    report = render(params_module.load(args.params))
    print(f"rows per split {report['rows']}; {len(report['skipped'])} skipped "
          f"{report['skipped_by_reason']}; {report['shards_reused']} of {report['shards']} shards "
          f"reused; {report['bytes_written'] / 1e6:.1f} MB written", file=sys.stderr)


if __name__ == "__main__":
    main()
