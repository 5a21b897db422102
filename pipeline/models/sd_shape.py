"""Stable Diffusion v1.4's architecture, built from its published configs at any width.

``sd_v1_4_shaped(divisor)`` is SD v1.4 itself at ``divisor=1`` (random weights, the sizes of
the ``CompVis/stable-diffusion-v1-4`` checkpoint) and the same layout with every width
divided at larger divisors: 4 U-Net levels with cross-attention at the three finest, an
8x KL-VAE with mid-block attention, a CLIP text encoder, the PNDM scheduler. The paper
rehearsal trains a narrow one through every 512-px path; benchmarks time the full one.
"""

from __future__ import annotations

import math

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from pipeline.models.diffusion import assemble

SD_V1_4 = "CompVis/stable-diffusion-v1-4"

# The published component configs of CompVis/stable-diffusion-v1-4 (model_index.json's
# unet/, vae/, text_encoder/ and scheduler/), less the keys that are diffusers' defaults.
UNET_CONFIG = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "attention_head_dim": 8, "cross_attention_dim": 768, "norm_num_groups": 32,
}
VAE_CONFIG = {
    "sample_size": 512, "in_channels": 3, "out_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
TEXT_CONFIG = {  # the text tower of openai/clip-vit-large-patch14
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "skip_prk_steps": True, "set_alpha_to_one": False,
    "steps_offset": 1,
}


def narrowed(channels: tuple[int, ...], divisor: int) -> tuple[tuple[int, ...], int]:
    """Each width divided (to a multiple of 8, at least 8) and the largest group count up to
    SD's 32 that divides them all, as GroupNorm needs."""
    widths = tuple(max(8, round(c / divisor / 8) * 8) for c in channels)
    return widths, math.gcd(32, *widths)


def sd_v1_4_unet(divisor: int = 1, cross_attention_dim: int | None = None) -> UNet2DConditionModel:
    channels, groups = narrowed(UNET_CONFIG["block_out_channels"], divisor)
    return UNet2DConditionModel(**{
        **UNET_CONFIG, "block_out_channels": channels, "norm_num_groups": groups,
        "cross_attention_dim": cross_attention_dim or UNET_CONFIG["cross_attention_dim"]})


def sd_v1_4_vae(divisor: int = 1) -> AutoencoderKL:
    channels, groups = narrowed(VAE_CONFIG["block_out_channels"], divisor)
    return AutoencoderKL(**{**VAE_CONFIG, "block_out_channels": channels, "norm_num_groups": groups})


def character_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer whose vocabulary is the 256 byte symbols (alone and word-final) and no
    merges: CLIP's real 49,408-token BPE cannot be had offline, and a random-weight encoder
    learns nothing from its merges anyway."""
    from tokenizers.pre_tokenizers import ByteLevel

    symbols = sorted(ByteLevel.alphabet())
    vocab = {s: i for i, s in enumerate(symbols)}
    vocab.update({f"{s}</w>": len(symbols) + i for i, s in enumerate(symbols)})
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=TEXT_CONFIG["max_position_embeddings"])


def clip_text_encoder(divisor: int, tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """CLIP's text tower with its 12 heads and 12 layers, each head ``64 // divisor`` wide."""
    heads = TEXT_CONFIG["num_attention_heads"]
    hidden = heads * max(1, TEXT_CONFIG["hidden_size"] // heads // divisor)
    config = CLIPTextConfig(**{**TEXT_CONFIG, "hidden_size": hidden, "intermediate_size": 4 * hidden,
                               "projection_dim": hidden, "vocab_size": len(tokenizer),
                               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                               "pad_token_id": tokenizer.pad_token_id})
    return CLIPTextModel(config).requires_grad_(False).eval()


def sd_v1_4_shaped(divisor: int, seed: int = 0):
    """A StableDiffusionPipeline with SD v1.4's layout, widths divided by ``divisor``, random
    weights drawn from ``seed``."""
    torch.manual_seed(seed)
    tokenizer = character_tokenizer()
    text_encoder = clip_text_encoder(divisor, tokenizer)
    unet = sd_v1_4_unet(divisor, text_encoder.config.hidden_size)
    return assemble(sd_v1_4_vae(divisor), unet, tokenizer, text_encoder, PNDMScheduler(**SCHEDULER_CONFIG))
