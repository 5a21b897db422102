"""AudioSet's segment CSVs (``balanced_train_segments.csv``, ``eval_segments.csv``, ...):
which 10 s section of which YouTube video carries which labels."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.ontology import OntologyError

YTID_PATTERN = re.compile(r"[A-Za-z0-9_-]{11}")
_HEADER_COUNTS = re.compile(r"num_ytids=(\d+), num_segs=(\d+), num_unique_labels=(\d+), "
                            r"num_positive_labels=(\d+)")


@dataclass(frozen=True)
class Segment:
    ytid: str
    start_seconds: float
    end_seconds: float
    labels: tuple[str, ...]


def read_segments(path: Path) -> list[Segment]:
    """Parse an AudioSet segment CSV and check it against the counts in its header.

    The format: ``#`` comment lines (the second holds the counts), then rows
    ``YTID, start, end, "label,label"`` separated by comma-space.
    """
    path = Path(path)
    segments: list[Segment] = []
    counts = None
    with open(path, newline="") as f:
        for line_number, line in enumerate(f, start=1):
            if line.startswith("#"):
                counts = counts or _HEADER_COUNTS.search(line)
                continue
            if not line.strip():
                continue
            fields = next(csv.reader([line], skipinitialspace=True))
            if len(fields) != 4:
                raise OntologyError(f"{path}:{line_number}: expected 4 fields "
                                    f"(YTID, start, end, labels); got {len(fields)}")
            ytid, start, end, labels = fields
            try:
                start_s, end_s = float(start), float(end)
            except ValueError:
                raise OntologyError(f"{path}:{line_number}: start/end are not numbers") from None
            if not end_s > start_s >= 0:
                raise OntologyError(f"{path}:{line_number}: bad segment {start_s}-{end_s} s")
            label_ids = tuple(label for label in labels.split(",") if label)
            if not label_ids:
                raise OntologyError(f"{path}:{line_number}: no labels")
            segments.append(Segment(ytid, start_s, end_s, label_ids))
    if counts is None:
        raise OntologyError(f"{path}: no 'num_ytids=..., num_segs=...' header line")
    num_ytids, num_segs, num_labels, num_positive = map(int, counts.groups())
    observed = (len({s.ytid for s in segments}), len(segments),
                len({label for s in segments for label in s.labels}),
                sum(len(s.labels) for s in segments))
    if observed != (num_ytids, num_segs, num_labels, num_positive):
        raise OntologyError(
            f"{path}: header says ytids={num_ytids}, segs={num_segs}, labels={num_labels}, "
            f"positive={num_positive}; the rows give {observed} (truncated or edited file?)")
    return segments
