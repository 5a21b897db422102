"""``subset``: which clips train, validate and test, their captions and mixtures."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require, require_template

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
        require(self.max_per_class >= 1, "subset.max_per_class", "must be at least 1")
        require(1 <= self.min_per_class <= self.max_per_class, "subset.min_per_class",
                "must be within [1, subset.max_per_class]")
        require(self.mixtures >= 0, "subset.mixtures", "must not be negative")
        require(self.mix_domain in MIX_DOMAINS, "subset.mix_domain", f"must be one of {MIX_DOMAINS}")
        require_template(self.caption_template, "subset.caption_template", ("name",))
        require_template(self.mixture_template, "subset.mixture_template", ("parent", "a", "b"))
        for key in ("val_fraction", "test_fraction"):
            require(0.0 <= getattr(self, key) < 0.5, f"subset.{key}", "must be within [0, 0.5)")
