"""Mel rendering throughput: the spec functions (batched, cached transforms) against a
straightforward per-clip loop that builds its transforms for every clip. Both render the
same synthetic clips to uint8 training images in the same run.

    python benchmarks/bench_mel.py [--clips 96] [--batch 8] [--image-size 512] [--repeats 3]
"""

import argparse
import time

import numpy as np
import torch
import torchaudio
from PIL import Image

from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_image, waveform_to_log_mel
from pipeline.sources.synthetic import CATALOGUE, render_clip


def naive_render(clip: np.ndarray, spec: SpectrogramSpec) -> np.ndarray:
    """What one writes first: a fresh transform per clip, PIL for resizing."""
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=spec.sample_rate, n_fft=spec.n_fft, hop_length=spec.hop_length,
        f_min=spec.f_min, f_max=spec.f_max, n_mels=spec.n_mels, power=2.0)
    to_db = torchaudio.transforms.AmplitudeToDB(stype="power")
    db = to_db(mel(torch.from_numpy(clip)))[:, :spec.n_frames].clamp(spec.min_db, spec.max_db)
    unit = ((db - spec.min_db) / (spec.max_db - spec.min_db)).numpy()
    grey = Image.fromarray((unit[::-1] * 255).round().astype(np.uint8))
    grey = grey.resize((spec.image_size, spec.image_size), Image.NEAREST)
    return np.repeat(np.asarray(grey)[None], 3, axis=0)


def spec_render(clips: torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    return log_mel_to_image(waveform_to_log_mel(clips, spec), spec)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=96)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = SpectrogramSpec(image_size=args.image_size)
    clips = np.stack([render_clip(CATALOGUE[i % len(CATALOGUE)], np.random.default_rng(i),
                                  spec.sample_rate, spec.clip_seconds) for i in range(args.clips)])

    tensor = torch.from_numpy(clips)
    spec_render(tensor[:1], spec)  # build the cached transforms, as a stage does once

    def run_naive():
        return [naive_render(clip, spec) for clip in clips]

    def run_spec():
        return torch.cat([spec_render(tensor[i:i + args.batch], spec)
                          for i in range(0, len(tensor), args.batch)])

    # Interleaved repeats, best of each: the machine's background noise hits both alike.
    naive_seconds = fast_seconds = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        naive = run_naive()
        naive_seconds = min(naive_seconds, time.perf_counter() - start)
        start = time.perf_counter()
        fast = run_spec()
        fast_seconds = min(fast_seconds, time.perf_counter() - start)

    mismatch = np.abs(fast.numpy().astype(int) - np.stack(naive).astype(int)).max()
    print(f"clips={args.clips} image={spec.image_size}x{spec.image_size} threads={torch.get_num_threads()}")
    print(f"per-clip loop    : {args.clips / naive_seconds:8.1f} clips/s")
    print(f"spec, batch={args.batch:<4d}: {args.clips / fast_seconds:8.1f} clips/s")
    print(f"speed-up         : {naive_seconds / fast_seconds:8.2f}x  (max pixel difference {mismatch})")


if __name__ == "__main__":
    main()
