"""``source.kind: audioset``: AudioSet segments, each downloaded as a 10 s section with yt-dlp.

The manifest is the run's memory. Every selected segment has a row from the start
(``pending``); the row becomes ``ok`` when its clip is on disk, or ``failed`` with an error
kind. The manifest is rewritten every few seconds and on Ctrl-C, and clips are written
atomically, so a run killed at any point (even with SIGKILL) loses nothing: the next run
adopts every clip already on disk, skips permanent failures and retries the rest.
"""

from __future__ import annotations

import heapq
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from pipeline.config.source import DownloadParams, SourceParams
from pipeline.errors import AcquireError
from pipeline.ontology import Ontology, OntologyError
from pipeline.sources.clip_shards import (
    STAGING_SUBDIR,
    ClipStore,
    Sealer,
    assign_shards,
    held_clips,
    stage_clip,
    staged_path,
)
from pipeline.sources.clips import ClipRules
from pipeline.sources.download import DownloadSettings, Section, is_retryable
from pipeline.sources.download_tasks import DownloadTask, fetch_sections
from pipeline.sources.ffmpeg_binary import FfmpegMissing, ffmpeg_executable
from pipeline.sources.manifest import mark_failed, mark_ok, new_row, read_manifest_rows, write_manifest
from pipeline.sources.segments import YTID_PATTERN, Segment, read_segments
from pipeline.sources.workers import WorkerPool, WorkerStartError

SOURCE = "audioset"
WORK_SUBDIR = ".downloads"  # beside clips/; yt-dlp's files and the workers' logs
MANIFEST_EVERY_SECONDS = 5.0
# This many failed attempts in a row of these kinds mean no download can work now (offline,
# wrong proxy, an IP YouTube has blocked): stop, rather than fail every segment in turn.
GIVE_UP_AFTER = 20
GIVE_UP_KINDS = {
    "connection": "check the network, download.proxy and source.url_template",
    "bot_check": "YouTube wants proof of a human: give download.cookies, or wait and "
                 "raise download.sleep_seconds",
    "rate_limited": "YouTube is rate-limiting: wait, and raise download.sleep_seconds",
}


def segment_id(ytid: str, start_seconds: float) -> str:
    return f"{ytid}_{round(start_seconds * 1000)}"


@dataclass
class Plan:
    rows: list[dict]
    duplicates: list[str] = field(default_factory=list)


def read_all_segments(paths: tuple[str, ...]) -> tuple[list[Segment], list[str]]:
    """Every segment of the CSVs in order; a segment listed again is skipped and named."""
    segments, seen, duplicates = [], set(), []
    for path in paths:
        if not Path(path).exists():
            raise AcquireError(f"source.segments: {path} not found; the official lists are "
                               "data/meta/balanced_train_segments.csv and eval_segments.csv")
        try:
            listed = read_segments(Path(path))
        except OntologyError as error:
            raise AcquireError(str(error)) from None
        for segment in listed:
            key = segment_id(segment.ytid, segment.start_seconds)
            if key in seen:
                duplicates.append(key)
            else:
                seen.add(key)
                segments.append(segment)
    return segments, duplicates


def select(segments: list[Segment], source: SourceParams, ontology: Ontology) -> list[Segment]:
    """The class filter, then a seeded choice under the per-class cap and the limit, returned
    in CSV order."""
    wanted = None
    if source.classes:
        try:
            wanted = set().union(*(ontology.descendants(ontology.resolve(c)) for c in source.classes))
        except OntologyError as error:
            raise AcquireError(f"source.classes: {error}") from None
        segments = [s for s in segments if wanted.intersection(s.labels)]
    if not (source.max_per_class or source.limit):
        return segments
    order = np.random.default_rng(source.seed).permutation(len(segments))
    counts: Counter[str] = Counter()
    chosen = []
    for index in order:
        labels = [label for label in segments[index].labels if wanted is None or label in wanted]
        if source.max_per_class and all(counts[label] >= source.max_per_class for label in labels):
            continue
        counts.update(labels)
        chosen.append(index)
        if len(chosen) == source.limit:
            break
    return [segments[i] for i in sorted(chosen)]


