"""Stage ``sample``: spectrograms and audio from each model at each resolution.

For each model in {pretrained, finetuned}, each ``H x W`` in ``sample.resolutions``,
each class and ``sample.per_class`` seeds: a PNG, a WAV for the first
``sample.wavs_per_class`` of them (through ``sample.vocoder``: Griffin-Lim, the neural
vocoder of ``models/vocoder``, or whichever of them did better on validation), and a
``prompts.csv`` table, in ``data/samples/<model>/<H>x<W>/``. Each kept training
checkpoint also gets a small set at the training geometry, in
``data/samples/checkpoints/step-NNNNNN/``, for the FID-by-checkpoint curve.

The fine-tuned model also draws long clips, out-painted window by window
(``data/samples/longform/``: one per class, 60 s each; the first is copied to
``metrics/longform.png``, a DVC image plot), and redraws 3-7 s of every third test clip for
another class (``data/samples/inpaint/``): the test clips are its canvas, never a guide.

When ``sample.guidance_scale`` lists candidates, each model first draws a small set at
the training geometry with each, from seeds no reported set uses, and keeps the scale
whose samples lie closest (Frechet distance in the evaluator's embedding) to the
validation clips. The test split plays no part in the choice; ``metrics/guidance.json``
records it with every candidate's distance and accuracy.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from diffusers import UNet2DConditionModel
from tqdm import tqdm

from pipeline.audio.shards import read_spec, shard_files
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.sample import SampleParams
from pipeline.config.spectrogram import SpectrogramParams, format_resolution, parse_resolution
from pipeline.errors import stage_main
from pipeline.files import write_json
from pipeline.models.checkpoints import checkpoints
from pipeline.models.evaluator import Evaluator
from pipeline.models.generate import load_generator
from pipeline.models.sample_sets import (
    GUIDANCE_METRICS,
    LONGFORM_PLOT,
    VALIDATION_PER_CLASS,
    choose_guidance,
    class_prompts,
    inpaint_set,
    longform_set,
    plan,
    sample_set,
)
from pipeline.models.vocoder import vocoder_for
from pipeline.paths import CHECKPOINT_DIR, EVALUATOR_DIR, MODELS, SAMPLES_DIR, SHARDS_DIR, VOCODER_DIR


def sample(params: Sections, shards: Path = SHARDS_DIR, out_dir: Path = SAMPLES_DIR,
           models: dict[str, Path] = MODELS, checkpoint_dir: Path = CHECKPOINT_DIR,
           evaluator_dir: Path = EVALUATOR_DIR, guidance_file: Path = GUIDANCE_METRICS,
           vocoder_dir: Path = VOCODER_DIR, plot_file: Path = LONGFORM_PLOT) -> dict:
    config = params.sample
    spec = read_spec(shard_files("train", shards)[0])
    vocoder = vocoder_for(config.vocoder, spec, vocoder_dir)
    prompts = class_prompts(shards)
    evaluator = Evaluator.load(evaluator_dir)
    sizes = [parse_resolution(r) for r in config.resolutions]
    kept = checkpoints(checkpoint_dir) if config.checkpoint_per_class else []
    choosing = VALIDATION_PER_CLASS * len(config.guidance_scales) if len(config.guidance_scales) > 1 else 0
    total = (len(models) * (len(sizes) * config.per_class + choosing)
             + len(kept) * config.checkpoint_per_class) * len(prompts)
    progress = tqdm(total=total, desc="sample", unit="img", file=sys.stderr)
    shutil.rmtree(out_dir, ignore_errors=True)
    guidance = {}
    for model, path in models.items():
        pipe = load_generator(path, config.scheduler)
        scale, candidates = choose_guidance(pipe, prompts, config, spec, evaluator, shards, progress)
        guidance[model] = {"guidance_scale": scale, "candidates": candidates}
        for height, width in sizes:
            sample_set(pipe, plan(prompts, config.per_class, config.seed), height, width, config, scale, spec,
                       out_dir / model / format_resolution(height, width), config.wavs_per_class, vocoder,
                       progress)
    pipe = load_generator(models["finetuned"], config.scheduler)
    longform_set(pipe, prompts, config, guidance["finetuned"]["guidance_scale"], spec, out_dir / "longform", plot_file)
    inpaint_set(pipe, prompts, config, guidance["finetuned"]["guidance_scale"], spec, shards, out_dir / "inpaint")
    if kept:
        for checkpoint in kept:
            pipe.unet = UNet2DConditionModel.from_pretrained(checkpoint / "unet", use_safetensors=True).to(
                pipe.device).eval()
            sample_set(pipe, plan(prompts, config.checkpoint_per_class, config.seed),
                       spec.image_size, spec.image_size, config, guidance["finetuned"]["guidance_scale"], spec,
                       out_dir / "checkpoints" / checkpoint.name / format_resolution(spec.image_size, spec.image_size),
                       0, vocoder, progress)
    progress.close()
    write_json(guidance_file, guidance)
    return guidance


@stage_main("sample")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    sample(load_sections(args.params, sample=SampleParams, spectrogram=SpectrogramParams))


if __name__ == "__main__":
    main()
