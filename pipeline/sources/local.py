"""``source.kind: local``: your own recordings, in ``source.dir``, labelled by ``source.labels_csv``.

The CSV has a header and the columns ``path`` (relative to the folder) and ``labels``
(AudioSet ids or display names, separated by ``;``; AudioSet's own comma-separated id lists
work too). Any file soundfile reads, at any rate, mono or stereo. A problem with the CSV
stops the stage with every offending line listed; a problem with a recording (missing,
empty, corrupt, too many channels, NaN or infinite samples, silent, too short) is a
``failed`` manifest row.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from pipeline.errors import AcquireError
from pipeline.files import write_flac
from pipeline.ontology import Ontology, OntologyError
from pipeline.sources.clip_shards import staged_path
from pipeline.sources.clips import ClipRejected, ClipRules, check_finite, clip_windows, make_clip, resample, to_mono
from pipeline.sources.manifest import mark_failed, mark_ok, new_row

SOURCE = "local"
COLUMNS = ("path", "labels")
_ID_LIST = re.compile(r"\s*/[mt]/\w+\s*(,\s*/[mt]/\w+\s*)+")
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class Recording:
    path: str  # relative to the folder, with forward slashes
    labels: tuple[str, ...]  # ontology ids


def parse_labels(text: str, ontology: Ontology, suggest: bool = True) -> tuple[str, ...]:
    items = text.split(",") if _ID_LIST.fullmatch(text) else text.split(";")
    labels = [ontology.resolve(item, suggest) for item in items if item.strip()]
    if not labels:
        raise OntologyError("no labels")
    return tuple(dict.fromkeys(labels))


def read_labels_csv(csv_path: Path, folder: Path, ontology: Ontology) -> list[Recording]:
    """The CSV's recordings, or an AcquireError listing every bad line."""
    if not csv_path.is_file():
        raise AcquireError(f"source.labels_csv: {csv_path} not found")
    if not folder.is_dir():
        raise AcquireError(f"source.dir: {folder} is not a folder")
    root = folder.resolve()
    recordings, problems, first_line = [], [], {}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not set(COLUMNS) <= {c.strip() for c in reader.fieldnames}:
            raise AcquireError(f"{csv_path}: the first line must be the header "
                               f"'{','.join(COLUMNS)}'; got {reader.fieldnames}")
        reader.fieldnames = [c.strip() for c in reader.fieldnames]
        for row in reader:
            line = reader.line_num
            if None in row or None in row.values():
                problems.append(f"line {line}: expected {len(reader.fieldnames)} fields")
                continue
            path, labels = row["path"].strip(), row["labels"].strip()
            if not path or not labels:
                problems.append(f"line {line}: empty {'path' if not path else 'labels'}")
                continue
            try:
                resolved = (root / path).resolve()
            except (OSError, RuntimeError):  # a symlink loop: that row fails when it is read
                resolved = Path(os.path.normpath(root / path))
            if Path(path).is_absolute() or not resolved.is_relative_to(root):
                problems.append(f"line {line}: {path!r} is outside source.dir")
                continue
            relative = resolved.relative_to(root).as_posix()
            if relative in first_line:
                problems.append(f"line {line}: {relative!r} is listed again "
                                f"(first on line {first_line[relative]})")
                continue
            first_line[relative] = line
            try:
                # close names only for the lines listed: 10^5 garbage rows used to take 99 s
                suggest = len(problems) < MAX_LISTED_PROBLEMS
                recordings.append(Recording(relative, parse_labels(labels, ontology, suggest)))
            except OntologyError as error:
                problems.append(f"line {line}: {error}")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise AcquireError(f"{csv_path}: {len(problems)} bad lines\n  {listed}"
                           + (f"\n  ... and {more} more" if more > 0 else ""))
    if not recordings:
        raise AcquireError(f"{csv_path}: lists no recordings")
    return recordings


def recording_id(path: str) -> str:
    """Readable and unique: a slug of the path and a hash of all of it."""
    slug = re.sub(r"[^A-Za-z0-9]+", "_", Path(path).stem).strip("_")[:40] or "clip"
    return f"local-{slug}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def read_recording(path: Path, rules: ClipRules):
    """Mono float32 at the clip rate, or ClipRejected."""
    if not path.is_file():
        if path.is_symlink():
            raise ClipRejected("missing", f"{path} is a symlink to nothing readable (a loop, or a missing target)")
        raise ClipRejected("missing", f"{path} does not exist")
    if path.stat().st_size == 0:
        raise ClipRejected("empty", "zero-length file")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as error:
        raise ClipRejected("corrupt", f"soundfile cannot read it: {error}") from None
    if len(audio) == 0:
        raise ClipRejected("empty", "no audio frames")
    check_finite(audio)  # before resampling, which would smear one NaN over its neighbours
    return resample(to_mono(audio), rate, rules.sample_rate)


def clips_of(recording: Recording, folder: Path, raw_dir: Path, rules: ClipRules) -> list[dict]:
    """The manifest rows of one recording, its clips written."""
    base = recording_id(recording.path)
    try:
        audio = read_recording(folder / recording.path, rules)
    except ClipRejected as rejected:
        row = new_row(f"{base}-000", SOURCE, recording.path, list(recording.labels))
        row["attempts"] = 1
        return [mark_failed(row, rejected.kind, str(rejected))]
    rows = []
    for index, (start, end) in enumerate(clip_windows(len(audio), rules)):
        clip_id = f"{base}-{index:03d}"
        row = new_row(clip_id, SOURCE, recording.path, list(recording.labels),
                      start / rules.sample_rate, end / rules.sample_rate)
        row["attempts"] = 1
        try:
            clip = make_clip(audio[start:end], rules)
        except ClipRejected as rejected:
            rows.append(mark_failed(row, rejected.kind, str(rejected)))
            continue
        staged = staged_path(raw_dir, clip_id)
        write_flac(staged, clip, rules.sample_rate)
        rows.append(mark_ok(row, staged))
    return rows


def acquire_local(folder: Path, labels_csv: Path, rules: ClipRules, raw_dir: Path,
                  ontology: Ontology) -> list[dict]:
    recordings = read_labels_csv(labels_csv, folder, ontology)
    rows = []
    for recording in tqdm(recordings, desc="acquire local", unit="file", file=sys.stderr):
        rows += clips_of(recording, folder, raw_dir, rules)
    return rows
