"""Audio <-> log-mel <-> image: every conversion the pipeline makes, owned by one spec.

Layout conventions (shared by all stages):

* A log-mel is a float32 tensor ``(..., n_mels, frames)`` in dB, clamped to
  ``[min_db, max_db]``; row 0 is the lowest mel band.
* An image is a uint8 tensor ``(..., 3, H, W)``: the dB range mapped linearly onto
  0..255, the grey value replicated to RGB (the VAE expects three channels) and
  flipped so that low frequencies sit at the bottom, as people read spectrograms.
* Image height always spans the whole mel axis. Image width keeps the training
  time scale: ``image_width`` pixels are ``clip_seconds`` of audio, so a 64x400
  image decodes to ``400 / image_width * clip_seconds`` seconds
  (7.8 s for 512-wide training images, see :func:`frames_for_width`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchaudio.functional import griffinlim
from torchaudio.transforms import InverseMelScale, MelSpectrogram

from pipeline.errors import PipelineError

RESIZE_MODES = ("nearest", "bilinear")


class SpecError(PipelineError, ValueError):
    """A SpectrogramSpec or an array handed to it is not usable."""


@dataclass(frozen=True)
class SpectrogramSpec:
    """Every audio constant of the pipeline. Defaults follow the seed report.

    A 10 s, 16 kHz clip becomes 128 mel bands x 128 frames (hop 1250 samples),
    which is upsampled to a square ``image_size`` image for the VAE.
    """

    sample_rate: int = 16_000
    clip_seconds: float = 10.0
    n_fft: int = 2048
    hop_length: int = 1250
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float = 8000.0
    min_db: float = -40.0
    max_db: float = 60.0
    image_size: int = 512
    # nn.Upsample's default, as in the seed; shrinking uses area averaging so that
    # nearest-upsampled images shrink back to the exact mel they came from.
    resize_mode: str = "nearest"
    griffin_lim_iters: int = 64
    # Griffin-Lim needs heavily overlapping frames; 1250/2048 overlaps too little,
    # so inversion interpolates the mel in time onto this finer hop first.
    vocoder_hop_length: int = 250

    def __post_init__(self) -> None:
        def fail(field: str, why: str) -> None:
            raise SpecError(f"SpectrogramSpec.{field}={getattr(self, field)!r}: {why}")

        for field in ("sample_rate", "n_fft", "hop_length", "n_mels", "image_size",
                      "griffin_lim_iters", "vocoder_hop_length"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(field, "must be a positive integer")
        for field in ("clip_seconds", "f_min", "f_max", "min_db", "max_db"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                fail(field, "must be a finite number")
        if not self.clip_seconds > 0:
            fail("clip_seconds", "must be positive")
        if self.hop_length > self.n_fft:
            fail("hop_length", f"must not exceed n_fft={self.n_fft} (frames would skip audio)")
        if self.vocoder_hop_length > self.hop_length:
            fail("vocoder_hop_length", f"must not exceed hop_length={self.hop_length}")
        if not 0 <= self.f_min < self.f_max:
            fail("f_min", f"must satisfy 0 <= f_min < f_max={self.f_max}")
        if self.f_max > self.sample_rate / 2:
            fail("f_max", f"exceeds the Nyquist frequency {self.sample_rate / 2} Hz")
        if self.n_mels > self.n_fft // 2 + 1:
            fail("n_mels", f"exceeds the {self.n_fft // 2 + 1} STFT bins")
        if not self.min_db < self.max_db:
            fail("min_db", f"must be below max_db={self.max_db}")
        if self.image_size % 8:
            fail("image_size", "must be divisible by 8 (the VAE downsamples 8x)")
        if self.resize_mode not in RESIZE_MODES:
            fail("resize_mode", f"must be one of {RESIZE_MODES}")
        if self.num_samples < self.hop_length:
            fail("clip_seconds", "is shorter than one hop")

    @property
    def num_samples(self) -> int:
        return round(self.sample_rate * self.clip_seconds)

    @property
    def n_frames(self) -> int:
        """Frames of one clip. The trailing centred frame is dropped: 160000 // 1250 = 128."""
        return self.num_samples // self.hop_length

    @classmethod
    def from_dict(cls, values, where: str) -> SpectrogramSpec:
        """The spec recorded in an artifact (a shard, a model): a SpecError naming ``where``
        for anything but a complete, valid one."""
        if not isinstance(values, dict):
            raise SpecError(f"{where}: the recorded SpectrogramSpec is not a mapping")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(values) - names), sorted(names - set(values))
        if unknown or missing:
            raise SpecError(f"{where}: the recorded SpectrogramSpec has unknown fields {unknown} "
                            f"and lacks {missing}; it was written by another version of specldm")
        try:
            return cls(**values)
        except SpecError as error:
            raise SpecError(f"{where}: {error}") from None

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> SpectrogramSpec:
        try:
            values = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise SpecError(f"{where}: the recorded SpectrogramSpec is not valid JSON ({error})") from None
        return cls.from_dict(values, where)

    def replace(self, **changes) -> SpectrogramSpec:
        return dataclasses.replace(self, **changes)