def plan(source: SourceParams, rules: ClipRules, ontology: Ontology) -> Plan:
    """One row per selected segment: pending, or failed when it cannot be fetched at all."""
    segments, duplicates = read_all_segments(source.segments)
    rows = []
    for segment in select(segments, source, ontology):
        row = new_row(segment_id(segment.ytid, segment.start_seconds), SOURCE, segment.ytid,
                      list(segment.labels), segment.start_seconds, segment.end_seconds)
        unknown = [label for label in segment.labels if label not in ontology]
        length = segment.end_seconds - segment.start_seconds
        if not YTID_PATTERN.fullmatch(segment.ytid):
            mark_failed(row, "invalid_id", f"{segment.ytid!r} is not an 11-character YouTube id")
        elif unknown:
            mark_failed(row, "unknown_label", f"labels not in the ontology: {', '.join(unknown)}")
        elif length < rules.clip_seconds and rules.short_clips == "reject":
            mark_failed(row, "too_short", f"the segment is {length:g} s (source.short_clips: reject)")
        rows.append(row)
    assign_shards(rows, source.shard_clips)
    return Plan(rows, duplicates)


def _is_clip(path: Path, rules: ClipRules) -> bool:
    try:
        info = sf.info(path)
    except (RuntimeError, OSError):  # missing, or not audio
        return False
    return (info.samplerate, info.channels, info.frames) == (rules.sample_rate, 1, rules.clip_frames)


def resume(rows: list[dict], previous: dict[str, dict], raw_dir: Path, rules: ClipRules,
           retry_failed: bool = False) -> list[dict]:
    """Carry over what earlier runs did. A clip on disk (sealed in any shard, or staged) is
    kept whatever its old row says (a run killed between writing the clip and the manifest);
    a permanent failure stays failed unless ``retry_failed``; everything else is pending,
    its attempts counted on."""
    held, store = held_clips(raw_dir), ClipStore(raw_dir)
    for row in rows:
        if row["status"] == "failed":
            continue
        before = previous.get(row["id"])
        if before is not None and before["labels"] != row["labels"]:
            before = None  # another segment under the same id: nothing of it carries over
        staged = staged_path(raw_dir, row["id"])
        if row["id"] in held or _is_clip(staged, rules):
            if before is not None and before["status"] == "ok":
                row.update(before | {"path": row["path"]})
            else:
                row["attempts"] = max(1, before["attempts"] if before else 0)
                if row["id"] in held:
                    found, clip = raw_dir / held[row["id"]], store.flac(held[row["id"]], row["id"])
                else:
                    found = clip = staged
                mark_ok(row, clip, datetime.fromtimestamp(found.stat().st_mtime, UTC))
        elif before is not None:
            row["attempts"] = before["attempts"]
            if before["status"] == "failed":
                row.update(error_kind=before["error_kind"], error=before["error"],
                           updated_at=before["updated_at"])
                if not (retry_failed or is_retryable(before["error_kind"])):
                    row["status"] = "failed"
    return rows


def read_previous(manifest: Path) -> dict[str, dict]:
    if not manifest.exists():
        return {}
    try:
        rows = read_manifest_rows(manifest)
    except (ValueError, OSError) as error:
        print(f"acquire: starting afresh; the earlier manifest is unreadable ({error})",
              file=sys.stderr)
        return {}
    return {r["id"]: r for r in rows if r["source"] == SOURCE}


