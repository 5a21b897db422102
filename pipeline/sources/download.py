"""One AudioSet section through yt-dlp: download it, decode it to 16 kHz mono, check it, and
write it as a FLAC clip. ``python -m pipeline.sources.download`` is the worker process
:mod:`pipeline.sources.workers` runs: settings, then one section a line, as JSON on stdin; one outcome
a line on stdout. It imports neither torch nor the params module, so it starts in well under
a second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.files import write_flac
from pipeline.processes import die_with_parent
from pipeline.sources.clips import ClipRejected, ClipRules, make_clip

# A decoded section may be this much shorter than asked for (codec priming, a cut that lands
# between two packets); anything shorter means the video ends inside the segment.
DURATION_TOLERANCE_SECONDS = 0.1

# error_kind -> (whether trying again later can help, what it means). The rule: retry
# timeouts, 429/5xx and broken connections, never what the video's owner or YouTube decided.
# docs/sources.md shows this table (tests/test_docs.py keeps the two equal).
ERROR_KINDS = {
    "timeout": (True, "no result within download.timeout_seconds"),
    "rate_limited": (True, "HTTP 429"),
    "server_error": (True, "HTTP 5xx"),
    "connection": (True, "refused, reset, DNS"),
    "bot_check": (True, "'confirm you're not a bot': wait, or give download.cookies"),
    "ffmpeg_failed": (True, "mostly a stream that broke off mid-section"),
    "worker_crashed": (True, "the download process died"),
    "not_found": (False, "HTTP 404 or 410"),
    "http_error": (False, "any other HTTP 4xx"),
    "private": (False, "a private video"),
    "unavailable": (False, "removed, terminated account, 'Video unavailable'"),
    "region_blocked": (False, "not available in this country"),
    "age_restricted": (False, "needs download.cookies of a signed-in adult"),
    "members_only": (False, "for channel members"),
    "no_audio": (False, "no format with an audio stream"),
    "undecodable": (False, "ffmpeg cannot decode it ('Invalid data found ...')"),
    "short_section": (False, "the video ends inside the segment"),
    "too_short": (False, "under half a clip, or shorter than one with source.short_clips: reject"),
    "silent": (False, "RMS below source.min_rms_db"),
    "non_finite": (False, "NaN or infinite samples"),
    "invalid_id": (False, "not an 11-character YouTube id; never requested"),
    "unknown_label": (False, "a label id the ontology does not know; never requested"),
    "other": (False, "anything unrecognised: the message is kept; --retry-failed retries it"),
}

# Checked in order against yt-dlp's message once the HTTP status (if any) has been looked at.
_MESSAGE_KINDS = [
    (r"private video", "private"),
    (r"confirm you.{0,3}re not a bot", "bot_check"),
    (r"confirm your age|age.restricted|inappropriate for some users", "age_restricted"),
    (r"in your country|geo.?restrict|from your location", "region_blocked"),
    (r"members.only|join this channel", "members_only"),
    (r"video unavailable|been removed|no longer available|terminated|does not exist|"
     r"is not available", "unavailable"),
    (r"requested format is not available|no (audio|video) formats", "no_audio"),
    (r"timed? ?out", "timeout"),
    (r"connection (refused|reset|aborted)|remote end closed|broken pipe|name or service not known|"
     r"temporary failure in name resolution|network is unreachable|failed to establish",
     "connection"),
    # what ffmpeg itself says, when it does the download
    (r"server returned 40[4]|server returned 410", "not_found"),
    (r"server returned 429", "rate_limited"),
    (r"server returned 5\d\d|5xx server error", "server_error"),
    (r"server returned 4\d\d|4xx client error", "http_error"),
    (r"invalid data found when processing input|moov atom not found|"
     r"could not find codec parameters", "undecodable"),
    (r"ffmpeg exited with code", "ffmpeg_failed"),
]


def is_retryable(kind: str | None) -> bool:
    return ERROR_KINDS.get(kind, (False, ""))[0]


@dataclass(frozen=True)
class DownloadSettings:
    url_template: str
    clips_dir: str
    work_dir: str
    rules: ClipRules
    ffmpeg: str  # the binary's path, see pipeline.sources.ffmpeg_binary
    socket_timeout: float = 30.0
    cookies: str = ""
    proxy: str = ""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> DownloadSettings:
        raw = json.loads(text)
        return cls(**raw | {"rules": ClipRules(**raw["rules"])})


@dataclass(frozen=True)
class Section:
    """One segment to fetch: ``ytid`` from ``start`` to ``end`` seconds, into ``file``."""

    id: str
    ytid: str
    start: float
    end: float
    file: str


@dataclass(frozen=True)
class Outcome:
    """How fetching a section went: no error_kind means its clip is written."""

    id: str
    error_kind: str | None = None
    error: str | None = None


def ytdlp_options(section: Section, settings: DownloadSettings, out_dir: Path, logger) -> dict:
    """Everything handed to ``yt_dlp.YoutubeDL`` for one section (docs/sources.md shows it)."""
    from yt_dlp.utils import download_range_func

    options = {
        "format": "bestaudio/best",
        "download_ranges": download_range_func(None, [(section.start, section.end)]),
        "force_keyframes_at_cuts": True,  # re-encode at the cut instead of snapping to a keyframe
        "outtmpl": str(out_dir / "section.%(ext)s"),
        "noplaylist": True,
        "socket_timeout": settings.socket_timeout,
        # retrying is ours to decide (permanent vs transient, backoff, the run's budget)
        "retries": 0, "fragment_retries": 0, "extractor_retries": 0,
        "cachedir": False,
        "logger": logger,
        "no_warnings": True, "noprogress": True,
        # not "quiet", which silences ffmpeg: its stderr is the only place it says why it
        # failed (see fetch_section); errors only, without the progress line
        "external_downloader_args": {"ffmpeg": ["-loglevel", "error", "-nostats"]},
        "ffmpeg_location": settings.ffmpeg,
    }
    if settings.cookies:
        options["cookiefile"] = settings.cookies
    if settings.proxy:
        options["proxy"] = settings.proxy
    return options


class _Messages:
    """yt-dlp's logger: keeps its error messages for the manifest instead of printing them."""

    def __init__(self):
        self.lines: list[str] = []

    def debug(self, message: str) -> None:
        pass

    info = debug

    def warning(self, message: str) -> None:
        if message.strip():
            self.lines.append(message.strip())

    error = warning


