"""The training split as the training loops read it: images drawn from the shards, posteriors
encoded once and sampled per step, none of it held whole in memory."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline.audio.shards import ShardError, decode_png, iter_batches, read_spec, shard_files
from pipeline.audio.spectrogram import log_mel_to_grey
from pipeline.config.spectrogram import format_resolution, parse_resolution
from pipeline.config.train import TrainParams
from pipeline.models.diffusion import caption_embeddings, uint8_to_pm1
from pipeline.paths import SHARDS_DIR
from pipeline.training.order import micro_batch_generator, micro_batch_rows
from pipeline.training.resume import TrainingError
from pipeline.training.rows import RowFile
from pipeline.training.vae import scale_to_unit_variance


class SplitImages:
    """A split's images by row number (in :func:`~pipeline.audio.shards.read_split`'s order), decoded when asked for:
    memory holds a few row groups of PNG bytes, not the split."""

    def __init__(self, split: str, root: Path | str = SHARDS_DIR, cached_groups: int = 4):
        metadata = {path: pq.read_metadata(path) for path in shard_files(split, root)}
        self.groups = [(path, g) for path, meta in metadata.items() for g in range(meta.num_row_groups)]
        sizes = [metadata[path].row_group(g).num_rows for path, g in self.groups]
        self.starts = np.cumsum([0, *sizes])
        if not self.starts[-1]:
            raise ShardError(f"split {split!r} under {root} has no rows; check {Path(root) / 'report.json'}")
        self.cached_groups = cached_groups
        self._cache: dict[int, list] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _group(self, number: int) -> list:
        if number not in self._cache:
            if len(self._cache) >= self.cached_groups:
                self._cache.pop(next(iter(self._cache)))
            path, g = self.groups[number]
            self._cache[number] = pq.ParquetFile(path).read_row_group(g, columns=["image"])["image"].to_pylist()
        return self._cache[number]

    def __getitem__(self, rows) -> np.ndarray:
        """uint8 ``(len(rows), H, W)``."""
        images = []
        for row in rows:
            number = int(np.searchsorted(self.starts, row, side="right")) - 1
            images.append(decode_png(self._group(number)[row - self.starts[number]]["bytes"]))
        return np.stack(images)


SCALING_ROWS = 4096  # latents a tuned VAE's scaling factor is measured on: a bounded, fixed sample


@torch.no_grad()
def cache_posteriors(vae, shards: Path, batch_size: int, device,
                     resolution: tuple[int, int] | None = None) -> tuple[RowFile, RowFile, list[str]]:
    """One VAE posterior (mean, std) per training image, encoded once: at 512 px the encoder
    would otherwise cost more than the U-Net step. Latents are sampled from them per step.
    They go to files as they are made, so memory does not grow with the split.

    ``resolution`` ``(H, W)``: each image drawn anew at that size from its log-mel, as
    evaluate draws the real clips it scores at that size; None: the rendered images."""
    spec = read_spec(shard_files("train", shards)[0])
    means = stds = None
    captions: list[str] = []
    total = sum(pq.read_metadata(f).num_rows for f in shard_files("train", shards))
    size = "" if resolution is None else f" {format_resolution(*resolution)}"
    progress = tqdm(total=total, desc=f"cache latents{size}", unit="img", file=sys.stderr)
    columns = ["caption", "image" if resolution is None else "log_mel"]
    for batch in iter_batches("train", columns, batch_size=batch_size, root=shards):
        images = batch["image"] if resolution is None else \
            log_mel_to_grey(torch.from_numpy(batch["log_mel"]), spec, *resolution)
        posterior = vae.encode(uint8_to_pm1(images).to(device, vae.dtype)).latent_dist
        if means is None:
            means, stds = RowFile(posterior.mean.shape[1:]), RowFile(posterior.std.shape[1:])
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions += batch["caption"]
        progress.update(len(batch["caption"]))
    progress.close()
    if means is None:
        raise TrainingError(f"no training rows in {shards / 'train'}; check {shards / 'report.json'}")
    return means, stds, captions


@dataclass
class TrainingSet:
    """VAE posteriors per training image, one set per training geometry (latents are sampled
    from them at each step), and the text-encoder states of its caption (held once per
    distinct caption)."""

    means: list[RowFile]  # per geometry, in train.resolutions' order
    stds: list[RowFile]
    caption_index: torch.Tensor  # per row, its caption's place in caption_states
    caption_states: torch.Tensor
    unconditional: torch.Tensor  # the empty caption's states, for dropped captions
    scaling: float

    @property
    def rows(self) -> int:
        return len(self.means[0])

    def micro_batch(self, index: int, config: TrainParams, device):
        """(scaled latents, caption states, its generator) of micro-batch ``index``, drawn at
        geometry ``index`` mod their count (a batch holds one shape); every draw comes from
        ``(train.seed, index)``, so a resumed run draws what an unbroken one would."""
        generator = micro_batch_generator(config.seed, index)
        rows = micro_batch_rows(index, self.rows, config.batch_size, config.seed)
        geometry = index % len(self.means)
        means, stds = self.means[geometry][rows], self.stds[geometry][rows]
        noise = torch.randn(means.shape, generator=generator)
        latents = ((means + stds * noise) * self.scaling).to(device)
        return latents, self.caption_states[self.caption_index[torch.from_numpy(rows)]], generator


def encode_training_set(pipe, shards: Path, device, vae_tuned: bool,
                        resolutions: tuple[str, ...] = ()) -> TrainingSet:
    """The training split through the pipeline's VAE and text encoder, at each of
    ``resolutions`` (none: the rendered size). A tuned VAE's latents have a spread of their
    own, so its scaling is set anew (on the first :data:`SCALING_ROWS` of the first
    geometry), as the pre-training set it."""
    spec = read_spec(shard_files("train", shards)[0])
    geometries = [parse_resolution(text, "train.resolutions") for text in resolutions] or [None]
    # the rendered images are the training size drawn once, at render
    geometries = [None if size == (spec.image_size, spec.image_size) else size for size in geometries]
    posteriors = [cache_posteriors(pipe.vae, shards, 32, device, size) for size in geometries]
    means, stds, captions = [p[0] for p in posteriors], [p[1] for p in posteriors], posteriors[0][2]
    if vae_tuned:
        scale_to_unit_variance(pipe.vae, means[0][range(min(len(means[0]), SCALING_ROWS))])
    states_by_caption = caption_embeddings(pipe, captions)
    distinct = {caption: place for place, caption in enumerate(states_by_caption)}
    return TrainingSet(means, stds, torch.tensor([distinct[c] for c in captions]),
                       torch.stack(list(states_by_caption.values())), states_by_caption[""],
                       pipe.vae.config.scaling_factor)
