"""Stage ``train``: fine-tune the base model's U-Net on spectrogram shards -> ``models/finetuned/``.

:func:`train` reads top to bottom: load the base, adapt the VAE (fine-tune it on
spectrograms), encode the training set once (a VAE posterior per image), start or resume the
optimisation, then the diffusion loop (:func:`train_step` under accelerate; caption dropout
for classifier-free guidance; EMA; checkpoints). No flips or crops touch the U-Net's images: they
would reverse or cut time.

Every random draw of micro-batch ``m`` (its rows, noise, timesteps, dropped captions)
comes from ``(train.seed, m)`` alone, so a run resumed from a checkpoint reaches the same
weights as one that never stopped. Under ``accelerate launch`` process ``r`` of ``P`` takes
micro-batches ``m = k * P + r``: P processes with ``gradient_accumulation: G`` train what one
process does with ``G * P``, and either resumes the other's checkpoints.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from diffusers.optimization import get_scheduler
from tqdm import tqdm

from pipeline import params as params_module
from pipeline.audio.shards import iter_batches, read_spec, read_split, shard_files
from pipeline.audio.spectrogram import image_to_log_mel
from pipeline.errors import PipelineError, stage_main
from pipeline.files import sha256_file, write_json
from pipeline.models import advice_when_out_of_memory
from pipeline.models.checkpoints import checkpoints, latest_checkpoint, load_optimizer, restoring, save_checkpoint
from pipeline.models.diffusion import (
    caption_embeddings,
    diffusion_training_loss,
    load_pipeline,
    reconstruct,
    save_pipeline,
    uint8_to_pm1,
    write_spec,
    zero_terminal_snr,
)
from pipeline.params import Params, TrainParams
from pipeline.paths import CHECKPOINT_DIR, FINETUNED_DIR, PRETRAINED_DIR, SHARDS_DIR, TIMINGS_DIR
from pipeline.provenance import code_digest

METRICS = Path("metrics/train.json")
LIVE_DIR = Path("metrics/train")
# Settings that change what is trained; the rest (logging, checkpoint cadence) may differ on resume.
RESUME_IGNORES = ("checkpoint_every", "keep_checkpoints", "log_every")


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on; the message says why and what to change."""


# ------------------------------------------------------------------ data