def classify(error: BaseException, ffmpeg_says: str = "") -> str:
    """The error_kind of a failed yt-dlp download (and what its ffmpeg printed)."""
    status = None
    for cause in _causes(error):
        status = status or getattr(cause, "status", None)
        if type(cause).__name__ == "GeoRestrictedError":
            return "region_blocked"
    if isinstance(status, int):
        if status in (404, 410):
            return "not_found"
        if status == 429:
            return "rate_limited"
        if status >= 500:
            return "server_error"
        if 400 <= status < 500:
            return "http_error"
    message = " ".join([str(cause) for cause in _causes(error)] + [ffmpeg_says]).lower()
    for pattern, kind in _MESSAGE_KINDS:
        if re.search(pattern, message):
            return kind
    return "other"


def _causes(error: BaseException):
    """The error, the exception yt-dlp wrapped in it, and their ``__cause__`` chains."""
    seen = []
    pending = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is s for s in seen):
            continue
        seen.append(current)
        wrapped = getattr(current, "exc_info", None)
        pending += [current.__cause__, current.__context__,
                    wrapped[1] if isinstance(wrapped, tuple) and len(wrapped) > 1 else None]
    return seen


def decode(path: Path, sample_rate: int, ffmpeg: str) -> np.ndarray:
    """Any media file ffmpeg reads -> mono float32 at ``sample_rate``."""
    result = subprocess.run(
        [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-vn", "-ac", "1",
         "-ar", str(sample_rate), "-f", "f32le", "-"],
        capture_output=True, check=False)
    if result.returncode != 0 or not result.stdout:
        detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no audio"]
        raise ClipRejected("undecodable", f"ffmpeg could not decode the section: {detail[0]}")
    return np.frombuffer(result.stdout, dtype=np.float32)


