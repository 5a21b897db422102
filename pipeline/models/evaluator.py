"""A small CNN audio classifier on log-mels, trained on the real training mels (stage
``train_evaluator``).

It no longer judges anything that is tracked: the frozen judges of
:mod:`pipeline.evaluation` do (their weights are not trained here, so they hold still across
data, branches and machines). What it still does is cheap and inside generation: the
``sample`` stage chooses the guidance scale by how close, in its embedding, samples lie to the
validation clips, and how often it hears the prompted class there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel
from pipeline.errors import ModelError
from pipeline.files import write_json
from pipeline.training.rows import RowFile

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class AudioClassifier(nn.Module):
    """Four conv blocks (8-64 channels), time-averaged, then a 128-d embedding and a linear classifier.
    Averaging over time lets it read clips of any length (a 64x400 sample, say)."""

    def __init__(self, n_mels: int, classes: int, embedding_dim: int = 128):
        super().__init__()
        blocks, channels = [], 1
        for width in (8, 16, 32, 64):
            blocks += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        self.embed = nn.Sequential(nn.Linear(channels * (n_mels // 16), embedding_dim), nn.ReLU())
        self.classify = nn.Sequential(nn.Dropout(0.3), nn.Linear(embedding_dim, classes))

    def embedding(self, mels_01: torch.Tensor) -> torch.Tensor:
        """``(B, n_mels, frames)`` log-mels scaled to [0, 1] -> ``(B, embedding_dim)``."""
        maps = self.features(mels_01.unsqueeze(1))  # (B, C, n_mels/16, frames/16)
        return self.embed(maps.mean(dim=-1).flatten(1))

    def forward(self, mels_01: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embedding(mels_01))


def db_to_01(log_mels: torch.Tensor | np.ndarray, spec: SpectrogramSpec) -> torch.Tensor:
    """Log-mels in dB -> [0, 1] over the spec's [min_db, max_db], as the classifier takes them."""
    shifted = torch.as_tensor(np.asarray(log_mels), dtype=torch.float32) - spec.min_db
    return shifted / (spec.max_db - spec.min_db)


def as_clips(grey: torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    """Read each uint8 image as one clip (``n_frames`` frames), whatever its width: references
    and samples at a geometry then pass through exactly the same steps."""
    return image_to_log_mel(grey, spec, n_frames=spec.n_frames)


def accuracy(hits: np.ndarray) -> float:
    """The mean of :meth:`Evaluator.recognised`'s hits, NaNs (untaught classes) left out."""
    counted = hits[~np.isnan(hits)]
    return float(counted.mean()) if len(counted) else math.nan


class Evaluator:
    """A trained classifier with its class list and the spec its inputs follow."""

    def __init__(self, model: AudioClassifier, class_ids: list[str], class_names: list[str],
                 spec: SpectrogramSpec):
        self.model = model.eval()
        self.class_ids = class_ids
        self.class_names = class_names
        self.spec = spec

    @torch.no_grad()
    def embed(self, log_mels, batch_size: int = 64) -> np.ndarray:
        return self._batched(self.model.embedding, log_mels, batch_size)

    @torch.no_grad()
    def predict(self, log_mels, batch_size: int = 64) -> np.ndarray:
        """Indices into ``class_ids``."""
        return self._batched(self.model, log_mels, batch_size).argmax(axis=1)

    def recognised(self, log_mels, class_ids: list[str]) -> np.ndarray:
        """Per clip: 1.0 where the evaluator hears ``class_ids[i]``, 0.0 where it hears
        another class, NaN where it was never taught that class (counted neither way)."""
        index = {c: i for i, c in enumerate(self.class_ids)}
        truth = np.array([index.get(c, -1) for c in class_ids])
        hits = (self.predict(log_mels) == truth).astype(float)
        return np.where(truth >= 0, hits, np.nan)

    def _batched(self, fn, log_mels, batch_size: int) -> np.ndarray:
        mels_01 = db_to_01(log_mels, self.spec)
        return torch.cat([fn(mels_01[i:i + batch_size]) for i in range(0, len(mels_01), batch_size)]).numpy()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file(self.model.state_dict(), directory / WEIGHTS)
        config = {"class_ids": self.class_ids, "class_names": self.class_names,
                  "embedding_dim": self.model.embed[0].out_features, "spec": asdict(self.spec)}
        write_json(directory / CONFIG, config)

    @classmethod
    def load(cls, directory: Path | str) -> Evaluator:
        directory = Path(directory)
        if not (directory / CONFIG).exists():
            raise ModelError(f"{directory}: no evaluator here; run `dvc repro train_evaluator`")
        try:
            config = json.loads((directory / CONFIG).read_text())
            spec = SpectrogramSpec.from_dict(config["spec"], str(directory / CONFIG))
            model = AudioClassifier(spec.n_mels, len(config["class_ids"]), int(config["embedding_dim"]))
            model.load_state_dict(load_file(directory / WEIGHTS))
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise ModelError(f"{directory}: not a loadable evaluator ({type(error).__name__}: {error}); "
                             "run `dvc repro -f train_evaluator`") from None
        return cls(model, config["class_ids"], config["class_names"], spec)


def train_classifier(log_mels: RowFile, labels: np.ndarray, classes: int, spec: SpectrogramSpec,
                     epochs: int, batch_size: int, learning_rate: float, seed: int,
                     embedding_dim: int = 128) -> AudioClassifier:
    """Cross-entropy with random time crops (so shorter inputs read the same) and random
    gain (a level change must not change the class). Each step reads only its batch's rows."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = AudioClassifier(spec.n_mels, classes, embedding_dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    targets = torch.from_numpy(np.asarray(labels)).long()
    frames = log_mels.shape[-1]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(log_mels), generator=generator)
        for start in range(0, len(log_mels), batch_size):
            rows = order[start:start + batch_size]
            width = int(torch.randint(max(16, frames // 2), frames + 1, (1,), generator=generator))
            offset = int(torch.randint(0, frames - width + 1, (1,), generator=generator))
            gain = (torch.rand(len(rows), 1, 1, generator=generator) - 0.5) * 12.0
            crop = (log_mels[rows][:, :, offset:offset + width] + gain).clamp(spec.min_db, spec.max_db)
            loss = F.cross_entropy(model(db_to_01(crop, spec)), targets[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
