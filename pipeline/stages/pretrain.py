"""Stage ``pretrain``: the image-pretrained base model -> ``models/pretrained/``.

``model.base: tiny`` trains a small KL-VAE and then a text-conditioned U-Net on random
crops of natural photographs that ship inside scikit-image and scikit-learn, captioned
from their names: the offline, laptop-sized stand-in for Stable Diffusion's LAION
pre-training, so that "pretrained vs fine-tuned" means the same thing in both profiles.
Any other ``model.base`` (a local directory or a hub id) is copied as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.model import ModelParams, PretrainParams
from pipeline.config.spectrogram import RenderParams
from pipeline.errors import stage_main
from pipeline.files import write_json
from pipeline.models import advice_when_out_of_memory
from pipeline.models.diffusion import (
    TINY,
    assemble,
    build_unet,
    build_vae,
    caption_embeddings,
    diffusion_training_loss,
    latent_scale,
    load_minilm,
    materialise_base,
    noise_scheduler,
    save_pipeline,
    uint8_to_pm1,
)
from pipeline.paths import PRETRAINED_DIR, TIMINGS_DIR
from pipeline.sources.photographs import natural_photographs, random_crops
from pipeline.training.vae import scale_to_unit_variance, vae_step

METRICS = Path("metrics/pretrain.json")

def train_vae(vae, photos, config: PretrainParams, rng: np.random.Generator) -> float:
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate)
    vae.train()
    loss = torch.tensor(float("nan"))
    for _ in tqdm(range(config.vae_steps), desc="pretrain vae", unit="step", file=sys.stderr):
        crops, _ = random_crops(photos, config.crop_size, config.batch_size, rng)
        loss = vae_step(vae, optimizer, uint8_to_pm1(crops), config.kl_weight)
    return loss.item()


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch_size: int = 32) -> torch.Tensor:
    """Scaled latent means (the VAE posterior's mode), batch by batch."""
    vae.eval()
    chunks = [vae.encode(uint8_to_pm1(images[i:i + batch_size])).latent_dist.mean
              for i in range(0, len(images), batch_size)]
    return torch.cat(chunks) * vae.config.scaling_factor


def pretrain_tiny(params: Sections, out_dir: Path) -> dict:
    config, model = params.pretrain, params.model
    image_size = params.render.image_size
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    photos = natural_photographs()
    tokenizer, text_encoder = load_minilm(model.max_tokens)
    vae = build_vae(model.vae_channels, model.vae_layers_per_block, image_size)
    unet = build_unet(model.unet_channels, model.unet_layers_per_block, model.attention_head_dim,
                      text_encoder.config.hidden_size, image_size // latent_scale(vae))
    started = time.perf_counter()
    vae_loss = train_vae(vae, photos, config, rng)

    crops, captions = random_crops(photos, image_size, max(256, 4 * config.batch_size), rng)
    vae.register_to_config(scaling_factor=1.0)
    latents = encode_latents(vae, crops)
    latents = latents * scale_to_unit_variance(vae, latents)

    pipe = assemble(vae, unet, tokenizer, text_encoder, noise_scheduler())
    states = caption_embeddings(pipe, captions)
    stacked = torch.stack([states[c] for c in captions])
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    generator = torch.Generator().manual_seed(config.seed)
    unet.train()
    unet_loss = float("nan")
    for _ in tqdm(range(config.unet_steps), desc="pretrain unet", unit="step", file=sys.stderr):
        batch = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
        loss = diffusion_training_loss(unet, pipe.scheduler, latents[batch], stacked[batch], states[""],
                                       config.caption_dropout, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        unet_loss = loss.item()
    unet.eval()
    save_pipeline(pipe, out_dir)
    return {"base": TINY, "photographs": len(photos), "vae_steps": config.vae_steps,
            "vae_final_l1": vae_loss, "unet_steps": config.unet_steps, "unet_final_loss": unet_loss,
            "latent_scaling_factor": vae.config.scaling_factor,
            "timings": {"wall_seconds": time.perf_counter() - started}}


def pretrain(params: Sections, out_dir: Path = PRETRAINED_DIR) -> dict:
    if params.model.base == TINY:
        config = params.pretrain
        with advice_when_out_of_memory(f"at pretrain.batch_size={config.batch_size} and "
                                       f"pretrain.crop_size={config.crop_size}, lower either"):
            return pretrain_tiny(params, out_dir)
    materialise_base(params.model.base, out_dir)
    return {"base": params.model.base}


@stage_main("pretrain")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    parser.add_argument("--out", default=str(PRETRAINED_DIR))
    args = parser.parse_args(argv)
    summary = pretrain(load_sections(args.params, model=ModelParams, pretrain=PretrainParams, render=RenderParams),
                       Path(args.out))
    write_json(TIMINGS_DIR / "pretrain.json", summary.pop("timings", {}))
    write_json(METRICS, summary)
    print(json.dumps(summary, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