def fetch_section(section: Section, settings: DownloadSettings) -> Outcome:
    """Download, check and write one clip; every failure comes back as an Outcome."""
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    # yt-dlp's check that ffmpeg can cut sections ignores the ffmpeg_location option; its
    # own command line sets this instead (yt_dlp/__init__.py), and so do we
    FFmpegPostProcessor._ffmpeg_location.set(settings.ffmpeg)
    work = Path(settings.work_dir) / section.id
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    messages = _Messages()
    ffmpeg_log = work / "ffmpeg.log"
    try:
        url = settings.url_template.format(ytid=section.ytid)
        options = ytdlp_options(section, settings, work, messages)
        with _stderr_to(ffmpeg_log), yt_dlp.YoutubeDL(options) as ydl:
            info = ydl.extract_info(url, download=True)
        downloads = (info or {}).get("requested_downloads") or []
        if not downloads or not Path(downloads[0]["filepath"]).exists():
            raise ClipRejected("other", "yt-dlp reported success but wrote no file")
        audio = decode(Path(downloads[0]["filepath"]), settings.rules.sample_rate, settings.ffmpeg)
        write_flac(Path(settings.clips_dir) / section.file, _section_clip(audio, section, settings.rules),
                   settings.rules.sample_rate)
        return Outcome(section.id)
    except ClipRejected as rejected:
        return Outcome(section.id, rejected.kind, str(rejected))
    except yt_dlp.utils.DownloadError as error:
        ffmpeg_says = ffmpeg_log.read_text(errors="replace").strip().splitlines()[-2:]
        message = " | ".join(messages.lines + ffmpeg_says) or str(error)
        return Outcome(section.id, classify(error, " ".join(ffmpeg_says)), _strip_prefix(message))
    except Exception as error:  # recorded in the manifest rather than ending the run
        return Outcome(section.id, classify(error), f"{type(error).__name__}: {error}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2, which yt-dlp's ffmpeg inherits, at ``path`` for the block,
    then copy what was written there to the worker's own stderr (its log)."""
    saved = os.dup(2)
    with open(path, "wb") as capture:
        os.dup2(capture.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.write(path.read_text(errors="replace"))
        sys.stderr.flush()


def _section_clip(audio: np.ndarray, section: Section, rules: ClipRules) -> np.ndarray:
    wanted = round((section.end - section.start) * rules.sample_rate)
    if len(audio) < wanted - DURATION_TOLERANCE_SECONDS * rules.sample_rate:
        raise ClipRejected("short_section", f"got {len(audio) / rules.sample_rate:.2f} s of the "
                                            f"{section.end - section.start:g} s segment")
    return make_clip(audio[:wanted], rules)


def _strip_prefix(message: str) -> str:
    return re.sub(r"^ERROR:\s*", "", message).strip()[:500]


def serve(stdin=sys.stdin) -> None:
    """The worker loop. Anything a child process prints goes to stderr, never into replies."""
    # go with the acquire process, even on SIGKILL, instead of finishing a download nobody
    # will record (a parent gone before this call closes stdin, which ends the loop too)
    die_with_parent()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    settings = DownloadSettings.from_json(stdin.readline())
    replies.write("ready\n")
    for line in stdin:
        outcome = fetch_section(Section(**json.loads(line)), settings)
        replies.write(json.dumps(dataclasses.asdict(outcome)) + "\n")


if __name__ == "__main__":
    serve()
