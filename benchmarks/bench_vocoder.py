"""Griffin-Lim against the neural vocoder on the same real clips, in one run: real-time factor
(audio seconds per second of vocoding) at batch 1, and the neural vocoder's ratio to it;
with a GPU, the neural vocoder there too, at batch 1 and 16.

    python benchmarks/bench_vocoder.py [--vocoder models/vocoder] [--clips 8]
"""

import argparse
import time
from pathlib import Path

import torch

from pipeline.audio.waveforms import SplitAudio
from pipeline.models.vocoder import griffin_lim, load_vocoder, neural
from pipeline.paths import RAW_DIR, SHARDS_DIR, SUBSET_DIR


def real_time_factor(vocode, log_mels: torch.Tensor, seconds_each: float, repeats: int = 2) -> float:
    """Audio seconds per wall second, the best of ``repeats`` passes over the clips."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for index, log_mel in enumerate(log_mels):
            vocode(log_mel, index)
        best = min(best, time.perf_counter() - started)
    return len(log_mels) * seconds_each / best


@torch.inference_mode()
def gpu_real_time_factor(vocoder, log_mels: torch.Tensor, batch: int, seconds_each: float) -> float:
    vocoder = vocoder.cuda()
    mels = log_mels[:batch].cuda() if len(log_mels) >= batch else log_mels.repeat(batch, 1, 1)[:batch].cuda()
    vocoder(mels)  # warm-up: kernels and allocator
    torch.cuda.synchronize()
    started, rounds = time.perf_counter(), 10
    for _ in range(rounds):
        vocoder(mels)
    torch.cuda.synchronize()
    return rounds * batch * seconds_each / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vocoder", default="models/vocoder")
    parser.add_argument("--clips", type=int, default=8)
    args = parser.parse_args()
    test = SplitAudio("test", SHARDS_DIR, SUBSET_DIR / "index.parquet", RAW_DIR, mix_domain=None)
    spec = test.spec
    vocoder = load_vocoder(Path(args.vocoder), spec)
    log_mels = torch.from_numpy(next(test.batches(args.clips))["log_mel"])
    seconds = spec.n_frames * spec.hop_length / spec.sample_rate
    print(f"{len(log_mels)} test clips of {seconds:.1f} s, CPU threads {torch.get_num_threads()}, batch 1")
    slow = real_time_factor(lambda mel, seed: griffin_lim(mel, spec, seed), log_mels, seconds)
    fast = real_time_factor(lambda mel, seed: neural(vocoder, mel), log_mels, seconds)
    print(f"Griffin-Lim ({spec.griffin_lim_iters} iterations): {slow:.1f}x real time")
    print(f"neural vocoder: {fast:.1f}x real time ({fast / slow:.1f}x Griffin-Lim's)")
    if torch.cuda.is_available():
        for batch in (1, 16):
            print(f"neural vocoder on {torch.cuda.get_device_name()}, batch {batch}: "
                  f"{gpu_real_time_factor(vocoder, log_mels, batch, seconds):.0f}x real time")


if __name__ == "__main__":
    main()