def check_image_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
            raise SpecError(f"image {name}={value!r} must be a positive multiple of 8 "
                            "(the VAE downsamples 8x)")


def frames_for_width(width: int, spec: SpectrogramSpec) -> int:
    """Mel frames an image of ``width`` pixels stands for, at the training time scale."""
    return max(1, round(width * spec.n_frames / spec.image_size))


def width_for_seconds(seconds: float, spec: SpectrogramSpec) -> int:
    """Smallest multiple-of-8 image width that covers ``seconds`` of audio."""
    pixels = seconds / spec.clip_seconds * spec.image_size
    return max(8, 8 * math.ceil(pixels / 8))


@functools.lru_cache(maxsize=8)
def _mel_transform(spec: SpectrogramSpec) -> MelSpectrogram:
    return MelSpectrogram(
        sample_rate=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length,
        f_min=spec.f_min, f_max=spec.f_max, n_mels=spec.n_mels, power=2.0,
    )


def mel_band_centres(spec: SpectrogramSpec) -> torch.Tensor:
    """Each mel band's centre frequency in Hz (float64), on the scale :func:`_mel_transform`
    uses (torchaudio's default, HTK's: ``mel = 2595 log10(1 + hz / 700)``, ``n_mels + 2``
    edges spaced evenly in mel from f_min to f_max)."""
    low, high = (2595.0 * math.log10(1.0 + hz / 700.0) for hz in (spec.f_min, spec.f_max))
    edges = torch.linspace(low, high, spec.n_mels + 2, dtype=torch.float64)
    return 700.0 * (10.0 ** (edges[1:-1] / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def _inverse_mel(spec: SpectrogramSpec) -> InverseMelScale:
    return InverseMelScale(
        n_stft=spec.n_fft // 2 + 1, n_mels=spec.n_mels, sample_rate=spec.sample_rate,
        f_min=spec.f_min, f_max=spec.f_max, driver="gelsd",
    )


def waveform_to_log_mel(waveform: torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    """``(..., samples)`` float waveform -> ``(..., n_mels, samples // hop)`` dB."""
    waveform = torch.as_tensor(waveform, dtype=torch.float32)
    if waveform.shape[-1] < spec.hop_length:
        raise SpecError(f"waveform has {waveform.shape[-1]} samples; need at least one hop "
                        f"({spec.hop_length})")
    frames = waveform.shape[-1] // spec.hop_length
    # no inference_mode: the neural vocoder's loss backpropagates through this analysis
    return power_to_db(_mel_transform(spec).to(waveform.device)(waveform)[..., :frames], spec)


def power_to_db(power: torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    floor = 10.0 ** (spec.min_db / 10.0)
    return (10.0 * torch.log10(power.clamp_min(floor))).clamp(spec.min_db, spec.max_db)


def db_to_power(log_mel: torch.Tensor) -> torch.Tensor:
    return torch.pow(10.0, log_mel / 10.0)


def _resize(values: torch.Tensor, height: int, width: int, mode: str) -> torch.Tensor:
    """Resize the last two axes (float, or uint8 when only growing with "nearest")."""
    if values.shape[-2:] == (height, width):
        return values
    lead = values.shape[:-2]
    flat = values.reshape(-1, 1, *values.shape[-2:])
    if mode == "nearest":
        # Each axis separately: nearest to grow, area averaging to shrink.
        for axis, size in ((2, height), (3, width)):
            target = list(flat.shape[2:])
            target[axis - 2] = size
            grow = size >= flat.shape[axis]
            flat = F.interpolate(flat, size=tuple(target), mode="nearest-exact" if grow else "area")
    else:
        flat = F.interpolate(flat, size=(height, width), mode="bilinear",
                             align_corners=False, antialias=True)
    return flat.reshape(*lead, height, width)


def log_mel_to_grey(log_mel: torch.Tensor, spec: SpectrogramSpec,
                    height: int | None = None, width: int | None = None) -> torch.Tensor:
    """``(..., n_mels, frames)`` dB -> uint8 ``(..., H, W)``, low frequencies at the bottom.

    Defaults to the training geometry: ``image_size`` high, and wide in proportion
    to the clip's length (``image_size`` for a full clip).
    """
    log_mel = torch.as_tensor(log_mel, dtype=torch.float32)
    if log_mel.ndim < 2 or log_mel.shape[-2] != spec.n_mels:
        raise SpecError(f"log-mel must be (..., {spec.n_mels}, frames); got {tuple(log_mel.shape)}")
    height = spec.image_size if height is None else height
    if width is None:
        width = 8 * max(1, round(log_mel.shape[-1] * spec.image_size / spec.n_frames / 8))
    check_image_size(height, width)
    unit = ((log_mel - spec.min_db) / (spec.max_db - spec.min_db)).clamp(0.0, 1.0)
    if spec.resize_mode == "nearest":
        # Shrink in float, quantise, then grow the uint8 image: nearest growth copies
        # values, so this equals quantising last, on 16x fewer pixels at 128 -> 512.
        rows, frames = unit.shape[-2:]
        grey = _quantise(_resize(unit, min(height, rows), min(width, frames), "nearest"))
        grey = _resize(grey, height, width, "nearest")
    else:
        grey = _quantise(_resize(unit, height, width, "bilinear"))
    return grey.flip(-2)


def _quantise(unit: torch.Tensor) -> torch.Tensor:
    return (unit * 255.0).round().clamp(0, 255).to(torch.uint8)


def log_mel_to_image(log_mel: torch.Tensor, spec: SpectrogramSpec,
                     height: int | None = None, width: int | None = None) -> torch.Tensor:
    """``(..., n_mels, frames)`` dB -> uint8 RGB ``(..., 3, H, W)``: the grey image of
    :func:`log_mel_to_grey` in all three channels, as the VAE expects."""
    grey = log_mel_to_grey(log_mel, spec, height, width)
    return grey.unsqueeze(-3).expand(*grey.shape[:-2], 3, *grey.shape[-2:]).contiguous()


def image_to_log_mel(image: torch.Tensor, spec: SpectrogramSpec,
                     n_frames: int | None = None) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` or ``(..., H, W)`` image -> ``(..., n_mels, frames)`` dB.

    Colour channels are averaged (a generated image need not be perfectly grey).
    ``n_frames`` defaults to :func:`frames_for_width`.
    """
    image = torch.as_tensor(image)
    if image.dtype != torch.uint8:
        raise SpecError(f"image must be uint8; got {image.dtype}")
    grey = image.float()
    if grey.ndim >= 3 and grey.shape[-3] == 3:
        grey = grey.mean(dim=-3)
    elif grey.ndim < 2:
        raise SpecError(f"image must be (..., 3, H, W) or (..., H, W); got {tuple(image.shape)}")
    n_frames = frames_for_width(grey.shape[-1], spec) if n_frames is None else n_frames
    unit = _resize(grey.flip(-2) / 255.0, spec.n_mels, n_frames, spec.resize_mode)
    return spec.min_db + unit * (spec.max_db - spec.min_db)


def interpolate_frames(log_mel: torch.Tensor, step: float, count: int) -> torch.Tensor:
    """Linear interpolation along time at frame positions ``0, step, 2*step, ...``."""
    last = log_mel.shape[-1] - 1
    position = (torch.arange(count, dtype=torch.float32) * step).clamp(max=last)
    lower = position.floor().long()
    upper = (lower + 1).clamp(max=last)
    weight = position - lower
    return log_mel[..., lower] * (1 - weight) + log_mel[..., upper] * weight


def log_mel_to_waveform(log_mel: torch.Tensor, spec: SpectrogramSpec,
                        n_iter: int | None = None, seed: int = 0) -> torch.Tensor:
    """``(..., n_mels, frames)`` dB -> ``(..., frames * hop)`` waveform by Griffin-Lim.

    The phase is initialised from ``seed``, so the same input gives the same audio.
    """
    log_mel = torch.as_tensor(log_mel, dtype=torch.float32)
    if log_mel.ndim < 2 or log_mel.shape[-2] != spec.n_mels:
        raise SpecError(f"log-mel must be (..., {spec.n_mels}, frames); got {tuple(log_mel.shape)}")
    length = log_mel.shape[-1] * spec.hop_length
    fine_frames = 1 + length // spec.vocoder_hop_length
    fine = interpolate_frames(log_mel, spec.vocoder_hop_length / spec.hop_length, fine_frames)
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        linear = _inverse_mel(spec)(db_to_power(fine))
        return griffinlim(
            linear, window=torch.hann_window(spec.n_fft), n_fft=spec.n_fft,
            hop_length=spec.vocoder_hop_length, win_length=spec.n_fft, power=2.0,
            n_iter=spec.griffin_lim_iters if n_iter is None else n_iter,
            momentum=0.99, length=length, rand_init=True,
        )


def image_to_waveform(image: torch.Tensor, spec: SpectrogramSpec,
                      n_iter: int | None = None, seed: int = 0) -> torch.Tensor:
    return log_mel_to_waveform(image_to_log_mel(image, spec), spec, n_iter=n_iter, seed=seed)
