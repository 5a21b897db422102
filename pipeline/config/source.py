"""``source`` (what ``acquire`` delivers) and ``download`` (how it fetches AudioSet)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require, require_template

SOURCE_KINDS = ("synthetic", "audioset", "local")
SHORT_CLIP_RULES = ("pad", "reject")
LONG_CLIP_RULES = ("split", "trim")


@dataclass(frozen=True)
class SourceParams:
    """What ``acquire`` delivers. How it downloads (workers, retries...) is ``download``."""

    kind: str = "synthetic"
    seed: int = 0
    # synthetic: how many classes of the catalogue (in catalogue order), clips of each,
    # and the fraction of clips that also carry a second, overlaid sound and its label.
    num_classes: int = 24
    # 40: enough test clips (about 144) that each ceiling's 95% interval is within +-0.06
    clips_per_class: int = 40
    two_label_fraction: float = 0.15
    # audioset: the segment CSVs; optionally only segments with a label in or below
    # `classes` (ids or display names), at most max_per_class per label (0: no cap, seeded
    # choice), and at most `limit` segments in all (0: no limit, seeded choice).
    segments: tuple[str, ...] = ("data/meta/balanced_train_segments.csv",)
    classes: tuple[str, ...] = ()
    max_per_class: int = 0
    limit: int = 0
    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    # local: a folder of audio files and a `path,labels` CSV (paths relative to the folder)
    dir: str = ""
    labels_csv: str = ""
    # recorded audio (audioset, local): audio shorter than a clip is padded with silence (if
    # it is at least half a clip) or rejected; a local file longer than a clip is split into
    # whole clips or trimmed to one; a clip whose RMS is below min_rms_db (dBFS) is rejected
    # as silent.
    short_clips: str = "pad"
    long_clips: str = "split"
    min_rms_db: float = -60.0
    # clips per file of data/raw/clips: ~50 MB of FLAC at 256. At AudioSet scale, a few
    # thousand keep DVC's and the object store's file count in the hundreds.
    shard_clips: int = 256

    def __post_init__(self) -> None:
        require(self.kind in SOURCE_KINDS, "source.kind", f"must be one of {SOURCE_KINDS}")
        require(self.num_classes >= 1, "source.num_classes", "must be at least 1")
        require(self.clips_per_class >= 1, "source.clips_per_class", "must be at least 1")
        require(0.0 <= self.two_label_fraction <= 1.0, "source.two_label_fraction",
                "must be within [0, 1]")
        require(self.max_per_class >= 0, "source.max_per_class", "must be 0 (no cap) or more")
        require(self.limit >= 0, "source.limit", "must be 0 (no limit) or more")
        require_template(self.url_template, "source.url_template", ("ytid",))
        require(self.short_clips in SHORT_CLIP_RULES, "source.short_clips",
                f"must be one of {SHORT_CLIP_RULES}")
        require(self.long_clips in LONG_CLIP_RULES, "source.long_clips",
                f"must be one of {LONG_CLIP_RULES}")
        require(self.shard_clips >= 1, "source.shard_clips", "must be at least 1")
        require(self.min_rms_db < 0, "source.min_rms_db", "must be below 0 dBFS")
        if self.kind == "audioset":
            require(bool(self.segments), "source.segments",
                    "needs at least one segment CSV when source.kind is audioset")
        if self.kind == "local":
            require(bool(self.dir), "source.dir", "is required when source.kind is local")
            require(bool(self.labels_csv), "source.labels_csv",
                    "is required when source.kind is local")


@dataclass(frozen=True)
class DownloadParams:
    """How ``source.kind: audioset`` downloads. None of it changes what a finished clip
    holds, so dvc.yaml does not list it: after changing it, `dvc repro -f acquire`."""

    workers: int = 4
    # wall-clock limit on one attempt at one clip; its worker is killed past it
    timeout_seconds: float = 120.0
    # extra attempts per run for transient failures (timeouts, 429, 5xx, lost connections),
    # waiting backoff_seconds, then twice that, and so on; permanent ones are never retried
    retries: int = 3
    backoff_seconds: float = 5.0
    # the least time between the starts of two downloads, over all workers (a rate limit)
    sleep_seconds: float = 0.0
    # a Netscape cookies.txt (YouTube asks signed-in users less often to prove they are not
    # a bot) and a proxy URL; both are handed to yt-dlp as they are
    cookies: str = ""
    proxy: str = ""

    def __post_init__(self) -> None:
        require(self.workers >= 1, "download.workers", "must be at least 1")
        require(self.timeout_seconds > 0, "download.timeout_seconds", "must be positive")
        require(self.retries >= 0, "download.retries", "must be 0 or more")
        require(self.backoff_seconds >= 0, "download.backoff_seconds", "must be 0 or more")
        require(self.sleep_seconds >= 0, "download.sleep_seconds", "must be 0 or more")
