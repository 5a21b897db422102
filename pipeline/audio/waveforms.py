"""The audio behind each shard row: a clip read and checked, a row's clips, a split as waveforms.

``render`` analyses rows into log-mels through these; ``train_vocoder`` and ``evaluate``
read back the waveforms those log-mels were analysed from, so a vocoder learns and is
scored on exactly the audio each row stands for (a waveform-domain mixture is its clips'
mean; a mel-domain mixture has no waveform and is left out).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf
import torch

from pipeline.audio.shards import BATCH_ROWS, ShardError, in_batches, iter_rows, read_spec, shard_files
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


def row_digests(row: dict, store: ClipStore) -> list[str | None]:
    """The recorded digests of a subset row's clips, in order (None for a clip not there)."""
    return [store.sha256(shard, clip_id) for shard, clip_id in zip(row["paths"], row["source_ids"])]


class SplitAudio:
    """The rows of a shard split that have a waveform, read a bounded batch at a time: a
    waveform-domain mixture is its clips' mean; a mel-domain mixture has none and is left out
    (``mix_domain`` is ``subset.mix_domain``; None takes single clips only)."""

    def __init__(self, split: str, shards: Path, index_path: Path, raw_dir: Path, mix_domain: str | None):
        self.split, self.shards, self.single_clips = split, Path(shards), mix_domain != "waveform"
        self.spec = read_spec(shard_files(split, shards)[0])
        self.index = {row["id"]: row for row in
                      pq.read_table(index_path, columns=["id", "paths", "source_ids"]).to_pylist()}
        self.store = ClipStore(raw_dir)

    def _rows(self, columns: list[str]) -> Iterator[dict]:
        for row in iter_rows(self.split, ["id", *columns], self.shards, self.single_clips):
            if row["id"] not in self.index:
                raise ShardError(f"{row['id']} of {self.shards / self.split} is not in the subset index; "
                                 "run `dvc repro render`")
            yield row | {"clips": self.index[row["id"]]}

    def clip_sha256(self) -> list[str | None]:
        """The recorded digests of the clips the waveforms are made from, in order; no audio is read."""
        return [digest for row in self._rows([]) for digest in row_digests(row["clips"], self.store)]

    def _with_audio(self) -> Iterator[dict]:
        for row in self._rows(["log_mel", "target"]):
            try:
                waveform = row_clips(row.pop("clips"), self.store, self.spec).mean(dim=0)
            except SkipRow as error:
                raise ShardError(f"{row['id']} of {self.shards / self.split}: its audio is gone or changed since "
                                 f"render ({error}); run `dvc repro render`") from None
            yield row | {"waveform": waveform}

    def batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[dict]:
        """``{"id", "target": lists, "log_mel": (B, n_mels, frames) as rendered, "waveform": (B, samples)
        float32}``, ``batch_rows`` rows each (the last fewer), in shard order."""
        return in_batches(self._with_audio(), batch_rows)
