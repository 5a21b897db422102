"""Seconds to generate one 10 s clip end to end (diffusion + each vocoder) on this machine,
at the training geometry and at 64x400, and Griffin-Lim time per clip against its
iteration count (the baseline being the 32-iteration torchaudio default).

    python benchmarks/bench_generate.py [--model models/finetuned] [--vocoder models/vocoder] [--steps 25]
"""

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.audio.spectrogram import log_mel_to_waveform, waveform_to_log_mel, width_for_seconds
from pipeline.models.diffusion import read_model_spec
from pipeline.models.generate import generate_images, image_to_audio, load_generator
from pipeline.models.vocoder import VOCODERS, vocoder_for
from pipeline.params import load
from pipeline.sources.synthetic import CATALOGUE, render_clip


def timed(fn, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/finetuned")
    parser.add_argument("--vocoder", default="models/vocoder")
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    spec = read_model_spec(args.model) or load().spec
    pipe = load_generator(Path(args.model))
    prompt = ["a spectrogram of the sound of Church bell"]
    training = (spec.image_size, width_for_seconds(spec.clip_seconds, spec))
    print(f"model {args.model}, {args.steps} DPM-Solver++ steps, guidance 3, "
          f"Griffin-Lim {spec.griffin_lim_iters} iterations, threads {torch.get_num_threads()}")
    vocoders = dict(vocoder_for(name, spec, args.vocoder) for name in VOCODERS)
    for height, width in (training, (64, 400)):
        grey = generate_images(pipe, prompt, [0], height, width, args.steps, 3.0)[0]
        diffusion = timed(functools.partial(generate_images, pipe, prompt, [0], height, width, args.steps, 3.0))
        seconds = len(image_to_audio(grey, spec, vocoders["neural"])) / spec.sample_rate
        for name, vocode in vocoders.items():
            vocoding = timed(functools.partial(image_to_audio, grey, spec, vocode))
            print(f"{height}x{width} ({seconds:.1f} s of audio): diffusion {diffusion:.2f} s + "
                  f"{name} {vocoding:.2f} s = {diffusion + vocoding:.2f} s per clip")
    clip = render_clip(CATALOGUE[12], np.random.default_rng(0), spec.sample_rate, spec.clip_seconds)
    log_mel = waveform_to_log_mel(torch.from_numpy(clip), spec)
    base = timed(lambda: log_mel_to_waveform(log_mel, spec, n_iter=32))
    for iterations in (8, 16, 32, 64, 128):
        took = timed(functools.partial(log_mel_to_waveform, log_mel, spec, n_iter=iterations))
        print(f"Griffin-Lim {iterations:3d} iterations: {took:.3f} s per 10 s clip ({took / base:.2f}x of 32)")


if __name__ == "__main__":
    main()
