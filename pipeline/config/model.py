"""``model`` (the base and the tiny architecture) and ``pretrain`` (the tiny base's image pre-training)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require


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
        require(bool(self.base.strip()), "model.base", "must be 'tiny' or a checkpoint")
        require(len(self.vae_channels) in (3, 4), "model.vae_channels",
                "needs 4 levels (the VAE downsamples 8x, like Stable Diffusion's) or 3 (4x)")
        require(len(self.unet_channels) >= 2, "model.unet_channels", "needs at least 2 levels")
        for key in ("vae_channels", "unet_channels"):
            require(all(c >= 8 and c % 8 == 0 for c in getattr(self, key)), f"model.{key}",
                    "must be multiples of 8 (group norm)")
        for key in ("vae_layers_per_block", "unet_layers_per_block", "attention_head_dim", "max_tokens"):
            require(getattr(self, key) >= 1, f"model.{key}", "must be at least 1")


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
            require(getattr(self, key) >= 0, f"pretrain.{key}", "must not be negative")
        require(self.batch_size >= 1, "pretrain.batch_size", "must be at least 1")
        require(self.crop_size >= 8 and self.crop_size % 8 == 0, "pretrain.crop_size",
                "must be a positive multiple of 8")
        require(self.learning_rate > 0, "pretrain.learning_rate", "must be positive")
        require(self.kl_weight >= 0, "pretrain.kl_weight", "must not be negative")
        require(0.0 <= self.caption_dropout < 1.0, "pretrain.caption_dropout", "must be within [0, 1)")
