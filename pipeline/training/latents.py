"""The training split as the diffusion loop reads it: encoded once, sampled per step."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline.audio.shards import iter_batches, shard_files
from pipeline.config.train import TrainParams
from pipeline.models.diffusion import caption_embeddings, uint8_to_pm1
from pipeline.training.order import micro_batch_generator, micro_batch_rows
from pipeline.training.resume import TrainingError
from pipeline.training.vae import scale_to_unit_variance


@torch.no_grad()
def cache_posteriors(vae, shards: Path, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One VAE posterior (mean, std) per training image, encoded once: at 512 px the encoder
    would otherwise cost more than the U-Net step. Latents are sampled from them per step."""
    means, stds, captions = [], [], []
    total = sum(pq.read_metadata(f).num_rows for f in shard_files("train", shards))
    progress = tqdm(total=total, desc="cache latents", unit="img", file=sys.stderr)
    for batch in iter_batches("train", ["caption", "image"], batch_size=batch_size, root=shards):
        posterior = vae.encode(uint8_to_pm1(batch["image"]).to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions += batch["caption"]
        progress.update(len(batch["caption"]))
    progress.close()
    if not means:
        raise TrainingError(f"no training rows in {shards / 'train'}; check {shards / 'report.json'}")
    return torch.cat(means), torch.cat(stds), captions


@dataclass
class TrainingSet:
    """A VAE posterior per training image (latents are sampled from it at each step) and the
    text-encoder states of its caption."""

    means: torch.Tensor
    stds: torch.Tensor
    caption_states: torch.Tensor
    unconditional: torch.Tensor  # the empty caption's states, for dropped captions
    scaling: float

    def micro_batch(self, index: int, config: TrainParams, device):
        """(scaled latents, caption states, its generator) of micro-batch ``index``; every draw
        comes from ``(train.seed, index)``, so a resumed run draws what an unbroken one would."""
        generator = micro_batch_generator(config.seed, index)
        rows = torch.from_numpy(micro_batch_rows(index, len(self.means), config.batch_size, config.seed))
        noise = torch.randn(self.means[rows].shape, generator=generator)
        latents = ((self.means[rows] + self.stds[rows] * noise) * self.scaling).to(device)
        return latents, self.caption_states[rows], generator


def encode_training_set(pipe, shards: Path, device, vae_tuned: bool) -> TrainingSet:
    """The training split through the pipeline's VAE and text encoder; a tuned VAE's latents
    have a spread of their own, so its scaling is set anew, as the pre-training set it."""
    means, stds, captions = cache_posteriors(pipe.vae, shards, 32, device)
    if vae_tuned:
        scale_to_unit_variance(pipe.vae, means)
    states_by_caption = caption_embeddings(pipe, captions)
    return TrainingSet(means, stds, torch.stack([states_by_caption[c] for c in captions]),
                       states_by_caption[""], pipe.vae.config.scaling_factor)
