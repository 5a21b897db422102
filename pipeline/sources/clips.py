"""Recorded audio -> fixed-length mono clips: the checks and cuts every recorded source shares.

Imports neither torch nor the params module, because download workers load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd

import numpy as np
from scipy.signal import resample_poly

MAX_CHANNELS = 2  # mono or stereo; a wider layout has no single obvious downmix
MIN_PADDED_FRACTION = 0.5  # the least of a clip that padding may complete


class ClipRejected(Exception):
    """This audio cannot become a clip; ``kind`` names why, for the manifest's error_kind."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ClipRules:
    """``source.short_clips``, ``source.long_clips`` and ``source.min_rms_db`` with the clip
    length they apply to."""

    sample_rate: int
    clip_seconds: float
    short_clips: str
    long_clips: str
    min_rms_db: float

    @property
    def clip_frames(self) -> int:
        return round(self.sample_rate * self.clip_seconds)


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,), averaging a stereo pair."""
    if audio.ndim == 1:
        return audio
    if not 1 <= audio.shape[1] <= MAX_CHANNELS:
        raise ClipRejected("channels", f"{audio.shape[1]} channels; expected mono or stereo")
    return audio.mean(axis=1, dtype=np.float32)


MAX_SAMPLE_RATE = 768_000  # the highest rate audio interfaces record at; a header above it lies


def resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    if rate == target_rate:
        return audio
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        # resample_poly's filter grows with the rate: a header claiming 2^31-1 Hz allocates until it dies
        raise ClipRejected("corrupt", f"its header claims {rate} Hz (an audio file has 1 to {MAX_SAMPLE_RATE} Hz)")
    divisor = gcd(rate, target_rate)
    return resample_poly(audio, target_rate // divisor, rate // divisor).astype(np.float32)


def rms_db(audio: np.ndarray) -> float:
    """Root-mean-square level in dBFS (a full-scale square wave is 0)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    return 20 * np.log10(max(rms, 1e-10))


def check_loudness(audio: np.ndarray, rules: ClipRules) -> None:
    level = rms_db(audio)
    if level < rules.min_rms_db:
        raise ClipRejected("silent", f"RMS {level:.1f} dBFS is below source.min_rms_db="
                                     f"{rules.min_rms_db:g}")


def check_finite(audio: np.ndarray) -> None:
    bad = int(np.count_nonzero(~np.isfinite(audio)))
    if bad:
        raise ClipRejected("non_finite", f"{bad} of {audio.size} samples are NaN or infinite")


def make_clip(audio: np.ndarray, rules: ClipRules) -> np.ndarray:
    """Exactly one clip (see :func:`fit_to_clip`), refused if any sample is not finite or
    if the clip, as it will be used (padding included), is silent."""
    check_finite(audio)
    clip = fit_to_clip(audio, rules)
    check_loudness(clip, rules)
    return clip


def fit_to_clip(audio: np.ndarray, rules: ClipRules) -> np.ndarray:
    """Exactly one clip: a short one padded with trailing silence (or rejected), a long one
    cut. Padding takes at least half a clip of audio: less would be mostly silence."""
    frames = rules.clip_frames
    if len(audio) < frames:
        seconds = f"{len(audio) / rules.sample_rate:.2f} s"
        if rules.short_clips == "reject":
            raise ClipRejected("too_short", f"{seconds} is shorter than a {rules.clip_seconds:g} s "
                                            "clip (source.short_clips: reject)")
        if len(audio) < frames * MIN_PADDED_FRACTION:
            raise ClipRejected("too_short", f"{seconds} is less than half a {rules.clip_seconds:g} s "
                                            "clip, too little to pad into one")
        return np.pad(audio, (0, frames - len(audio)))
    return audio[:frames]


def clip_windows(total_frames: int, rules: ClipRules) -> list[tuple[int, int]]:
    """The [start, end) frame ranges a recording of ``total_frames`` becomes.

    ``trim`` keeps the first clip; ``split`` keeps every whole clip, plus the tail when it is
    at least half a clip long and short clips are padded. A recording shorter than a clip is
    one (short) window, left to :func:`fit_to_clip`.
    """
    frames = rules.clip_frames
    if total_frames <= frames or rules.long_clips == "trim":
        return [(0, min(total_frames, frames))]
    windows = [(start, start + frames) for start in range(0, total_frames - frames + 1, frames)]
    tail_start = windows[-1][1]
    if rules.short_clips == "pad" and total_frames - tail_start >= frames * MIN_PADDED_FRACTION:
        windows.append((tail_start, total_frames))
    return windows
