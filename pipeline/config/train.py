"""``train``: fine-tuning the VAE and the U-Net on spectrograms."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require
from pipeline.config.spectrogram import parse_resolution

PRECISIONS = ("auto", "no", "bf16", "fp16")
INITS = ("pretrained", "scratch")
LR_SCHEDULES = ("constant_with_warmup", "cosine", "linear")


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
    # The geometries the U-Net learns, micro-batch m at the (m mod count)th: sampling 64x400
    # asks for 8x50 latents, which a U-Net that only saw the training size's has never met
    # (aspect-ratio buckets, as SDXL trains). Empty: the rendered (training) size only.
    resolutions: tuple[str, ...] = ("128x128", "64x400")
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
        require(self.steps >= 1, "train.steps", "must be at least 1")
        require(self.init in INITS, "train.init", f"must be one of {INITS}")
        for key in ("batch_size", "gradient_accumulation", "checkpoint_every", "keep_checkpoints",
                    "log_every"):
            require(getattr(self, key) >= 1, f"train.{key}", "must be at least 1")
        require(self.learning_rate > 0, "train.learning_rate", "must be positive")
        require(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {LR_SCHEDULES}")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must not be negative")
        for i, text in enumerate(self.resolutions):
            parse_resolution(text, f"train.resolutions[{i}]")
        require(len(set(self.resolutions)) == len(self.resolutions), "train.resolutions",
                "lists a size twice")
        require(self.max_grad_norm > 0, "train.max_grad_norm", "must be positive")
        require(0.0 <= self.caption_dropout < 1.0, "train.caption_dropout", "must be within [0, 1)")
        require(self.noise_offset >= 0.0, "train.noise_offset", "must not be negative")
        require(0.0 < self.ema_decay < 1.0, "train.ema_decay", "must be within (0, 1)")
        require(self.mixed_precision in PRECISIONS, "train.mixed_precision", f"must be one of {PRECISIONS}")
        require(self.vae_steps >= 0, "train.vae_steps", "must not be negative")
        require(self.vae_learning_rate > 0, "train.vae_learning_rate", "must be positive")
        require(self.vae_batch_size >= 1, "train.vae_batch_size", "must be at least 1")
        require(self.vae_crop_size >= 8 and self.vae_crop_size % 8 == 0, "train.vae_crop_size",
                "must be a positive multiple of 8")
        require(self.vae_kl_weight >= 0, "train.vae_kl_weight", "must not be negative")
