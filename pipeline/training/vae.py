"""The autoencoder's training step, its crops and its reconstruction error, as ``pretrain``,
``train`` and ``benchmarks/bench_train.py`` all run them."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from tqdm import tqdm

from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel
from pipeline.models.diffusion import reconstruct, uint8_to_pm1
from pipeline.training.order import micro_batch_generator, micro_batch_rows

if TYPE_CHECKING:  # a type only: pretrain runs this module without train's parameters
    from pipeline.config.train import TrainParams


def vae_step(vae, optimizer, images: torch.Tensor, kl_weight: float,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """One optimiser step on images in [-1, 1]: the L1 error of decoding a posterior sample,
    plus ``kl_weight`` times the posterior's KL divergence (SD's autoencoder loss without its
    GAN term). Returns the loss."""
    posterior = vae.encode(images).latent_dist
    drawn = vae.decode(posterior.sample(generator=generator)).sample
    loss = (drawn - images).abs().mean() + kl_weight * posterior.kl().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss


def scale_to_unit_variance(vae, latents: torch.Tensor) -> float:
    """Set the VAE's ``scaling_factor`` so that these unscaled latents have unit variance (the
    part SD's 0.18215 plays for its VAE), and return it."""
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae.config.scaling_factor


def vae_crops(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random ``size``-px square of each image (the whole image when it is no larger)."""
    height, width = images.shape[-2:]
    size = min(size, height, width)
    tops = rng.integers(0, height - size + 1, len(images))
    lefts = rng.integers(0, width - size + 1, len(images))
    return np.stack([image[t:t + size, left:left + size] for image, t, left in zip(images, tops, lefts)])


def vae_mae_db(vae, batches: Iterable[dict], spec: SpectrogramSpec) -> float:
    """Mean absolute error, in dB on the native mel, of the VAE's reconstruction of the
    ``image`` of each batch against its ``log_mel``, summed batch by batch."""
    total, count = 0.0, 0
    for batch in batches:
        log_mels = torch.from_numpy(batch["log_mel"])
        recovered = image_to_log_mel(torch.from_numpy(reconstruct(vae, batch["image"])), spec,
                                     n_frames=log_mels.shape[-1])
        total += float((recovered - log_mels).abs().double().sum())
        count += log_mels.numel()
    return total / count


def finetune_vae(vae, images, config: TrainParams, device, log=None) -> None:
    """The report's autoencoder fine-tuning (its Fig. 3.3/3.4), encoder and decoder both, on
    uint8 spectrogram ``images`` (an array, or :class:`~pipeline.training.latents.SplitImages`).
    Tuning the decoder alone cannot help: what a photo-trained encoder drops of a spectrogram
    no decoder can draw back. Crops: the VAE is convolutional without attention, so small
    squares teach it what whole images need, at a fraction of the cost. ``log(loss)`` is
    called every ``train.log_every`` steps."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    # a cosine decay to zero: at a constant rate the reconstructions stop improving early
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=config.vae_steps)
    vae.requires_grad_(True).train()
    for step in tqdm(range(config.vae_steps), desc="finetune vae", unit="step", file=sys.stderr):
        rows = micro_batch_rows(step, len(images), min(config.vae_batch_size, len(images)), config.seed + 1)
        crops = vae_crops(images[rows], config.vae_crop_size, np.random.default_rng([config.seed, step]))
        loss = vae_step(vae, optimizer, uint8_to_pm1(crops).to(device, vae.dtype), config.vae_kl_weight,
                        micro_batch_generator(config.seed + 1, step))
        schedule.step()
        if log is not None and (step + 1) % config.log_every == 0:
            log(loss.item())
    vae.requires_grad_(False).eval()
