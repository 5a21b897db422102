"""Audio of any length, and regions of a clip drawn again: out-painting and in-painting.

Both run diffusers' ``StableDiffusionInpaintPipeline`` (built from the model's own
components with ``from_pipe``). With a 4-channel U-Net it samples the whole latent but, after
every step, puts back the known latents outside the mask, re-noised to that step's level,
so what it draws inside continues what is outside. We hand it latents, not pixels:

* :func:`long_latents` draws a clip window by window (each ``image_size`` pixels, the
  training width), each new window starting from the last ``overlap`` columns of the one
  before. The whole latent strip is decoded once and vocoded as one spectrogram, so there is
  no audio stitched at the seams.
* :func:`inpaint_log_mel` encodes a clip, regenerates a time region and/or a frequency band,
  and composites: outside the mask the spectrogram is the input's, unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline

from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel, log_mel_to_grey, mel_band_centres
from pipeline.errors import PipelineError
from pipeline.models.diffusion import latent_scale, pm1_to_uint8_grey, uint8_to_pm1


class RegionError(PipelineError, ValueError):
    """The region to redraw is empty or lies outside the clip; the message says which bound."""


def inpainter(pipe) -> StableDiffusionInpaintPipeline:
    inpaint = StableDiffusionInpaintPipeline.from_pipe(pipe)
    inpaint.set_progress_bar_config(disable=True)
    return inpaint


def _draw(inpaint, prompt: str, known: torch.Tensor, keep: torch.Tensor, steps: int, guidance: float,
          seed: int) -> torch.Tensor:
    """Scaled latents like ``known`` ``(1, C, h, w)``: the cells where ``keep`` (``(h, w)``,
    bool) is set come back as given, the rest drawn for ``prompt``."""
    scale = latent_scale(inpaint.vae)
    height, width = (scale * n for n in known.shape[-2:])
    mask = (~keep).float().repeat_interleave(scale, 0).repeat_interleave(scale, 1)
    return inpaint(prompt, image=known, masked_image_latents=known, mask_image=mask[None, None],
                   height=height, width=width, strength=1.0, num_inference_steps=steps,
                   guidance_scale=guidance, generator=torch.Generator().manual_seed(seed),
                   output_type="latent").images.cpu()


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents -> a uint8 grey image ``(H, W)``: the colour channels' mean, as for every sample."""
    image = pipe.vae.decode(latents.to(pipe.vae.device) / pipe.vae.config.scaling_factor).sample
    return pm1_to_uint8_grey(image.cpu())[0]


@dataclass(frozen=True)
class Window:
    """One out-painted window: where its new columns start (latent cells) and its prompt."""

    start: int
    prompt: str


def windows(total: int, window: int, overlap: int, prompts_at: list[tuple[float, str]],
            cells_per_second: float) -> list[Window]:
    """Windows covering ``total`` latent columns, each reusing ``overlap`` of the last; each
    takes the prompt in force at the time its new columns start."""
    plan, start = [], 0
    while start < total:
        second = start / cells_per_second
        prompt = [text for at, text in prompts_at if at <= second][-1]
        plan.append(Window(start, prompt))
        start += window if start == 0 else window - overlap
    return plan


def plan_windows(seconds: float, overlap_seconds: float, spec: SpectrogramSpec, scale: int,
                 prompts_at: list[tuple[float, str]]) -> tuple[list[Window], int, int]:
    """(the :func:`windows` of a ``seconds`` clip, the overlap and the clip's length, in latent
    cells of ``scale`` pixels): windows are the training width, ``image_size`` pixels."""
    window = spec.image_size // scale
    cells_per_second = window / spec.clip_seconds
    overlap = min(window - 1, max(1, round(overlap_seconds * cells_per_second)))
    total = math.ceil(seconds * cells_per_second)
    return windows(total, window, overlap, prompts_at, cells_per_second), overlap, total


