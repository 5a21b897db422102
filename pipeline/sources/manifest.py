"""``data/raw/manifest.parquet``: one row per clip, the same shape for every source."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from pipeline.files import atomic_path

STATUSES = ("ok", "failed", "pending")

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # synthetic | audioset | local
    pa.field("origin", pa.string()),  # generator recipe, YouTube id or original file
    pa.field("start_seconds", pa.float64()),  # section of the origin this clip covers
    pa.field("end_seconds", pa.float64()),
    pa.field("labels", pa.list_(pa.string()), nullable=False),  # AudioSet ontology ids
    pa.field("path", pa.string()),  # the clip's shard, relative to the manifest's folder
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("bytes", pa.int64()),
    pa.field("duration_seconds", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    # when the clip was last downloaded or tried; none for clips made from local input
    # (synthetic, local), so making them again gives a byte-identical manifest
    pa.field("updated_at", pa.timestamp("us", tz="UTC")),
])


def new_row(id: str, source: str, origin: str | None, labels: list[str],
            start_seconds: float | None = None, end_seconds: float | None = None,
            path: str | None = None) -> dict:
    """A ``pending`` row: what the clip is, with nothing yet known of how getting it went."""
    return dict(id=id, source=source, origin=origin, start_seconds=start_seconds,
                end_seconds=end_seconds, labels=list(labels), path=path, status="pending",
                error_kind=None, error=None, attempts=0, bytes=None, duration_seconds=None,
                sample_rate=None, updated_at=None)


def mark_ok(row: dict, clip: Path | bytes, updated_at=None) -> dict:
    """Record the finished clip: a FLAC file, or its bytes."""
    info = sf.info(io.BytesIO(clip) if isinstance(clip, bytes) else clip)
    size = len(clip) if isinstance(clip, bytes) else clip.stat().st_size
    row.update(status="ok", error_kind=None, error=None, bytes=size,
               duration_seconds=info.frames / info.samplerate, sample_rate=info.samplerate,
               updated_at=updated_at)
    return row


def mark_failed(row: dict, kind: str, message: str, updated_at=None) -> dict:
    row.update(status="failed", error_kind=kind, error=message, bytes=None,
               duration_seconds=None, sample_rate=None, updated_at=updated_at)
    return row


def write_manifest(rows: list[dict], path: Path | str) -> pa.Table:
    """Validate ``rows`` against :data:`SCHEMA` and write them atomically."""
    for row in rows:
        if row["status"] not in STATUSES:
            raise ValueError(f"manifest row {row['id']}: status {row['status']!r} not in {STATUSES}")
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"manifest has duplicate ids: {duplicates[:5]}")
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def _read_table(path: Path | str) -> pa.Table:
    table = pq.read_table(path)
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: manifest schema differs from pipeline.sources.manifest.SCHEMA; "
                         "re-run `dvc repro acquire`")
    return table


def read_manifest(path: Path | str) -> pd.DataFrame:
    return _read_table(path).to_pandas()


def read_manifest_rows(path: Path | str) -> list[dict]:
    """The rows as plain dicts (None for nulls), as :func:`write_manifest` takes them."""
    return _read_table(path).to_pylist()
