"""Stable Diffusion v1.4's own U-Net (built from its published config, random weights) fine-tuning
at the paper's geometry, 512 px images = 64x64 latents, at the paper's batch of 8:

* samples/s and peak GPU memory for fp32 and bf16 autocast (what train.mixed_precision: auto
  picks), each with and without gradient checkpointing, as ratios against fp32 without it;
* the projected wall time of the paper's 25,000 steps against the report's 12 hours on one RTX 3090;
* seconds to generate one 64x400 sample (50 DPM++ steps, guidance 7.5, SD v1.4's VAE and
  CLIP-L-sized text encoder) and to vocode it with Griffin-Lim and with the paper-sized vocoder.

    python benchmarks/bench_sd_train.py [--divisor 1] [--batch 8] [--steps 10] [--out FILE.json]

Meant for a GPU. Without one it runs at ``--divisor 10`` (widths / 10, batch 2, 2 steps) to check
the script itself: those CPU numbers say nothing about the paper run.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from pipeline.models import compute_device
from pipeline.models.diffusion import diffusion_loss, noise_scheduler
from pipeline.models.generate import SCHEDULERS, generate_images, image_to_audio
from pipeline.models.sd_shape import sd_v1_4_shaped, sd_v1_4_unet
from pipeline.models.vocoder import NeuralVocoder, VocoderShape, griffin_lim, neural
from pipeline.params import profile

REPORT_HOURS = 12.0  # the report's fine-tuning: 25k steps on one RTX 3090


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training_speed(divisor: int, batch: int, steps: int, precision: str, checkpointing: bool,
                   device: torch.device) -> dict:
    """samples/s over ``steps`` AdamW steps after 2 warm-up steps, and the peak memory."""
    torch.manual_seed(0)
    unet = sd_v1_4_unet(divisor).to(device).train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5)
    scheduler = noise_scheduler()
    latents = torch.randn(batch, 4, 64, 64, device=device)
    states = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    generator = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = diffusion_loss(unet, scheduler, latents, states, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    synchronise(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    per_second = batch * steps / (time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return {"samples_per_second": per_second, "peak_memory_gib": peak}


def generation_time(divisor: int, device: torch.device, steps: int) -> dict:
    """Seconds for one 64x400 image, then for vocoding it (best of 2 after a warm-up)."""
    pipe = sd_v1_4_shaped(divisor)
    cls, options = SCHEDULERS["dpm++"]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **options)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    spec = profile("paper").spec
    paper = profile("paper").vocoder
    vocoder = NeuralVocoder(spec, VocoderShape(paper.dim, paper.intermediate_dim, paper.num_layers,
                                               paper.n_fft)).eval()

    def best(fn):
        fn()
        times = []
        for _ in range(2):
            synchronise(device)
            started = time.perf_counter()
            result = fn()
            synchronise(device)
            times.append(time.perf_counter() - started)
        return min(times), result

    seconds, image = best(lambda: generate_images(pipe, ["a spectrogram of the sound of Dog"], [0],
                                                  64, 400, steps, 7.5)[0])
    gl, _ = best(lambda: image_to_audio(image, spec, lambda m, s: griffin_lim(m, spec, s)))
    net, audio = best(lambda: image_to_audio(image, spec, lambda m, s: neural(vocoder, m)))
    return {"diffusion_seconds": seconds, "griffin_lim_seconds": gl, "neural_vocoder_seconds": net,
            "audio_seconds": len(audio) / spec.sample_rate, "steps": steps}


def main() -> None:
    device = compute_device()
    gpu = device.type == "cuda"
    parser = argparse.ArgumentParser()
    parser.add_argument("--divisor", type=int, default=1 if gpu else 10)
    parser.add_argument("--batch", type=int, default=8 if gpu else 2)
    parser.add_argument("--steps", type=int, default=10 if gpu else 2)
    parser.add_argument("--sample-steps", type=int, default=50 if gpu else 2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not gpu:
        print(f"no GPU: SD v1.4's layout at widths / {args.divisor} on the CPU, which checks this "
              "script, not the paper run")
    where = torch.cuda.get_device_name() if gpu else "cpu"
    results = {"device": where, "divisor": args.divisor, "batch": args.batch, "training": {}}
    baseline = None
    print("| precision | gradient checkpointing | samples/s | x fp32 | peak GiB | paper's 25k steps (h) "
          f"| x report's {REPORT_HOURS:g} h |")
    print("|---|---|---|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        if precision == "bf16" and gpu and not torch.cuda.is_bf16_supported():
            continue
        for checkpointing in (False, True):
            row = training_speed(args.divisor, args.batch, args.steps, precision, checkpointing, device)
            baseline = baseline or row["samples_per_second"]
            hours = 25_000 * 8 / row["samples_per_second"] / 3600
            row.update(paper_hours=hours, ratio_to_fp32=row["samples_per_second"] / baseline)
            results["training"][f"{precision}{'+checkpointing' if checkpointing else ''}"] = row
            peak = f"{row['peak_memory_gib']:.1f}" if row["peak_memory_gib"] is not None else "–"
            print(f"| {precision} | {'yes' if checkpointing else 'no'} | {row['samples_per_second']:.2f} | "
                  f"{row['ratio_to_fp32']:.2f} | {peak} | {hours:.1f} | {hours / REPORT_HOURS:.2f} |")
    results["generation"] = generation_time(args.divisor, device, args.sample_steps)
    g = results["generation"]
    print(f"one 64x400 sample ({g['audio_seconds']:.1f} s of audio, {g['steps']} steps): diffusion "
          f"{g['diffusion_seconds']:.2f} s, Griffin-Lim {g['griffin_lim_seconds']:.2f} s, neural vocoder "
          f"{g['neural_vocoder_seconds']:.3f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
