"""The sets the ``sample`` stage draws: one prompt per class and the seed plan, the guidance
scale chosen on the validation clips, plain sample sets (PNG, WAV, ``prompts.csv``), long
out-painted clips and in-painted test clips."""

from __future__ import annotations

import itertools
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from pipeline.audio.shards import iter_rows, single_clip_batches
from pipeline.audio.spectrogram import log_mel_to_grey
from pipeline.config.sample import SampleParams
from pipeline.evaluation.scores import frechet
from pipeline.files import atomic_path
from pipeline.models.diffusion import latent_scale
from pipeline.models.evaluator import Evaluator, accuracy, as_clips
from pipeline.models.generate import generate_images, image_to_audio, save_png, save_wav
from pipeline.models.inpaint import decode, inpaint_log_mel, long_latents, plan_windows, region_mask
from pipeline.models.vocoder import Vocode
from pipeline.paths import INPAINTED, METRICS_DIR


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def class_prompts(shards: Path) -> list[dict]:
    """One prompt per class: the caption its single-clip training rows carry."""
    prompts = {}
    for row in iter_rows("train", ["target", "target_name", "caption"], shards, single_clips=True):
        prompts.setdefault(row["target"], {"class_id": row["target"], "class_name": row["target_name"],
                                           "prompt": row["caption"]})
    return sorted(prompts.values(), key=lambda p: p["class_name"])


# The seed plan, in one place: each set draws from sample.seed plus its own offset, so no two
# sets share noise (the reported sets: plan(prompts, n, sample.seed)).
VALIDATION_SEED = 1_000_000_007  # the guidance scale's choice on the validation clips
EXTRA_SEED = 2_000_000_011  # long out-painted clips: + 1000 x prompt
INPAINT_SEED = 3_000_000_019  # in-painted test clips: + their index


def plan(prompts: list[dict], per_class: int, seed: int) -> list[dict]:
    """Every sample of a set with its own seed (class and index, not batch position)."""
    return [dict(p, index=k, seed=seed * 1_000_003 + c * 1_000 + k,
                 file=f"{slug(p['class_name'])}-{k}.png")
            for c, p in enumerate(prompts) for k in range(per_class)]


GUIDANCE_METRICS = METRICS_DIR / "guidance.json"
VALIDATION_PER_CLASS = 1  # samples per class and candidate scale when choosing the guidance


def choose_guidance(pipe, prompts: list[dict], config: SampleParams, spec, evaluator: Evaluator,
                    shards: Path, progress) -> tuple[float, dict]:
    """The candidate scale whose samples lie closest to the validation clips, and for each
    candidate its distance and how often the evaluator heard the prompted class."""
    if len(config.guidance_scales) == 1:
        return config.guidance_scales[0], {}
    rows = plan(prompts, VALIDATION_PER_CLASS, config.seed + VALIDATION_SEED)
    real = np.concatenate([evaluator.embed(batch["log_mel"]) for batch in  # a batch of validation clips at a time
                           single_clip_batches("val", ["log_mel"], shards)])
    scores = {}
    for scale in config.guidance_scales:
        images = generate_images(pipe, [r["prompt"] for r in rows], [r["seed"] for r in rows],
                                 spec.image_size, spec.image_size, config.steps, scale, config.batch_size)
        clips = as_clips(torch.from_numpy(images), spec)
        scores[str(scale)] = {"fd_val": frechet(evaluator.embed(clips), real, 0, 0).value,
                              "accuracy_val": accuracy(evaluator.recognised(clips, [r["class_id"] for r in rows]))}
        progress.update(len(rows))
    chosen = min(config.guidance_scales, key=lambda scale: scores[str(scale)]["fd_val"])
    return chosen, scores


INPAINT_REGION = (3.0, 7.0)  # seconds of each test clip drawn again
INPAINT_EVERY = 3  # every third single-clip test row


