"""``data/raw/manifest.parquet``: one row per clip, the same shape for every source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.files import atomic_path

STATUSES = ("ok", "failed", "pending")

SCHEMA = pa.schema([
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),  # synthetic | audioset | local
    pa.field("origin", pa.string()),  # generator recipe, YouTube id or original file
    pa.field("start_seconds", pa.float64()),  # section of the origin this clip covers
    pa.field("end_seconds", pa.float64()),
    pa.field("labels", pa.list_(pa.string()), nullable=False),  # AudioSet ontology ids
    pa.field("path", pa.string()),  # relative to the manifest's folder
    pa.field("status", pa.string(), nullable=False),
    pa.field("error_kind", pa.string()),
    pa.field("error", pa.string()),
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("bytes", pa.int64()),
    pa.field("duration_seconds", pa.float64()),
    pa.field("sample_rate", pa.int32()),
    # when the clip was last fetched or tried; none for generated (synthetic) clips, so
    # regenerating them gives a byte-identical manifest
    pa.field("updated_at", pa.timestamp("us", tz="UTC")),
])


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


def read_manifest(path: Path | str) -> pd.DataFrame:
    table = pq.read_table(path)
    if not table.schema.equals(SCHEMA, check_metadata=False):
        raise ValueError(f"{path}: manifest schema differs from pipeline.manifest.SCHEMA; "
                         "re-run `dvc repro acquire`")
    return table.to_pandas()
