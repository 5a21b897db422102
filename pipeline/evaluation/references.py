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

from pipeline.audio.shards import iter_rows
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey
from pipeline.audio.waveforms import SplitAudio
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


def real_features(clips: SplitAudio, sound: SoundEmbedding, inception: Inception, resolutions: list[str],
                  progress) -> dict[str, np.ndarray]:
    """A split's aisfx blocks (``audio``) and its Inception features at each geometry, a batch of
    clips at a time."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ["audio", *resolutions]}
    for batch in clips.batches():
        parts["audio"].append(sound(batch["waveform"], progress))
        for resolution in resolutions:
            images = log_mel_to_grey(torch.from_numpy(batch["log_mel"]), clips.spec, *parse_resolution(resolution))
            parts[resolution].append(inception(images.numpy(), progress))
    return {key: np.concatenate(values) for key, values in parts.items()}


def fit_judge(shards: Path, index: Path, raw_dir: Path, resolutions: list[str], inception: Inception) -> Judge:
    splits = ("train", "val", "test")
    audio = {split: SplitAudio(split, shards, index, raw_dir, mix_domain=None)  # single clips: one class each
             for split in splits}
    spec: SpectrogramSpec = audio["train"].spec
    sound = SoundEmbedding(spec.sample_rate)
    # the training geometry always: VAE reconstructions, long and in-painted clips are read there
    resolutions = list(dict.fromkeys([format_resolution(spec.image_size, spec.image_size), *resolutions]))
    rows = {split: list(iter_rows(split, ["target", "target_name"], shards, single_clips=True)) for split in splits}
    names = {row["target"]: row["target_name"] for row in rows["train"]}
    class_ids = sorted(names)
    labels = {s: label_indices(class_ids, [row["target"] for row in r]) for s, r in rows.items()}
    total = sum(len(r) for r in rows.values()) * (1 + len(resolutions))
    progress = tqdm(total=total, desc="fit_judge features", unit="clip", file=sys.stderr)
    per_split = {split: real_features(audio[split], sound, inception, resolutions, progress) for split in splits}
    heads, features, choices = {}, {}, {}

    def head(name: str, by_split: dict[str, np.ndarray]) -> None:
        known = {s: labels[s] >= 0 for s in by_split}
        heads[name], choices[name] = fit_on_validation(
            by_split["train"][known["train"]], labels["train"][known["train"]],
            by_split["val"][known["val"]], labels["val"][known["val"]], len(class_ids))
        test = known["test"]
        choices[name]["test_accuracy"] = float((heads[name].predict(by_split["test"][test])
                                                == labels["test"][test]).mean()) if test.any() else None

    head("audio", {s: clip_features(f["audio"]) for s, f in per_split.items()})
    features["test.audio"], features["train.audio"] = per_split["test"]["audio"], per_split["train"]["audio"]
    for resolution in resolutions:
        head(f"image.{resolution}", {s: f[resolution] for s, f in per_split.items()})
        features[f"test.image.{resolution}"] = per_split["test"][resolution]
    progress.close()
    features["test.labels"] = labels["test"]
    record = {"extractors": {"image": inception.record(), "audio": sound.record()},
              "judge": "multinomial logistic regression (float64, L2, L-BFGS to 1e-10) on frozen features, "
                       "standardised on the training split; image: Inception pool3 of the clip rendered at "
                       "the geometry; audio: aisfx mean and std over the clip's blocks",
              "heads_fit": choices,
              "clips": {s: int((labels[s] >= 0).sum()) for s in splits}}
    return Judge(class_ids, [names.get(c, c) for c in class_ids], heads, features, record)