class Pacer:
    """When downloads may start: at least ``interval`` seconds apart over all workers (one
    address's rate limit), and retries only once their backoff has passed. Time comes from
    ``clock``, so that tests can pace a run without waiting for it."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self.next_start = clock()
        self.waiting: list[tuple[float, str]] = []  # (time to retry at, id), soonest first

    def may_start(self) -> bool:
        return self.clock() >= self.next_start

    def started(self) -> None:
        self.next_start = self.clock() + self.interval

    def retry_later(self, key: str, delay: float) -> None:
        heapq.heappush(self.waiting, (self.clock() + delay, key))

    def due(self) -> list[str]:
        """The retries whose time has come, soonest first."""
        now, ready = self.clock(), []
        while self.waiting and self.waiting[0][0] <= now:
            ready.append(heapq.heappop(self.waiting)[1])
        return ready


class Ledger:
    """What a download run records, however its attempts are run: attempts and outcomes in
    the rows, the give-up rule, the progress bar, and every few seconds the settled shards
    sealed and the manifest rewritten."""

    def __init__(self, rows: list[dict], raw_dir: Path, manifest: Path, todo: int):
        self.rows, self.raw_dir, self.manifest = rows, raw_dir, manifest
        self.sealer = Sealer(rows, raw_dir)
        self.outcomes: Counter[str] = Counter()
        self.streak = 0  # failed attempts in a row of a GIVE_UP_KINDS kind
        self.touched: set[str] = set()
        self.last_write = time.monotonic()
        self.bar = tqdm(total=todo, desc="acquire audioset", unit="clip", file=sys.stderr)

    def attempted(self, row: dict, kind: str | None, message: str | None) -> None:
        row["attempts"] += 1
        self.streak = self.streak + 1 if kind in GIVE_UP_KINDS else 0
        if self.streak >= GIVE_UP_AFTER:
            raise AcquireError(f"the last {self.streak} download attempts all failed "
                               f"({kind}: {message}); {GIVE_UP_KINDS[kind]}. "
                               "The manifest keeps what was done; run again later")

    def settled(self, row: dict, kind: str | None, message: str | None, flac: bytes | None = None) -> None:
        """The row's last attempt: ok (its clip staged, by the worker or from ``flac``) or failed."""
        stamp = datetime.now(UTC)
        if kind is None and flac is not None:
            stage_clip(self.raw_dir, row, flac, stamp)
        elif kind is None:
            mark_ok(row, staged_path(self.raw_dir, row["id"]), stamp)
        else:
            mark_failed(row, kind, message, stamp)
        self.touched.add(row["path"])
        self.outcomes[kind or "ok"] += 1
        self.bar.update()
        self.bar.set_postfix(ok=self.outcomes["ok"], failed=self.bar.n - self.outcomes["ok"], refresh=False)

    def checkpoint(self) -> None:
        if time.monotonic() - self.last_write > MANIFEST_EVERY_SECONDS:
            self.sealer.seal(self.touched)
            self.touched = set()
            write_manifest(self.rows, self.manifest)
            self.last_write = time.monotonic()

    def close(self) -> None:
        self.bar.close()
        write_manifest(self.rows, self.manifest)


def download(rows: list[dict], raw_dir: Path, manifest: Path, settings: DownloadSettings,
             options: DownloadParams) -> Counter:
    """Fetch every pending row with this machine's worker processes, rewriting the manifest
    as it goes. Returns outcome counts."""
    todo = deque(r for r in rows if r["status"] == "pending")
    if not todo:
        return Counter()
    by_id = {r["id"]: r for r in todo}
    tries: Counter[str] = Counter()
    pace = Pacer(options.sleep_seconds)
    ledger = Ledger(rows, raw_dir, manifest, len(todo))
    try:
        with WorkerPool("pipeline.sources.download", settings.to_json(), min(options.workers, len(todo)),
                        options.timeout_seconds, Path(settings.work_dir)) as pool:
            while todo or pace.waiting or pool.busy:
                todo.extend(by_id[key] for key in pace.due())
                while todo and pool.idle and pace.may_start():
                    row = todo.popleft()
                    pool.submit(asdict(section_of(row, raw_dir)))
                    pace.started()
                for task, reply, lost in pool.wait(timeout=0.2):
                    row = by_id[task["id"]]
                    tries[row["id"]] += 1
                    kind = lost or reply["error_kind"]
                    message = pool.crash_detail(lost) if lost else reply["error"]
                    ledger.attempted(row, kind, message)
                    if kind is not None and is_retryable(kind) and tries[row["id"]] <= options.retries:
                        row.update(error_kind=kind, error=message, updated_at=datetime.now(UTC))
                        pace.retry_later(row["id"], options.backoff_seconds * 2 ** (tries[row["id"]] - 1))
                        continue
                    ledger.settled(row, kind, message)
                ledger.checkpoint()
    except WorkerStartError as error:
        raise AcquireError(str(error)) from None
    finally:
        ledger.close()
    return ledger.outcomes


