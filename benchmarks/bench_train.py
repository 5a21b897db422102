"""Training throughput, each against its baseline in the same run on the same models:

* U-Net steps on cached VAE posteriors (what `train` does) against encoding every batch
  with the VAE first;
* VAE fine-tuning steps on `train.vae_crop_size` crops (what `train` does) against whole
  images, in steps/s at `train.vae_batch_size`.

    python benchmarks/bench_train.py [--image-size 128] [--batch 32] [--steps 20]

Uses the tiny architecture of params.yaml with random weights: speed, not quality.
"""

import argparse
import time

import torch

from pipeline.models.diffusion import build_unet, build_vae, diffusion_loss, latent_scale, noise_scheduler
from pipeline.params import load
from pipeline.training.vae import vae_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    model = load().model
    torch.manual_seed(0)
    vae = build_vae(model.vae_channels, model.vae_layers_per_block, args.image_size).eval()
    unet = build_unet(model.unet_channels, model.unet_layers_per_block, model.attention_head_dim,
                      384, args.image_size // latent_scale(vae))
    scheduler = noise_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    images = torch.rand(args.batch, 3, args.image_size, args.image_size) * 2 - 1
    states = torch.randn(args.batch, model.max_tokens, 384)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        posterior = vae.encode(images).latent_dist
        mean, std = posterior.mean, posterior.std

    def step(latents):
        loss = diffusion_loss(unet, scheduler, latents, states, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def cached():
        step(mean + std * torch.randn(mean.shape, generator=generator))

    def encoded():
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator)
        step(latents)

    timings = {}
    for name, fn in (("cached latents", cached), ("encode every step", encoded)):
        fn()  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps):
            fn()
        timings[name] = args.batch * args.steps / (time.perf_counter() - start)
    print(f"image {args.image_size}px batch {args.batch} threads {torch.get_num_threads()}")
    for name, rate in timings.items():
        print(f"{name:18s}: {rate:7.1f} samples/s")
    print(f"speed-up from caching: {timings['cached latents'] / timings['encode every step']:.2f}x")

    config = load().train
    vae.train()
    vae_optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)

    def finetune_step(size: int) -> None:
        batch = torch.rand(config.vae_batch_size, 3, size, size) * 2 - 1
        vae_step(vae, vae_optimizer, batch, config.vae_kl_weight, generator)

    rates = {}
    crop = min(config.vae_crop_size, args.image_size)
    for size in (crop, args.image_size):
        finetune_step(size)  # warm-up
        start = time.perf_counter()
        for _ in range(args.steps // 2):
            finetune_step(size)
        rates[size] = (args.steps // 2) / (time.perf_counter() - start)
        print(f"VAE fine-tuning on {size:3d} px: {rates[size]:6.2f} steps/s (batch {config.vae_batch_size})")
    print(f"speed-up from crops: {rates[crop] / rates[args.image_size]:.2f}x")


if __name__ == "__main__":
    main()