@torch.no_grad()
def long_latents(pipe, prompts_at: list[tuple[float, str]], seconds: float, overlap_seconds: float,
                 spec: SpectrogramSpec, steps: int, guidance: float, seed: int) -> torch.Tensor:
    """Scaled latents ``(1, C, image_size/f, w)`` (``f`` the VAE's :func:`latent_scale`) for
    ``seconds`` of audio, window by window. ``prompts_at`` is ``[(second, prompt), ...]``,
    starting at second 0."""
    inpaint, scale = inpainter(pipe), latent_scale(pipe.vae)
    plan, overlap, total = plan_windows(seconds, overlap_seconds, spec, scale, prompts_at)
    window = spec.image_size // scale
    channels = pipe.vae.config.latent_channels
    strip = torch.zeros(1, channels, window, 0)
    for number, planned in enumerate(plan):
        known = torch.zeros(1, channels, window, window)
        keep = torch.zeros(window, window, dtype=torch.bool)
        reused = overlap if number else 0
        if reused:
            known[..., :reused] = strip[..., -reused:]
            keep[:, :reused] = True
        drawn = _draw(inpaint, planned.prompt, known, keep, steps, guidance, seed + number)
        strip = torch.cat([strip, drawn[..., reused:]], dim=-1)
    return strip[..., :total]


def band_rows(low_hz: float | None, high_hz: float | None, spec: SpectrogramSpec) -> np.ndarray:
    """Mel bins (row 0 the lowest) whose centre frequency lies in ``[low_hz, high_hz]``."""
    nyquist = spec.sample_rate / 2
    low = spec.f_min if low_hz is None else low_hz
    high = spec.f_max if high_hz is None else high_hz
    if low < 0 or high > nyquist:
        raise RegionError(f"the band {low:g}-{high:g} Hz must lie within 0-{nyquist:g} Hz (Nyquist)")
    if not low < high:
        raise RegionError(f"the band {low:g}-{high:g} Hz is empty: --low-hz must be below --high-hz")
    centres = mel_band_centres(spec).numpy()
    rows = (centres >= low) & (centres <= high)
    if not rows.any():
        raise RegionError(f"the band {low:g}-{high:g} Hz holds no mel band centre; widen it")
    return rows


def region_mask(log_mel_frames: int, start: float, end: float, low_hz: float | None, high_hz: float | None,
                spec: SpectrogramSpec) -> np.ndarray:
    """Bool ``(n_mels, frames)``: the time-frequency cells to redraw."""
    duration = log_mel_frames * spec.hop_length / spec.sample_rate
    if not 0 <= start < end <= duration + 1e-9:
        raise RegionError(f"the region {start:g}-{end:g} s must satisfy 0 <= start < end <= {duration:.2f} s "
                          "(the clip's length)")
    frames_per_second = spec.sample_rate / spec.hop_length
    first, last = math.floor(start * frames_per_second), math.ceil(end * frames_per_second)
    mask = np.zeros((spec.n_mels, log_mel_frames), dtype=bool)
    mask[np.ix_(band_rows(low_hz, high_hz, spec), np.arange(first, min(last, log_mel_frames)))] = True
    return mask


@torch.no_grad()
def inpaint_log_mel(pipe, log_mel: torch.Tensor, mask: np.ndarray, prompt: str, spec: SpectrogramSpec,
                    steps: int, guidance: float, seed: int) -> torch.Tensor:
    """``log_mel`` ``(n_mels, frames)`` with the cells of ``mask`` drawn again for ``prompt``;
    every other cell is returned exactly as given."""
    frames, scale = log_mel.shape[-1], latent_scale(pipe.vae)
    width = scale * math.ceil(frames * spec.image_size / spec.n_frames / scale)
    padded_frames = round(width * spec.n_frames / spec.image_size)
    padded = torch.nn.functional.pad(log_mel, (0, padded_frames - frames), value=spec.min_db)
    grey = log_mel_to_grey(padded, spec, spec.image_size, width)
    image = uint8_to_pm1(grey[None])
    vae = pipe.vae
    known = vae.encode(image.to(vae.device)).latent_dist.mean.cpu() * vae.config.scaling_factor
    # the mask in image pixels (flipped: low frequencies at the bottom), then in latent cells:
    # a cell is redrawn when any of its pixels is
    mask_image = log_mel_to_grey(torch.from_numpy(np.pad(mask, ((0, 0), (0, padded_frames - frames)))).float()
                                 * (spec.max_db - spec.min_db) + spec.min_db, spec, spec.image_size, width) > 0
    cells = mask_image.reshape(known.shape[-2], scale, known.shape[-1], scale).any(3).any(1)
    drawn = _draw(inpainter(pipe), prompt, known, ~cells, steps, guidance, seed)
    redrawn = image_to_log_mel(torch.from_numpy(decode(pipe, drawn)), spec, n_frames=padded_frames)[..., :frames]
    return torch.where(torch.from_numpy(mask), redrawn, log_mel)
