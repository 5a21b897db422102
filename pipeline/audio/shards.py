"""Spectrogram shards: ``data/shards/<split>/part-NNNNN.parquet``, and how to read them.

Each row holds the training image as a PNG (an HF ``Image`` column, so
``datasets.load_dataset("parquet", ...)`` decodes it; greyscale, since the three RGB
channels are identical) and the log-mel at native resolution as float16 (within
0.03 dB of the float32 value across the [-40, 60] dB range, far below the image's
0.39 dB quantisation step). The SpectrogramSpec that made the shard is in the schema
metadata, so a reader never guesses the geometry.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from pipeline.audio.spectrogram import SpectrogramSpec
from pipeline.errors import PipelineError
from pipeline.paths import SHARDS_DIR

SPEC_KEY = b"specldm.spectrogram_spec"
FINGERPRINT_KEY = b"specldm.fingerprint"
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


class ShardError(PipelineError, RuntimeError):
    """Shards are missing or were written by a different format."""


def shard_schema(spec: SpectrogramSpec, fingerprint: str) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("target_name", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("source_ids", pa.list_(pa.string()), nullable=False),
        pa.field("is_mixture", pa.bool_(), nullable=False),
        # nullable, or datasets ignores the Image feature (it matches fields exactly)
        pa.field("image", IMAGE_TYPE),
        pa.field("log_mel", pa.list_(pa.float16(), spec.n_mels * spec.n_frames), nullable=False),
    ]
    metadata = {
        SPEC_KEY: json.dumps(dataclasses.asdict(spec)),
        FINGERPRINT_KEY: fingerprint,
        b"huggingface": json.dumps({"info": {"features": {"image": {"_type": "Image"}}}}),
    }
    return pa.schema(fields, metadata=metadata)


def encode_png(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def shard_files(split: str, root: Path | str = SHARDS_DIR) -> list[Path]:
    files = sorted((Path(root) / split).glob("part-*.parquet"))
    if not files:
        raise ShardError(f"no shards for split {split!r} under {root}; run `dvc repro render`")
    return files


def read_spec(path: Path | str) -> SpectrogramSpec:
    """The SpectrogramSpec stored in a shard's schema metadata."""
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowInvalid) as error:
        raise ShardError(f"{path}: not a readable Parquet file ({error}); run `dvc repro render`") from None
    if SPEC_KEY not in metadata:
        raise ShardError(f"{path}: no SpectrogramSpec in its metadata (not a specldm shard)")
    return SpectrogramSpec.from_json(metadata[SPEC_KEY], str(path))


def read_fingerprint(path: Path) -> str | None:
    try:
        return (pq.read_schema(path).metadata or {}).get(FINGERPRINT_KEY, b"").decode() or None
    except (OSError, pa.ArrowInvalid):
        return None


def _decode(table: pa.Table, spec: SpectrogramSpec) -> dict:
    batch = {}
    for name in table.column_names:
        column = table.column(name)
        if name == "image":
            batch[name] = np.stack([decode_png(item["bytes"]) for item in column.to_pylist()])
        elif name == "log_mel":
            values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            batch[name] = values.astype(np.float32).reshape(len(table), spec.n_mels, spec.n_frames)
        else:
            batch[name] = column.to_pylist()
    return batch


def iter_batches(split: str, columns: Sequence[str] | None = None, batch_size: int = 32,
                 shuffle_seed: int | None = None, root: Path | str = SHARDS_DIR,
                 buffer_row_groups: int = 4, drop_last: bool = False) -> Iterator[dict]:
    """Batches of a split as ``{column: values}``: ``image`` as uint8 ``(B, H, W)``,
    ``log_mel`` as float32 ``(B, n_mels, frames)``, other columns as lists.

    Memory stays bounded: at most ``buffer_row_groups`` row groups are held at once.
    With ``shuffle_seed``, row groups are visited in a seeded order and rows are shuffled
    within that buffer; the same seed gives the same order.
    """
    files = shard_files(split, root)
    spec = read_spec(files[0])
    groups = [(path, g) for path in files for g in range(pq.ParquetFile(path).num_row_groups)]
    rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    pending: pa.Table | None = None
    for start in range(0, len(groups), buffer_row_groups):
        tables = [pq.ParquetFile(path).read_row_group(g, columns=columns)
                  for path, g in groups[start:start + buffer_row_groups]]
        if pending is not None:
            tables.insert(0, pending)
        buffer = pa.concat_tables(tables)
        if rng is not None:
            buffer = buffer.take(pa.array(rng.permutation(len(buffer))))
        full = len(buffer) // batch_size * batch_size
        for offset in range(0, full, batch_size):
            yield _decode(buffer.slice(offset, batch_size), spec)
        pending = buffer.slice(full) if full < len(buffer) else None
    if pending is not None and len(pending) and not drop_last:
        yield _decode(pending, spec)


def iter_rows(split: str, columns: Sequence[str], root: Path | str = SHARDS_DIR,
              single_clips: bool = False) -> Iterator[dict]:
    """A split's rows one at a time, in shard order (a few row groups held), as
    :func:`iter_batches` decodes them; ``single_clips`` leaves mixtures out."""
    for batch in iter_batches(split, list(dict.fromkeys([*columns, "is_mixture"])), batch_size=64, root=root):
        for i, mixture in enumerate(batch["is_mixture"]):
            if not (single_clips and mixture):
                yield {c: batch[c][i] for c in columns}


# rows held at once: a multiple of every extractor's batch (Inception 32, aisfx 16, VAE 32, evaluator 64),
# and small enough that any split fills it (41 MB of 10 s clips at 16 kHz as audio; peaks then no longer grow
# with the split, docs/scale.md#memory)
BATCH_ROWS = 64


def single_clip_batches(split: str, columns: Sequence[str], root: Path | str = SHARDS_DIR,
                        size: int = BATCH_ROWS) -> Iterator[dict]:
    """A split's single-clip rows (mixtures have no one class to hear), :func:`in_batches` of ``size``."""
    return in_batches(iter_rows(split, columns, root, single_clips=True), size)


def in_batches(rows: Iterable[dict], size: int) -> Iterator[dict]:
    """Rows gathered ``size`` at a time (the last batch fewer): arrays and tensors stacked,
    other values listed. Fixed sizes keep a network's batches, and so its last bits, as they
    were over the whole split."""
    pending: list[dict] = []
    for row in rows:
        pending.append(row)
        if len(pending) == size:
            yield _gathered(pending)
            pending = []
    if pending:
        yield _gathered(pending)


def _gathered(rows: list[dict]) -> dict:
    def gather(values: list):
        if isinstance(values[0], torch.Tensor):
            return torch.stack(values)
        return np.stack(values) if isinstance(values[0], np.ndarray) else values
    return {c: gather([row[c] for row in rows]) for c in rows[0]}


def read_split(split: str, columns: Sequence[str], root: Path | str = SHARDS_DIR) -> dict:
    """A whole split in memory (for small splits and per-row metadata), in shard order."""
    batches = list(iter_batches(split, columns, batch_size=256, root=root))
    if not batches:
        raise ShardError(f"split {split!r} under {root} has no rows; check {Path(root) / 'report.json'}")
    return {c: np.concatenate([b[c] for b in batches]) if isinstance(batches[0][c], np.ndarray)
            else [value for b in batches for value in b[c]] for c in columns}