def inpaint_set(pipe, prompts: list[dict], config: SampleParams, guidance: float, spec, shards: Path,
                out_dir: Path) -> None:
    """Every ``INPAINT_EVERY``-th single test clip with ``INPAINT_REGION`` drawn again by the
    fine-tuned model for the class half the class list away: ``data/samples/inpaint/`` holds
    the redrawn log-mels and their masks (safetensors, in dB: evaluate measures the change
    outside the region exactly), a PNG of each and ``prompts.csv``. The test clips are read
    only as the canvas; nothing here is scored."""
    count = sum(1 for _ in iter_rows("test", ["target"], shards, single_clips=True))
    test = itertools.islice(enumerate(iter_rows("test", ["id", "log_mel", "target"], shards, single_clips=True)),
                            0, None, INPAINT_EVERY)
    captions = {p["class_id"]: p for p in prompts}
    classes = sorted(captions)
    rows, drawn, masks = [], [], []
    for i, clip in tqdm(test, total=-(-count // INPAINT_EVERY), desc="in-painting test clips", unit="clip",
                        file=sys.stderr):
        if clip["target"] not in captions:
            continue
        other = captions[classes[(classes.index(clip["target"]) + len(classes) // 2) % len(classes)]]
        log_mel = torch.from_numpy(clip["log_mel"])
        mask = region_mask(log_mel.shape[-1], *INPAINT_REGION, None, None, spec)
        seed = config.seed + INPAINT_SEED + i
        drawn.append(inpaint_log_mel(pipe, log_mel, mask, other["prompt"], spec, config.steps, guidance, seed))
        masks.append(torch.from_numpy(mask.astype(np.uint8)))
        rows.append({"file": f"{len(rows):04d}-{slug(other['class_name'])}.png", "test_id": clip["id"],
                     "source_class_id": clip["target"], "class_id": other["class_id"],
                     "class_name": other["class_name"], "prompt": other["prompt"], "seed": seed,
                     "guidance": guidance})
    out_dir.mkdir(parents=True)
    for row, log_mel in zip(rows, drawn):
        save_png(out_dir / row["file"], log_mel_to_grey(log_mel, spec).numpy())
    if rows:
        save_file({"log_mel": torch.stack(drawn).contiguous(), "mask": torch.stack(masks).contiguous()},
                  str(out_dir / INPAINTED))
    pd.DataFrame(rows, columns=["file", "test_id", "source_class_id", "class_id", "class_name", "prompt", "seed",
                                "guidance"]).to_csv(out_dir / "prompts.csv", index=False)


LONGFORM_PLOT = METRICS_DIR / "longform.png"
LONGFORM_OVERLAP = 2.5


def longform_set(pipe, prompts: list[dict], config: SampleParams, guidance: float, spec, out_dir: Path,
                 plot_file: Path) -> None:
    """A long clip of every class (a few hand-picked would make ``longform.accuracy`` a matter of
    which; ``sample.longform_classes`` draws a seeded few), and the frames where each window's
    new part begins."""
    out_dir.mkdir(parents=True)
    scale = latent_scale(pipe.vae)
    plan, _, _ = plan_windows(config.longform_seconds, LONGFORM_OVERLAP, spec, scale, [(0.0, "")])
    frames_per_cell = scale * spec.n_frames / spec.image_size
    seams = " ".join(str(round(w.start * frames_per_cell)) for w in plan[1:])
    chosen = range(len(prompts))
    if 0 < config.longform_classes < len(prompts):
        drawn = np.random.default_rng(config.seed).choice(len(prompts), config.longform_classes, replace=False)
        chosen = sorted(int(k) for k in drawn)
    rows = []
    for k in tqdm(chosen, desc="long clips", unit="clip", file=sys.stderr):
        prompt, seed = prompts[k], config.seed + EXTRA_SEED + 1_000 * k
        strip = long_latents(pipe, [(0.0, prompt["prompt"])], config.longform_seconds, LONGFORM_OVERLAP, spec,
                             config.steps, guidance, seed)
        row = dict(prompt, file=f"{slug(prompt['class_name'])}.png", seed=seed, seam_frames=seams)
        save_png(out_dir / row["file"], decode(pipe, strip))
        rows.append(row)
    columns = ["file", "class_id", "class_name", "prompt", "seed", "seam_frames"]
    pd.DataFrame(rows)[columns].to_csv(out_dir / "prompts.csv", index=False)
    with atomic_path(plot_file) as tmp:
        shutil.copyfile(out_dir / rows[0]["file"], tmp)


def sample_set(pipe, rows: list[dict], height: int, width: int, config: SampleParams, guidance: float,
               spec, out_dir: Path, wavs_per_class: int, vocoder: tuple[str, Vocode], progress) -> None:
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    for start in range(0, len(rows), config.batch_size):
        batch = rows[start:start + config.batch_size]
        images = generate_images(pipe, [r["prompt"] for r in batch], [r["seed"] for r in batch],
                                 height, width, config.steps, guidance, config.batch_size)
        for row, grey in zip(batch, images):
            save_png(out_dir / row["file"], grey)
            row["wav"] = None
            if row["index"] < wavs_per_class:
                row["wav"] = row["file"].replace(".png", ".wav")
                save_wav(out_dir / row["wav"], image_to_audio(grey, spec, vocoder[1], row["seed"]), spec.sample_rate)
        progress.update(len(batch))
    columns = ["file", "wav", "class_id", "class_name", "prompt", "seed", "guidance", "vocoder"]
    table = pd.DataFrame(rows).assign(guidance=guidance, vocoder=vocoder[0])
    table[columns].to_csv(out_dir / "prompts.csv", index=False)