def micro_batch_rows(index: int, rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of micro-batch ``index``: consecutive slices of one seeded permutation per epoch."""
    start = index * batch_size
    picked: list[int] = []
    while len(picked) < batch_size:
        epoch, offset = divmod(start + len(picked), rows)
        picked.extend(_epoch_order(rows, seed, epoch)[offset:offset + batch_size - len(picked)])
    return np.asarray(picked)


@functools.lru_cache(maxsize=4)
def _epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


def micro_batch_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


@torch.no_grad()
def cache_posteriors(vae, shards: Path, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One VAE posterior (mean, std) per training image, encoded once: at 512 px the encoder
    would otherwise cost more than the U-Net step. Latents are sampled from them per step."""
    means, stds, captions = [], [], []
    total = sum(pq.read_metadata(f).num_rows for f in shard_files("train", shards))
    progress = tqdm(total=total, desc="cache latents", unit="img", file=sys.stderr)
    for batch in iter_batches("train", ["caption", "image"], batch_size=batch_size, root=shards):
        posterior = vae.encode(uint8_to_pm1(batch["image"]).to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions += batch["caption"]
        progress.update(len(batch["caption"]))
    progress.close()
    if not means:
        raise TrainingError(f"no training rows in {shards / 'train'}; check {shards / 'report.json'}")
    return torch.cat(means), torch.cat(stds), captions


# ------------------------------------------------------------------ VAE

def vae_mae_db(vae, images: np.ndarray, log_mels: np.ndarray, spec) -> float:
    """Mean absolute error, in dB on the native mel, of the VAE's reconstruction of images."""
    recovered = image_to_log_mel(torch.from_numpy(reconstruct(vae, images)), spec, n_frames=log_mels.shape[-1])
    return float((recovered - torch.from_numpy(log_mels)).abs().mean())


def vae_crops(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One random ``size``-px square of each image (the whole image when it is no larger)."""
    height, width = images.shape[-2:]
    size = min(size, height, width)
    tops = rng.integers(0, height - size + 1, len(images))
    lefts = rng.integers(0, width - size + 1, len(images))
    return np.stack([image[t:t + size, left:left + size] for image, t, left in zip(images, tops, lefts)])


def finetune_vae(vae, shards: Path, config: TrainParams, device, live) -> None:
    """The report's autoencoder fine-tuning (its Fig. 3.3/3.4), encoder and decoder both: the
    loss (L1 plus a small KL term) is the pre-training's, the images are the training
    spectrograms. Tuning the decoder alone cannot help: what a photo-trained encoder drops
    of a spectrogram no decoder can draw back. Crops: the VAE is convolutional without
    attention, so small squares teach it what whole images need, at a fraction of the cost."""
    train = read_split("train", ["image"], shards)["image"]
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate)
    # a cosine decay to zero: at a constant rate the reconstructions stop improving early
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=config.vae_steps)
    vae.requires_grad_(True).train()
    for step in tqdm(range(config.vae_steps), desc="finetune vae", unit="step", file=sys.stderr):
        rows = micro_batch_rows(step, len(train), min(config.vae_batch_size, len(train)), config.seed + 1)
        crops = vae_crops(train[rows], config.vae_crop_size, np.random.default_rng([config.seed, step]))
        images = uint8_to_pm1(crops).to(device, vae.dtype)
        posterior = vae.encode(images).latent_dist
        drawn = vae.decode(posterior.sample(generator=micro_batch_generator(config.seed + 1, step))).sample
        loss = (drawn - images).abs().mean() + config.vae_kl_weight * posterior.kl().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if live and (step + 1) % config.log_every == 0:  # dvclive rewrites its files at every step logged
            live.log_metric("vae_finetune/loss", loss.item())
            live.next_step()
    vae.requires_grad_(False).eval()


# ------------------------------------------------------------------ EMA and checkpoints

class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    def restore(self, shadow: dict) -> None:
        """The average a checkpoint saved; ValueError unless it has this model's tensors."""
        if not isinstance(shadow, dict) or any(
                not isinstance(shadow.get(k), torch.Tensor) or shadow[k].shape != v.shape
                for k, v in self.shadow.items()):
            raise ValueError("its EMA weights are not this U-Net's")
        self.shadow = {k: shadow[k].float() for k in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name].to(param.dtype))


def fingerprint(params: Params, shards: Path, base: Path, num_processes: int) -> str:
    """What a checkpoint must share with this run to be resumed from: the settings (with the
    micro-batches per optimiser step across all processes in place of the accumulation), the
    bytes of the training shards and of the base model, and the training code (changed
    code must retrain, not resume)."""
    train = {k: v for k, v in params.to_dict()["train"].items() if k not in RESUME_IGNORES}
    train["gradient_accumulation"] *= num_processes
    parts = [json.dumps(train, sort_keys=True), code_digest("pipeline.stages.train")]
    parts += [f"{f.name}:{sha256_file(f)}" for f in shard_files("train", shards)]
    parts += [f"{f.relative_to(base).as_posix()}:{sha256_file(f)}"
              for f in sorted(base.rglob("*")) if f.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# ------------------------------------------------------------------ the loop

def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


@dataclass
class TrainingSet:
    """The training split as the loop reads it: a VAE posterior per image (latents are
    sampled from it at each step) and the text-encoder states of its caption."""

    means: torch.Tensor
    stds: torch.Tensor
    caption_states: torch.Tensor
    unconditional: torch.Tensor  # the empty caption's states, for dropped captions
    scaling: float

    def micro_batch(self, index: int, config: TrainParams, device):
        """(scaled latents, caption states, its generator) of micro-batch ``index``; every draw
        comes from ``(train.seed, index)``, so a resumed run draws what an unbroken one would."""
        generator = micro_batch_generator(config.seed, index)
        rows = torch.from_numpy(micro_batch_rows(index, len(self.means), config.batch_size, config.seed))
        noise = torch.randn(self.means[rows].shape, generator=generator)
        latents = ((self.means[rows] + self.stds[rows] * noise) * self.scaling).to(device)
        return latents, self.caption_states[rows], generator


@dataclass
class Progress:
    """Where the run stands: the step reached, the last loss and the log so far."""

    step: int = 0
    loss: float = float("nan")
    history: list[dict] = field(default_factory=list)


def load_base(base: Path, config: TrainParams, device):
    pipe = load_pipeline(base)
    if config.zero_terminal_snr:
        pipe.scheduler = zero_terminal_snr(pipe.scheduler)
    pipe.vae.to(device)
    if config.init == "scratch":
        torch.manual_seed(config.seed)
        pipe.unet = type(pipe.unet).from_config(pipe.unet.config)
    return pipe


def adapt_vae(vae, shards: Path, spec, config: TrainParams, resumed, live, accelerator) -> dict:
    """Fine-tune the VAE if asked (or take it from the checkpoint resumed from), and report
    its reconstruction error on the validation spectrograms before and after."""
    validation = read_split("val", ["image", "log_mel"], shards)
    before = vae_mae_db(vae, validation["image"], validation["log_mel"], spec)
    if config.finetune_vae:
        if resumed is not None:
            with restoring(resumed[0]):
                vae.load_state_dict(resumed[2]["vae"])
        else:
            finetune_vae(vae, shards, config, accelerator.device, live)
        if accelerator.num_processes > 1:  # every process encodes its latents with the main one's VAE
            for tensor in vae.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    vae.requires_grad_(False).eval()
    # an untouched VAE reconstructs as it did: no second pass over the validation split
    after = vae_mae_db(vae, validation["image"], validation["log_mel"], spec) if config.finetune_vae else before
    return {"vae_val_mae_db_before": before, "vae_val_mae_db_after": after}


def encode_training_set(pipe, shards: Path, device, vae_tuned: bool) -> TrainingSet:
    means, stds, captions = cache_posteriors(pipe.vae, shards, 32, device)
    if vae_tuned:
        # a tuned VAE's latents have a spread of their own: scale them to unit variance
        # again, as the pre-training did (SD's 0.18215 plays this part for its VAE)
        pipe.vae.register_to_config(scaling_factor=float(1.0 / means.std()))
    states_by_caption = caption_embeddings(pipe, captions)
    return TrainingSet(means, stds, torch.stack([states_by_caption[c] for c in captions]),
                       states_by_caption[""], pipe.vae.config.scaling_factor)


def start_optimisation(unet, config: TrainParams, resumed):
    """AdamW, its learning-rate schedule and the EMA, fresh or as the checkpoint left them."""
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    ema = EMA(unet, config.ema_decay) if config.ema else None
    progress = Progress()
    if resumed is not None:
        path, record, state = resumed
        with restoring(path):
            unet.load_state_dict(state["unet"])
            load_optimizer(optimizer, state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.restore(state["ema"])
        progress = Progress(record["step"], record["loss"], record["history"])
        print(f"resuming from {path} (step {progress.step})", file=sys.stderr)
    return optimizer, scheduler, ema, progress


def log_step(live, row: dict) -> None:
    live.step = row["step"]
    for key, value in row.items():
        if key != "step":
            live.log_metric(key, value)


def train(params: Params, shards: Path = SHARDS_DIR, base: Path = PRETRAINED_DIR,
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
    run_fingerprint = fingerprint(params, shards, base, accelerator.num_processes)
    resumed = latest_checkpoint(checkpoint_dir, run_fingerprint, config.steps)
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=False) if main_process else None
    report = adapt_vae(pipe.vae, shards, spec, config, resumed, live, accelerator)
    data = encode_training_set(pipe, shards, device, config.finetune_vae)
    optimizer, scheduler, ema, progress = start_optimisation(pipe.unet, config, resumed)
    # the schedule is not prepared: accelerate would step it once per process per step
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    for row in progress.history if live else ():  # the log before the checkpoint, as the new run's start
        log_step(live, row)
    start_step, started = progress.step, time.perf_counter()
    with advice_when_out_of_memory(
            f"at train.batch_size={config.batch_size}, lower train.batch_size and raise "
            "train.gradient_accumulation to keep the effective batch, or set "
            "train.gradient_checkpointing: true (or train.mixed_precision: bf16 on a GPU)"):
        for step in tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
                         desc="train", unit="step", file=sys.stderr, disable=not accelerator.is_main_process):
            loss = train_step(step, unet, optimizer, scheduler, data, pipe.scheduler, config, accelerator)
            progress.step, progress.loss = step + 1, float(loss.detach())
            if not math.isfinite(progress.loss):
                last = checkpoints(checkpoint_dir)
                raise TrainingError(
                    f"loss became {progress.loss} at step {progress.step}; stopped. The last good checkpoint "
                    f"is {last[-1] if last else 'none (no checkpoint yet)'}. Try a lower "
                    "train.learning_rate or train.mixed_precision: 'no'.")
            if ema is not None:
                ema.update(accelerator.unwrap_model(unet), step)
            if live and (progress.step % config.log_every == 0 or progress.step == config.steps):
                # no timings here: the log is tracked in git, and must not change between
                # runs that train the same weights (throughput goes to metrics/timings/)
                progress.history.append({"step": progress.step, "loss": progress.loss,
                                         "lr": scheduler.get_last_lr()[0]})
                log_step(live, progress.history[-1])
                live.next_step()
            if main_process and (progress.step % config.checkpoint_every == 0 or progress.step == config.steps):
                plain = accelerator.unwrap_model(unet)
                record = {"step": progress.step, "fingerprint": run_fingerprint, "loss": progress.loss,
                          "history": progress.history}
                save_checkpoint(checkpoint_dir, record, {
                    "unet": plain.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "ema": ema.shadow if ema else None,
                    "vae": pipe.vae.state_dict() if config.finetune_vae else None,
                }, _with_ema(plain, ema), config.keep_checkpoints)
    wall = time.perf_counter() - started
    accelerator.wait_for_everyone()
    if main_process:
        pipe.unet = _with_ema(accelerator.unwrap_model(unet), ema).to(torch.float32).eval()
        pipe.vae = pipe.vae.to(torch.float32)
        save_pipeline(pipe, out_dir)
        write_spec(out_dir, spec)
        live.end()
    report.update({
        "steps": config.steps, "resumed_from_step": start_step, "final_loss": progress.loss,
        "training_rows": len(data.means), "ema": config.ema, "init": config.init,
        "mixed_precision": accelerator.mixed_precision, "processes": accelerator.num_processes,
    })
    trained = config.steps - start_step
    per_step = config.batch_size * config.gradient_accumulation * accelerator.num_processes
    report["timings"] = {"wall_seconds": wall, "steps_this_run": trained,
                         "samples_per_second": per_step * trained / wall if trained else None}
    return report


def train_step(step: int, unet, optimizer, scheduler, data: TrainingSet, noise_schedule,
               config: TrainParams, accelerator) -> torch.Tensor:
    """One optimiser step over ``train.gradient_accumulation`` micro-batches per process;
    returns the last micro-batch's loss."""
    for micro in range(config.gradient_accumulation):
        index = (step * config.gradient_accumulation + micro) * accelerator.num_processes \
            + accelerator.process_index
        latents, states, generator = data.micro_batch(index, config, accelerator.device)
        with accelerator.accumulate(unet), accelerator.autocast():
            loss = diffusion_training_loss(unet, noise_schedule, latents, states, data.unconditional,
                                           config.caption_dropout, generator, config.noise_offset)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
    if not optimizer.step_was_skipped:  # fp16's scaler skips a step whose gradients overflowed
        scheduler.step()
    return loss


def _with_ema(unet, ema: EMA | None):
    """The weights to sample from: a copy carrying the EMA average, or the U-Net itself."""
    if ema is None:
        return unet
    averaged = copy.deepcopy(unet)
    ema.copy_to(averaged)
    return averaged


@stage_main("train")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(params_module.PARAMS_YAML))
    args = parser.parse_args(argv)
    from accelerate import PartialState

    report = train(params_module.load(args.params))
    if PartialState().is_main_process:  # one process writes, under `accelerate launch`
        # which step a run resumed from is how it ran, not what it made: not a tracked metric
        write_json(TIMINGS_DIR / "train.json",
                   {**report.pop("timings"), "resumed_from_step": report.pop("resumed_from_step")})
        write_json(METRICS, report)
        print(json.dumps(report, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
