"""Spectrogram images from a prompt, and audio from those images.

Used by the ``sample`` stage and by ``specldm generate``. Each image has its own seed,
so an image is the same whatever batch it was made in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from PIL import Image

from pipeline.audio.spectrogram import SpectrogramSpec, check_image_size, image_to_log_mel
from pipeline.files import atomic_path
from pipeline.models import compute_device
from pipeline.models.diffusion import ModelError, latent_scale, load_pipeline
from pipeline.models.vocoder import Vocode

SCHEDULERS = {
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++"}),
    "ddim": (DDIMScheduler, {}),
    "ddpm": (DDPMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}

ZERO_SNR_SCHEDULERS = ("dpm++", "ddim", "ddpm", "euler", "euler_a", "unipc")


def load_generator(model_dir: Path | str, scheduler: str = "dpm++"):
    """A pipeline from ``model_dir`` sampling with the scheduler named ``scheduler``, on the GPU
    when there is one (the paper profile draws thousands of 512-px images)."""
    if scheduler not in SCHEDULERS:
        raise ModelError(f"unknown scheduler {scheduler!r}; choose from {', '.join(SCHEDULERS)}")
    pipe = load_pipeline(model_dir)
    cls, options = SCHEDULERS[scheduler]
    if pipe.scheduler.config.get("rescale_betas_zero_snr") and scheduler not in ZERO_SNR_SCHEDULERS:
        raise ModelError(f"{model_dir} was trained with a zero-terminal-SNR schedule, which the "
                         f"{scheduler!r} scheduler cannot follow; use one of {', '.join(ZERO_SNR_SCHEDULERS)}")
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **options)
    return pipe.to(compute_device())


def check_geometry(pipe, height: int, width: int) -> None:
    """Sizes the VAE and U-Net can take: multiples of 8, and latents no smaller than the
    U-Net's coarsest level."""
    check_image_size(height, width)
    smallest, scale = 2 ** (len(pipe.unet.config.block_out_channels) - 1), latent_scale(pipe.vae)
    if min(height, width) // scale < smallest:
        raise ModelError(f"{height}x{width} is too small for this U-Net: its latent would be "
                         f"{height // scale}x{width // scale}, below its {smallest}x{smallest} minimum")


@torch.no_grad()
def generate_images(pipe, prompts: list[str], seeds: list[int], height: int, width: int,
                    steps: int, guidance_scale: float, batch_size: int = 16) -> np.ndarray:
    """uint8 grey images ``(N, H, W)``, one per prompt and seed."""
    check_geometry(pipe, height, width)
    images = []
    for start in range(0, len(prompts), batch_size):
        generators = [torch.Generator().manual_seed(s) for s in seeds[start:start + batch_size]]
        out = pipe(prompts[start:start + batch_size], height=height, width=width,
                   num_inference_steps=steps, guidance_scale=guidance_scale,
                   generator=generators, output_type="pt").images
        images.append((out.float().mean(dim=1) * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy())
    return np.concatenate(images)


def image_to_audio(grey: np.ndarray, spec: SpectrogramSpec, vocode: Vocode, seed: int = 0) -> np.ndarray:
    """Audio for one grey image through ``vocode`` (:func:`pipeline.models.vocoder.vocoder_for`),
    at the training time scale (``image_size`` pixels per ``clip_seconds``): a 64x400 image
    from a 512-trained model is 7.8 s."""
    return vocode(image_to_log_mel(torch.from_numpy(grey), spec), seed)


def save_png(path: Path, grey: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(grey).save(tmp, format="PNG")


def save_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, format="WAV", subtype="PCM_16")
