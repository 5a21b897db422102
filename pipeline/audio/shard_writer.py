"""Writing the shards :mod:`pipeline.audio.shards` reads: one ``part-NNNNN.parquet`` per task,
atomically, then a record beside it (``part-NNNNN.json``: the shard's SHA-256 and a digest of
this module's code closure, which is all the code that decides a shard's bytes).

A shard is reused only while it is intact (every byte still matches that SHA-256), was written
by the same code, and carries the fingerprint of what it was made from: its rows, the bytes of
their clips (by the digests recorded in the clip shards), the SpectrogramSpec and the
shard layout.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.audio.shards import encode_png, read_fingerprint, shard_schema
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey, waveform_to_log_mel
from pipeline.audio.waveforms import SkipRow, row_clips, row_digests
from pipeline.files import atomic_path, sha256_file, write_json
from pipeline.paths import SPLITS
from pipeline.provenance import code_digest
from pipeline.sources.clip_shards import ClipStore

CODE = "pipeline.audio.shard_writer"  # this module: its import closure is the code that writes shards


@dataclass(frozen=True)
class ShardTask:
    split: str
    number: int
    rows: list[dict]
    clip_sha256: list[list[str | None]]  # per row, per clip; None for a missing clip
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


def row_log_mel(row: dict, task: ShardTask, store: ClipStore) -> torch.Tensor:
    clips = row_clips(row, store, task.spec)
    if len(clips) == 1 or task.mix_domain == "waveform":
        return waveform_to_log_mel(clips.mean(dim=0), task.spec)
    return waveform_to_log_mel(clips, task.spec).mean(dim=0)


def render_shard(task: ShardTask) -> tuple[str, int, list[tuple[str, str]], int]:
    """Write one shard; returns (split, rows written, skipped (id, reason), bytes)."""
    kept, mels, skipped = [], [], []
    store = ClipStore(task.raw_dir)
    for row in task.rows:
        try:
            mels.append(row_log_mel(row, task, store))
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


def plan_shards(index: pa.Table, spec: SpectrogramSpec, mix_domain: str, shard_rows: int, row_group_rows: int,
                raw_dir: Path, out_dir: Path) -> list[ShardTask]:
    """Each split's rows of the subset index, ``shard_rows`` to a shard, in index order."""
    columns = ["id", "caption", "target", "target_name", "labels", "source_ids", "is_mixture", "paths"]
    store = ClipStore(raw_dir)

    tasks = []
    for split in SPLITS:
        rows = [r for r in index.select(columns + ["split"]).to_pylist() if r.pop("split") == split]
        for number, start in enumerate(range(0, len(rows), shard_rows)):
            chunk = rows[start:start + shard_rows]
            tasks.append(ShardTask(
                split=split, number=number, rows=chunk,
                clip_sha256=[row_digests(row, store) for row in chunk],
                spec=spec, mix_domain=mix_domain, row_group_rows=row_group_rows, raw_dir=raw_dir,
                path=out_dir / split / f"part-{number:05d}.parquet"))
    return tasks
