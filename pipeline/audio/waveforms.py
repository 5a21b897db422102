"""The audio behind each shard row: a clip read and checked, a row's clips, a split as waveforms.

``render`` analyses rows into log-mels through these; ``train_vocoder`` and ``evaluate``
read back the waveforms those log-mels were analysed from, so a vocoder learns and is
scored on exactly the audio each row stands for (a waveform-domain mixture is its clips'
mean; a mel-domain mixture has no waveform and is left out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import torch

from pipeline.audio.shards import ShardError, read_spec, read_split, shard_files
from pipeline.audio.spectrogram import SpectrogramSpec
from pipeline.sources.clip_shards import ClipMissing, ClipStore

MIN_FRACTION = 0.9  # shorter audio than this fraction of a clip is "truncated"


class SkipRow(Exception):
    """This row's audio cannot be used; the message says why."""


def load_clip(store: ClipStore, shard: str, clip_id: str, spec: SpectrogramSpec) -> np.ndarray:
    """A clip as float32 mono of exactly ``spec.num_samples``, or SkipRow."""
    try:
        audio, sample_rate = store.audio(shard, clip_id)
    except ClipMissing:
        raise SkipRow("missing clip") from None
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise SkipRow(f"unreadable audio ({error})") from None
    if sample_rate != spec.sample_rate:
        raise SkipRow(f"sample rate {sample_rate} != {spec.sample_rate}")
    if audio.shape[1] != 1:
        raise SkipRow(f"{audio.shape[1]} channels, expected mono")
    audio = audio[:, 0]
    if len(audio) < MIN_FRACTION * spec.num_samples:
        raise SkipRow(f"truncated ({len(audio) / spec.sample_rate:.2f} s)")
    if not np.isfinite(audio).all():
        raise SkipRow("non-finite samples (NaN or inf)")
    if not np.any(audio):
        raise SkipRow("silent")
    return np.pad(audio[:spec.num_samples], (0, max(0, spec.num_samples - len(audio))))


def row_clips(row: dict, store: ClipStore, spec: SpectrogramSpec) -> torch.Tensor:
    """``(clips, samples)``: each clip of a subset row (one, or a mixture's sources)."""
    return torch.from_numpy(np.stack([load_clip(store, shard, clip_id, spec)
                                      for shard, clip_id in zip(row["paths"], row["source_ids"])]))


def split_waveforms(split: str, shards: Path, index_path: Path, raw_dir: Path, mix_domain: str | None) -> dict:
    """The rows of a shard split that have a waveform, with it: ``waveform`` ``(N, samples)``
    float32, ``log_mel`` ``(N, n_mels, frames)`` as rendered, ``target``, ``is_mixture``, and
    ``clip_sha256``, the recorded digests of the clips the waveforms were made from, in order.
    ``mix_domain`` is ``subset.mix_domain``; None takes single clips only."""
    spec = read_spec(shard_files(split, shards)[0])
    rows = read_split(split, ["id", "log_mel", "target", "is_mixture"], shards)
    index = {row["id"]: row for row in pq.read_table(index_path, columns=["id", "paths", "source_ids"]).to_pylist()}
    keep = [i for i, mixture in enumerate(rows["is_mixture"]) if not mixture or mix_domain == "waveform"]
    store, waveforms, digests = ClipStore(raw_dir), [], []
    for i in keep:
        try:
            row = index[rows["id"][i]]
            waveforms.append(row_clips(row, store, spec).mean(dim=0))
            digests += [store.sha256(*clip) for clip in zip(row["paths"], row["source_ids"])]
        except (KeyError, SkipRow) as error:
            raise ShardError(f"{rows['id'][i]} of {shards / split}: its audio is gone or changed since "
                             f"render ({error}); run `dvc repro render`") from None
    return {"waveform": torch.stack(waveforms) if waveforms else torch.zeros(0, spec.num_samples),
            "log_mel": rows["log_mel"][keep], "target": [rows["target"][i] for i in keep],
            "is_mixture": [bool(rows["is_mixture"][i]) for i in keep], "spec": spec,
            "clip_sha256": digests}
