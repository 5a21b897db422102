"""Which autoencoder keeps the class: VAE variants, each trained as the default trains its own
(photographs as ``pretrain`` does, then the training spectrograms as ``train`` does), scored
on the **validation** split (knobs are chosen there, never on test) by the frozen image judge
at the training geometry, beside the real clips' ceiling and the pipeline's own fine-tuned VAE.

    python benchmarks/ablate_vae.py [--variants base latent8 ...] [--spectrogram-steps 800]

Needs the default's outputs (`make run` or `dvc pull`): data/shards, models/judge and, for the
pipeline's own VAE as a reference row, models/finetuned. Each variant takes minutes on 2 cores;
the table goes to stdout.
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

from pipeline.audio.shards import read_spec, shard_files, single_clip_batches
from pipeline.audio.spectrogram import image_to_log_mel
from pipeline.evaluation.extractors import Inception, SoundEmbedding
from pipeline.evaluation.references import Judge
from pipeline.evaluation.report import wilson
from pipeline.evaluation.scoring import Scorer
from pipeline.models.diffusion import build_vae, reconstruct
from pipeline.params import load
from pipeline.paths import FINETUNED_DIR, JUDGE_DIR, SHARDS_DIR
from pipeline.sources.photographs import natural_photographs
from pipeline.stages.pretrain import train_vae
from pipeline.training.latents import SplitImages
from pipeline.training.vae import finetune_vae

# name -> (VAE levels' channels (4 levels: 8x downsampling, 3: 4x), latent channels)
VARIANTS = {
    "base": ((16, 32, 32, 32), 4),
    "latent8": ((16, 32, 32, 32), 8),
    "latent16": ((16, 32, 32, 32), 16),
    "f4": ((16, 32, 32), 4),
    "wide": ((32, 64, 64, 64), 4),
}


def variant_vae(channels: tuple[int, ...], latent_channels: int, layers: int, size: int) -> AutoencoderKL:
    shaped = build_vae(channels, layers, size)
    return AutoencoderKL.from_config({**shaped.config, "latent_channels": latent_channels})


def validation_scores(vae, scorer: Scorer, shards: Path) -> dict:
    """Mean error in dB of the reconstructed validation log-mels, and how often the judge hears
    their class, read as ``evaluate`` reads the test clips' (``vae=None``: the real clips, the ceiling)."""
    errors, hits = [], []
    for batch in single_clip_batches("val", ["image", "log_mel", "target"], shards):
        real = torch.from_numpy(batch["log_mel"])
        recovered = real if vae is None else image_to_log_mel(
            torch.from_numpy(reconstruct(vae, batch["image"])), scorer.spec, n_frames=real.shape[-1])
        errors.append((recovered - real).abs().mean(dim=(1, 2)).numpy())
        hits.append(scorer.image_hits(recovered, batch["target"]))
    hits = np.concatenate(hits)
    return {"mae_db": float(np.concatenate(errors).mean()), "accuracy": float(np.nanmean(hits)),
            "clips": int(np.isfinite(hits).sum())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--spectrogram-steps", type=int, default=None,
                        help="spectrogram fine-tuning steps (default: train.vae_steps)")
    args = parser.parse_args()
    params = load()
    train = params.train if args.spectrogram_steps is None else replace(params.train,
                                                                        vae_steps=args.spectrogram_steps)
    shards = SHARDS_DIR
    spec = read_spec(shard_files("val", shards)[0])
    scorer = Scorer(Judge.load(JUDGE_DIR), Inception.from_params("", "", 32), SoundEmbedding(spec.sample_rate),
                    spec, 0, 0)
    photos, images = natural_photographs(), SplitImages("train", shards)
    rows = [("real validation clips (ceiling)", validation_scores(None, scorer, shards), 0.0)]
    if (FINETUNED_DIR / "vae").is_dir():
        pipeline_vae = AutoencoderKL.from_pretrained(FINETUNED_DIR / "vae", use_safetensors=True).eval()
        rows.append(("pipeline's models/finetuned/vae", validation_scores(pipeline_vae, scorer, shards),
                     0.0))
    else:  # `dvc repro fit_judge` is enough for the variants; the pipeline's own VAE is a reference
        print(f"no {FINETUNED_DIR / 'vae'} (`dvc repro train`): its row is left out", file=sys.stderr)
    for name in args.variants:
        channels, latent_channels = VARIANTS[name]
        started = time.perf_counter()
        torch.manual_seed(params.pretrain.seed)
        vae = variant_vae(channels, latent_channels, params.model.vae_layers_per_block, spec.image_size)
        train_vae(vae, photos, params.pretrain, np.random.default_rng(params.pretrain.seed))
        finetune_vae(vae, images, train, torch.device("cpu"))
        scores = validation_scores(vae, scorer, shards)
        rows.append((f"{name}: channels {channels}, {latent_channels} latent channels", scores,
                     time.perf_counter() - started))
        print(f"{rows[-1][0]}: {scores}", file=sys.stderr, flush=True)
    ceiling = rows[0][1]["accuracy"]
    print(f"Validation split, {rows[0][1]['clips']} single clips, image judge at {spec.image_size} px; "
          f"{train.vae_steps} spectrogram steps after {params.pretrain.vae_steps} photograph steps.\n")
    print("| autoencoder | accuracy [Wilson 95%] | / ceiling | error (dB) | seconds |\n|---|---|---|---|---|")
    for name, scores, seconds in rows:
        low, high = wilson(scores["accuracy"] * scores["clips"], scores["clips"])
        print(f"| {name} | {scores['accuracy']:.3f} [{low:.3f}, {high:.3f}] | {scores['accuracy'] / ceiling:.2f} | "
              f"{scores['mae_db']:.2f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
