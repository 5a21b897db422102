"""``sample``: the sample sets, their geometries, guidance, scheduler, vocoder and long clips."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require
from pipeline.config.spectrogram import parse_resolution

VOCODER_CHOICES = ("auto", "griffin_lim", "neural")
SCHEDULER_NAMES = ("dpm++", "ddim", "ddpm", "euler", "euler_a", "heun", "lms", "pndm", "unipc")


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
        require(len(self.resolutions) >= 1, "sample.resolutions", "needs at least one size")
        for i, text in enumerate(self.resolutions):
            parse_resolution(text, f"sample.resolutions[{i}]")
        require(len(set(self.resolutions)) == len(self.resolutions), "sample.resolutions",
                "lists a size twice")
        for key in ("per_class", "steps", "batch_size"):
            require(getattr(self, key) >= 1, f"sample.{key}", "must be at least 1")
        require(len(self.guidance_scales) >= 1, "sample.guidance_scale", "needs at least one scale")
        require(len(set(self.guidance_scales)) == len(self.guidance_scales), "sample.guidance_scale",
                "lists a scale twice")
        require(min(self.guidance_scales) >= 1.0, "sample.guidance_scale", "must be at least 1 (1 = no guidance)")
        require(self.scheduler in SCHEDULER_NAMES, "sample.scheduler", f"must be one of {SCHEDULER_NAMES}")
        require(0 <= self.wavs_per_class <= self.per_class, "sample.wavs_per_class",
                "must be within [0, sample.per_class]")
        require(self.checkpoint_per_class >= 0, "sample.checkpoint_per_class", "must not be negative")
        require(self.vocoder in VOCODER_CHOICES, "sample.vocoder", f"must be one of {VOCODER_CHOICES}")
        require(0 < self.longform_seconds <= MAX_LONGFORM_SECONDS, "sample.longform_seconds",
                f"must be positive and at most {MAX_LONGFORM_SECONDS:g} (an hour)")
        for key, most in SAMPLE_LIMITS.items():
            require(getattr(self, key) <= most, f"sample.{key}", f"must be at most {most}")
        require(self.longform_classes >= 0, "sample.longform_classes", "must be 0 (every class) or more")

    def check_against(self, sections) -> None:
        if "spectrogram" in vars(sections):
            clip_seconds = sections.spectrogram.clip_seconds
            require(self.longform_seconds > clip_seconds, "sample.longform_seconds",
                    f"must exceed one window, spectrogram.clip_seconds={clip_seconds} "
                    "(a clip of one window is a plain sample)")

    @property
    def guidance_scales(self) -> tuple[float, ...]:
        """The candidate scales (one when ``guidance_scale`` is a number)."""
        scale = self.guidance_scale
        return scale if isinstance(scale, tuple) else (scale,)
