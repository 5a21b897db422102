"""The real clips as the scores read them, and the judge fitted on them: ``models/judge/``.

``fit_judge`` computes, once per dataset, every feature of a real clip a score needs: the
Inception features of the test clips rendered at each sampled geometry and at the training one
(FID/KID references), the aisfx blocks of the test and training audio (FAD references and
floor); and it fits a :class:`~pipeline.evaluation.judge.LinearJudge` per domain on the
training split: one per geometry on Inception features (``image.<H>x<W>``) and one on the aisfx
clip features (``audio``). Saved as safetensors plus JSON: loading runs no code.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from tqdm import tqdm

from pipeline.audio.shards import read_single_clips
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey
from pipeline.audio.waveforms import split_waveforms
from pipeline.config.spectrogram import format_resolution, parse_resolution
from pipeline.errors import ModelError
from pipeline.evaluation.extractors import Inception, SoundEmbedding, clip_features
from pipeline.evaluation.judge import LinearJudge, fit_on_validation
from pipeline.files import atomic_path, write_json

TENSORS = "judge.safetensors"
CONFIG = "judge.json"


def label_indices(known: list[str], class_ids) -> np.ndarray:
    """Each class id's index in ``known``, -1 for a class the judge never saw."""
    index = {c: i for i, c in enumerate(known)}
    return np.array([index.get(c, -1) for c in class_ids], dtype=np.int64)


@dataclass
class Judge:
    """Class list, the fitted heads and the real clips' features (test and training)."""

    class_ids: list[str]
    class_names: list[str]
    heads: dict[str, LinearJudge]
    features: dict[str, np.ndarray]
    record: dict

    def labels(self, class_ids) -> np.ndarray:
        return label_indices(self.class_ids, class_ids)

    def hits(self, head: str, features: np.ndarray, class_ids) -> np.ndarray:
        """1.0 where the judge hears the prompted class, 0.0 where not, NaN for an unseen class."""
        labels = self.labels(class_ids)
        hits = (self.heads[head].predict(features) == labels).astype(np.float64) if len(labels) else np.zeros(0)
        hits[labels < 0] = np.nan
        return hits

    def real_hits(self, head: str, features: np.ndarray) -> np.ndarray:
        """:meth:`hits` of the real test clips (their labels are stored with their features)."""
        labels = self.features["test.labels"]
        return (self.heads[head].predict(features) == labels).astype(np.float64)

    def head_for(self, height: int, width: int) -> str:
        head = f"image.{height}x{width}"
        if head not in self.heads:
            raise ModelError(f"models/judge has no judge for {height}x{width} images (it has "
                             f"{', '.join(sorted(self.heads))}); run `dvc repro fit_judge`")
        return head

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: np.ascontiguousarray(v) for k, v in self.features.items()}
        for name, head in self.heads.items():
            tensors.update(head.tensors(f"head.{name}"))
        with atomic_path(directory / TENSORS) as tmp:
            save_file(tensors, str(tmp))
        write_json(directory / CONFIG, {"class_ids": self.class_ids, "class_names": self.class_names,
                                        "heads": sorted(self.heads), **self.record})

    @classmethod
    def load(cls, directory: Path | str) -> Judge:
        directory = Path(directory)
        if not (directory / CONFIG).is_file() or not (directory / TENSORS).is_file():
            raise ModelError(f"{directory}: no judge here; run `dvc repro fit_judge`")
        config = json.loads((directory / CONFIG).read_text())
        tensors = load_file(str(directory / TENSORS))
        heads = {name: LinearJudge.from_tensors(tensors, f"head.{name}") for name in config["heads"]}
        features = {k: v for k, v in tensors.items() if not k.startswith("head.")}
        record = {k: v for k, v in config.items() if k not in ("class_ids", "class_names", "heads")}
        return cls(config["class_ids"], config["class_names"], heads, features, record)


def fit_judge(shards: Path, index: Path, raw_dir: Path, resolutions: list[str], inception: Inception) -> Judge:
    splits = {split: split_waveforms(split, shards, index, raw_dir, mix_domain=None)  # single clips: one class each
              for split in ("train", "val", "test")}
    spec: SpectrogramSpec = splits["train"]["spec"]
    sound = SoundEmbedding(spec.sample_rate)
    # the training geometry always: VAE reconstructions, long and in-painted clips are read there
    resolutions = list(dict.fromkeys([format_resolution(spec.image_size, spec.image_size), *resolutions]))
    train_rows = read_single_clips("train", ["target", "target_name"], shards)
    names = dict(zip(train_rows["target"], train_rows["target_name"]))
    class_ids = sorted(set(splits["train"]["target"]))
    labels = {s: label_indices(class_ids, d["target"]) for s, d in splits.items()}
    total = sum(len(d["target"]) for d in splits.values()) * (1 + len(resolutions))
    progress = tqdm(total=total, desc="fit_judge features", unit="clip", file=sys.stderr)
    heads, features, choices = {}, {}, {}

    def head(name: str, per_split: dict[str, np.ndarray]) -> None:
        known = {s: labels[s] >= 0 for s in per_split}
        heads[name], choices[name] = fit_on_validation(
            per_split["train"][known["train"]], labels["train"][known["train"]],
            per_split["val"][known["val"]], labels["val"][known["val"]], len(class_ids))
        test = known["test"]
        choices[name]["test_accuracy"] = float((heads[name].predict(per_split["test"][test])
                                                == labels["test"][test]).mean()) if test.any() else None

    blocks = {s: sound(d["waveform"], progress) for s, d in splits.items()}
    head("audio", {s: clip_features(b) for s, b in blocks.items()})
    features["test.audio"], features["train.audio"] = blocks["test"], blocks["train"]
    for resolution in resolutions:
        height, width = parse_resolution(resolution)
        images = {s: log_mel_to_grey(torch.from_numpy(d["log_mel"]), spec, height, width).numpy()
                  for s, d in splits.items()}
        inception_features = {s: inception(images[s], progress) for s in splits}
        head(f"image.{resolution}", inception_features)
        features[f"test.image.{resolution}"] = inception_features["test"]
    progress.close()
    features["test.labels"] = labels["test"]
    record = {"extractors": {"image": inception.record(), "audio": sound.record()},
              "judge": "multinomial logistic regression (float64, L2, L-BFGS to 1e-10) on frozen features, "
                       "standardised on the training split; image: Inception pool3 of the clip rendered at "
                       "the geometry; audio: aisfx mean and std over the clip's blocks",
              "heads_fit": choices,
              "clips": {s: int((labels[s] >= 0).sum()) for s in splits}}
    return Judge(class_ids, [names.get(c, c) for c in class_ids], heads, features, record)

