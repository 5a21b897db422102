"""Stage ``train``: fine-tune the base model's U-Net on spectrogram shards -> ``models/finetuned/``.

:func:`train` reads top to bottom: load the base, adapt the VAE (fine-tune it on
spectrograms), encode the training set once (a VAE posterior per image), start or resume the
optimisation, then the diffusion loop (:func:`~pipeline.training.unet.train_step` under
accelerate; caption dropout for classifier-free guidance; EMA; checkpoints). No flips or crops
touch the U-Net's images: they would reverse or cut time. Micro-batches take the geometries of
``train.resolutions`` in turn, so the U-Net learns the shapes it is sampled at.

A run resumed from a checkpoint reaches the same weights as one that never stopped, and P
processes under ``accelerate launch`` train what one does with P times the accumulation
(:mod:`pipeline.training.unet` says how); either resumes the other's checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.audio.shards import read_spec, shard_files
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.train import TrainParams
from pipeline.errors import stage_main
from pipeline.files import sha256_file, write_json
from pipeline.models import advice_when_out_of_memory
from pipeline.models.diffusion import save_pipeline, write_spec
from pipeline.paths import CHECKPOINT_DIR, FINETUNED_DIR, PRETRAINED_DIR, SHARDS_DIR, TIMINGS_DIR
from pipeline.training.ema import with_ema
from pipeline.training.latents import encode_training_set
from pipeline.training.resume import ResumableRun, run_fingerprint
from pipeline.training.unet import adapt_vae, load_base, log_step, resolve_precision, start_optimisation, train_step

METRICS = Path("metrics/train.json")
LIVE_DIR = Path("metrics/train")


def fingerprint(params: Sections, shards: Path, base: Path, num_processes: int) -> str:
    """What a checkpoint must share with this run to be resumed from: the settings (with the
    micro-batches per optimiser step across all processes in place of the accumulation), the
    bytes of the training shards and of the base model, and the training code (changed
    code must retrain, not resume)."""
    train = params.to_dict()["train"]
    train["gradient_accumulation"] *= num_processes
    data = [f"{f.name}:{sha256_file(f)}\n" for f in shard_files("train", shards)]
    data += [f"{f.relative_to(base).as_posix()}:{sha256_file(f)}\n" for f in sorted(base.rglob("*")) if f.is_file()]
    return run_fingerprint(train, "pipeline.stages.train", data)


def train(params: Sections, shards: Path = SHARDS_DIR, base: Path = PRETRAINED_DIR,
          out_dir: Path = FINETUNED_DIR, checkpoint_dir: Path = CHECKPOINT_DIR,
          live_dir: Path = LIVE_DIR) -> dict:
    from accelerate import Accelerator
    from dvclive import Live

    config = params.train
    # cpu=True without CUDA: then `accelerate launch --multi_gpu` starts CPU processes over gloo
    accelerator = Accelerator(mixed_precision=resolve_precision(config.mixed_precision),
                              gradient_accumulation_steps=config.gradient_accumulation,
                              cpu=not torch.cuda.is_available())
    device, main_process = accelerator.device, accelerator.is_main_process
    spec = read_spec(shard_files("train", shards)[0])
    pipe = load_base(base, config, device)
    run = ResumableRun(checkpoint_dir, fingerprint(params, shards, base, accelerator.num_processes), config.steps,
                       config.checkpoint_every, config.keep_checkpoints)
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=False) if main_process else None
    report = adapt_vae(pipe.vae, shards, spec, config, run, live, accelerator)
    data = encode_training_set(pipe, shards, device, config.finetune_vae, config.resolutions)
    optimizer, scheduler, ema = start_optimisation(pipe.unet, config, run)
    # the schedule is not prepared: accelerate would step it once per process per step
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    progress = run.progress
    for row in progress.history if live else ():  # the log before the checkpoint, as the new run's start
        log_step(live, row)
    started = time.perf_counter()
    with advice_when_out_of_memory(
            f"at train.batch_size={config.batch_size}, lower train.batch_size and raise "
            "train.gradient_accumulation to keep the effective batch, or set "
            "train.gradient_checkpointing: true (or train.mixed_precision: bf16 on a GPU)"):
        for step in tqdm(range(run.start_step, config.steps), initial=run.start_step, total=config.steps,
                         desc="train", unit="step", file=sys.stderr, disable=not accelerator.is_main_process):
            loss = train_step(step, unet, optimizer, scheduler, data, pipe.scheduler, config, accelerator)
            run.record(step + 1, float(loss.detach()),
                       "Try a lower train.learning_rate or train.mixed_precision: 'no'.")
            if ema is not None:
                ema.update(accelerator.unwrap_model(unet), step)
            if live and run.due(config.log_every):
                # no timings here: the log is tracked in git, and must not change between
                # runs that train the same weights (throughput goes to metrics/timings/)
                progress.history.append({"step": progress.step, "loss": progress.loss,
                                         "lr": scheduler.get_last_lr()[0]})
                log_step(live, progress.history[-1])
                live.next_step()
            if main_process and run.due():
                plain = accelerator.unwrap_model(unet)
                run.save({"unet": plain.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "ema": ema.shadow if ema else None,
                          "vae": pipe.vae.state_dict() if config.finetune_vae else None},
                         with_ema(plain, ema))
    wall = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if main_process:
        pipe.unet = with_ema(accelerator.unwrap_model(unet), ema).to(torch.float32).eval()
        pipe.vae = pipe.vae.to(torch.float32)
        save_pipeline(pipe, out_dir)
        write_spec(out_dir, spec)
        live.end()
    report.update({
        "steps": config.steps, "resumed_from_step": run.start_step, "final_loss": progress.loss,
        "training_rows": data.rows, "ema": config.ema, "init": config.init,
        "mixed_precision": accelerator.mixed_precision, "processes": accelerator.num_processes,
    })
    trained = config.steps - run.start_step
    per_step = config.batch_size * config.gradient_accumulation * accelerator.num_processes
    report["timings"] = {"wall_seconds": wall, "steps_this_run": trained,
                         "samples_per_second": per_step * trained / wall if trained else None}
    return report


@stage_main("train")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    from accelerate import PartialState

    report = train(load_sections(args.params, train=TrainParams))
    if PartialState().is_main_process:  # one process writes, under `accelerate launch`
        # which step a run resumed from is how it ran, not what it made: not a tracked metric
        write_json(TIMINGS_DIR / "train.json",
                   {**report.pop("timings"), "resumed_from_step": report.pop("resumed_from_step")})
        write_json(METRICS, report)
        print(json.dumps(report, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
