"""AudioSet sections as cluster tasks: a few sections fetched on whichever machine runs the task.

A task runs the same download worker as a local run (:mod:`pipeline.sources.download`, under
:class:`~pipeline.sources.workers.WorkerPool`'s wall-clock limit), retries transient failures
with the same backoff, and sends the clips back as FLAC bytes, so the machine that runs the
stage writes every shard and the workers need no shared disk. The pace between download
starts holds per machine, over all the worker processes on it (one address, one rate limit).

Imports neither torch nor the params module: cluster workers load it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.sources.download import DownloadSettings, Section, is_retryable
from pipeline.sources.workers import WorkerPool


class HostPace:
    """At least ``interval`` seconds between download starts to one host, over every process
    of this machine (a lock file in the temp folder holds the next start time)."""

    def __init__(self, interval: float, url_template: str):
        self.interval = interval
        host = urlsplit(url_template.format(ytid="x")).netloc or "local"
        key = hashlib.sha1(host.encode()).hexdigest()[:12]
        self.path = Path(tempfile.gettempdir()) / f"specldm-pace-{os.getuid()}-{key}"

    def wait_turn(self) -> None:
        if self.interval <= 0:
            return
        with open(self.path, "a+") as file:
            fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes
            file.seek(0)
            text = file.read().strip()
            next_start = float(text) if text else 0.0
            time.sleep(max(0.0, next_start - time.time()))
            file.seek(0)
            file.truncate()
            file.write(f"{time.time() + self.interval}")


@dataclass(frozen=True)
class DownloadTask:
    sections: tuple[Section, ...]
    settings: str  # DownloadSettings.to_json(); its folders are replaced by the worker's own
    timeout_seconds: float
    retries: int
    backoff_seconds: float
    sleep_seconds: float


@dataclass(frozen=True)
class SectionResult:
    id: str
    attempts: tuple[tuple[str | None, str | None], ...]  # (error_kind, error) of each; (None, None) is ok
    flac: bytes | None


def fetch_sections(task: DownloadTask) -> list[SectionResult]:
    """Each section of ``task``, tried until it is written, fails permanently or runs out of
    retries."""
    with tempfile.TemporaryDirectory(prefix="specldm-download-") as work:
        settings = dataclasses.replace(DownloadSettings.from_json(task.settings), clips_dir=f"{work}/clips",
                                       work_dir=f"{work}/work")
        Path(settings.clips_dir).mkdir()
        pace = HostPace(task.sleep_seconds, settings.url_template)
        results = []
        with WorkerPool("pipeline.sources.download", settings.to_json(), 1, task.timeout_seconds,
                        Path(settings.work_dir)) as pool:
            for section in task.sections:
                attempts = []
                while True:
                    while not pool.idle:
                        pool.wait(timeout=0.2)
                    pace.wait_turn()
                    pool.submit(dataclasses.asdict(section))
                    while not (finished := pool.wait(timeout=0.2)):
                        pass
                    _, reply, lost = finished[0]
                    kind = lost or reply["error_kind"]
                    attempts.append((kind, pool.crash_detail(lost) if lost else reply["error"]))
                    if kind is None or not is_retryable(kind) or len(attempts) > task.retries:
                        break
                    time.sleep(task.backoff_seconds * 2 ** (len(attempts) - 1))
                clip = Path(settings.clips_dir) / section.file
                results.append(SectionResult(section.id, tuple(attempts), clip.read_bytes() if kind is None else None))
        return results