def download_on(engine, rows: list[dict], raw_dir: Path, manifest: Path, settings: DownloadSettings,
                options: DownloadParams, task_clips: int) -> Counter:
    """Fetch every pending row as cluster tasks of ``task_clips`` sections each
    (:mod:`pipeline.sources.download_tasks`), recording as :func:`download` does."""
    todo = [r for r in rows if r["status"] == "pending"]
    if not todo:
        return Counter()
    chunks = [todo[start:start + task_clips] for start in range(0, len(todo), task_clips)]
    tasks = (DownloadTask(tuple(section_of(row, raw_dir) for row in chunk), settings.to_json(),
                          options.timeout_seconds, options.retries, options.backoff_seconds,
                          options.sleep_seconds) for chunk in chunks)
    ledger = Ledger(rows, raw_dir, manifest, len(todo))
    try:
        for chunk, results in zip(chunks, engine.map(fetch_sections, tasks)):
            for row, result in zip(chunk, results):
                for kind, message in result.attempts:
                    ledger.attempted(row, kind, message)
                ledger.settled(row, *result.attempts[-1], result.flac)
            ledger.checkpoint()
    finally:
        ledger.close()
    return ledger.outcomes


def section_of(row: dict, raw_dir: Path) -> Section:
    return Section(row["id"], row["origin"], row["start_seconds"], row["end_seconds"],
                   staged_path(raw_dir, row["id"]).name)


def settings_for(source: SourceParams, options: DownloadParams, rules: ClipRules,
                 raw_dir: Path) -> DownloadSettings:
    try:
        ffmpeg = ffmpeg_executable()  # yt-dlp cuts sections with it
    except FfmpegMissing as error:
        raise AcquireError(str(error)) from None
    if options.cookies and not Path(options.cookies).is_file():
        raise AcquireError(f"download.cookies: {options.cookies} is not a file")
    return DownloadSettings(
        url_template=source.url_template, clips_dir=str(raw_dir / STAGING_SUBDIR),
        work_dir=str(raw_dir / WORK_SUBDIR), rules=rules, ffmpeg=ffmpeg,
        socket_timeout=min(30.0, options.timeout_seconds), cookies=options.cookies,
        proxy=options.proxy)


def acquire_audioset(source: SourceParams, options: DownloadParams, rules: ClipRules,
                     raw_dir: Path, manifest: Path, ontology: Ontology,
                     retry_failed: bool = False, engine=None, task_clips: int = 16) -> tuple[list[dict], list[str]]:
    """Rows of the finished manifest, and lines for the summary. With a cluster ``engine``
    (:mod:`pipeline.engine`), the downloads run as its tasks."""
    settings = settings_for(source, options, rules, raw_dir)
    selection = plan(source, rules, ontology)
    rows = resume(selection.rows, read_previous(manifest), raw_dir, rules, retry_failed)
    before = Counter(r["status"] for r in rows)
    shutil.rmtree(settings.work_dir, ignore_errors=True)
    if engine is None:
        outcomes = download(rows, raw_dir, manifest, settings, options)
    else:
        outcomes = download_on(engine, rows, raw_dir, manifest, settings, options, task_clips)
    notes = ["this run:",
             f"  {outcomes['ok']:6d}  downloaded",
             f"  {sum(outcomes.values()) - outcomes['ok']:6d}  failed",
             f"  {before['ok']:6d}  skipped: already on disk",
             f"  {before['failed']:6d}  skipped: failed permanently before, or cannot be fetched"]
    if selection.duplicates:
        notes.append(f"  {len(selection.duplicates):6d}  skipped: listed twice in the CSVs "
                     f"({', '.join(selection.duplicates[:3])}...)")
    return rows, notes
