"""Stage ``train``: fine-tune the base model's U-Net on spectrogram shards -> ``models/finetuned/``.

Reads top to bottom: load the base, optionally fine-tune the VAE decoder, cache one VAE
posterior per training image, then the diffusion loop (accelerate; caption dropout for
classifier-free guidance; EMA; checkpoints). No flips or crops touch the images: they
would reverse or cut time.

Every random draw of micro-batch ``m`` (its rows, noise, timesteps, dropped captions)
comes from ``(train.seed, m)`` alone, so a run resumed from a checkpoint reaches the same
weights as one that never stopped.
"""

from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline import params as params_module
from pipeline.errors import PipelineError, stage_main
from pipeline.files import TIMINGS_DIR, sha256_file, write_json
from pipeline.models import (
    caption_embeddings,
    diffusion_loss,
    drop_captions,
    images_to_unit,
    load_pipeline,
    save_pipeline,
    unit_to_grey,
    write_spec,
    zero_terminal_snr,
)
from pipeline.params import Params, TrainParams
from pipeline.provenance import code_digest
from pipeline.shards import SHARDS_DIR, iter_batches, read_spec, read_split, shard_files
from pipeline.spectrogram import image_to_log_mel
from pipeline.tensorstate import StateError, load_state, save_state

PRETRAINED_DIR = Path("models/pretrained")
FINETUNED_DIR = Path("models/finetuned")
CHECKPOINT_DIR = Path("models/checkpoints")
METRICS = Path("metrics/train.json")
LIVE_DIR = Path("metrics/train")
# Settings that change what is trained; the rest (logging, checkpoint cadence) may differ on resume.
RESUME_IGNORES = ("checkpoint_every", "keep_checkpoints", "log_every")
CHECKPOINT_RECORD = "checkpoint.json"
STATE_SUBDIR = "state"


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
        posterior = vae.encode(images_to_unit(batch["image"]).to(device, vae.dtype)).latent_dist
        means.append(posterior.mean.float().cpu())
        stds.append(posterior.std.float().cpu())
        captions += batch["caption"]
        progress.update(len(batch["caption"]))
    progress.close()
    if not means:
        raise TrainingError(f"no training rows in {shards / 'train'}; check {shards / 'report.json'}")
    return torch.cat(means), torch.cat(stds), captions


# ------------------------------------------------------------------ VAE

@torch.no_grad()
def vae_mae_db(vae, images: np.ndarray, log_mels: np.ndarray, spec, device, batch_size: int = 32) -> float:
    """Mean absolute error, in dB on the native mel, of the VAE's reconstruction of images."""
    errors = []
    for start in range(0, len(images), batch_size):
        unit = images_to_unit(images[start:start + batch_size]).to(device, vae.dtype)
        decoded = vae.decode(vae.encode(unit).latent_dist.mean).sample
        recovered = image_to_log_mel(torch.from_numpy(unit_to_grey(decoded.cpu())), spec,
                                     n_frames=log_mels.shape[-1])
        errors.append((recovered - torch.from_numpy(log_mels[start:start + batch_size])).abs().flatten())
    return float(torch.cat(errors).mean())


def finetune_vae_decoder(vae, shards: Path, config: TrainParams, device, live) -> None:
    """The report's autoencoder experiment: the decoder learns spectrogram detail (L1)."""
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.decoder.parameters(), lr=config.vae_learning_rate)
    train = read_split("train", ["image"], shards)["image"]
    vae.train()
    for step in tqdm(range(config.vae_steps), desc="finetune vae", unit="step", file=sys.stderr):
        rows = micro_batch_rows(step, len(train), min(config.batch_size, len(train)), config.seed + 1)
        images = images_to_unit(train[rows]).to(device, vae.dtype)
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.mean
        loss = (vae.decode(latents).sample - images).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        live.log_metric("vae_finetune/l1", float(loss))
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

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name].to(param.dtype))


def fingerprint(params: Params, shards: Path, base: Path) -> str:
    """What a checkpoint must share with this run to be resumed from: the settings, the
    bytes of the training shards and of the base model, and the training code (changed
    code must retrain, not resume)."""
    train = {k: v for k, v in params.to_dict()["train"].items() if k not in RESUME_IGNORES}
    parts = [json.dumps(train, sort_keys=True), code_digest("pipeline.train")]
    parts += [f"{f.name}:{sha256_file(f)}" for f in shard_files("train", shards)]
    parts += [f"{f.relative_to(base).as_posix()}:{sha256_file(f)}"
              for f in sorted(base.rglob("*")) if f.is_file()]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints, oldest first: ``step-N`` folders holding a checkpoint record
    (written last). Anything else there is never read."""
    found = [p for p in directory.glob("step-*")
             if p.name[5:].isdigit() and (p / CHECKPOINT_RECORD).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(directory: Path, record: dict, state: dict, unet_for_sampling, keep: int) -> Path:
    """``step-NNNNNN/``: the record (step, fingerprint, log), the training state
    (safetensors + JSON, see :mod:`pipeline.tensorstate`) and the (EMA) U-Net in diffusers
    format for per-checkpoint evaluation. Written to a staging folder, then renamed."""
    final = directory / f"step-{record['step']:06d}"
    staging = directory / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_state(state, staging / STATE_SUBDIR)
    unet_for_sampling.save_pretrained(staging / "unet", safe_serialization=True)
    (staging / CHECKPOINT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(directory: Path, expected: str) -> tuple[Path, dict, dict] | None:
    """(folder, record, state) of the newest checkpoint with this run's fingerprint.

    Only the small JSON record is read to decide; the state is loaded without unpickling
    anything, and only for the checkpoint resumed from. Checkpoints of another
    configuration, data or code are deleted (they cannot be resumed, and would pollute the
    per-checkpoint FID curve). A damaged one stops the run with the path to delete; folders
    that are not checkpoints are left alone, as found.
    """
    for partial in directory.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    finished = checkpoints(directory)
    strangers = sorted(set(directory.glob("step-*")) - set(finished))
    if strangers:
        print(f"train: ignoring {', '.join(map(str, strangers))}: not checkpoints of this "
              "pipeline (no checkpoint record)", file=sys.stderr)
    for path in reversed(finished):
        try:
            record = json.loads((path / CHECKPOINT_RECORD).read_text())
        except ValueError as error:
            raise TrainingError(f"{path / CHECKPOINT_RECORD} is damaged ({error}); delete {path} "
                                "to resume from the checkpoint before it") from None
        if not isinstance(record, dict) or record.get("fingerprint") != expected:
            shutil.rmtree(path)
            continue
        try:
            return path, record, load_state(path / STATE_SUBDIR)
        except StateError as error:
            raise TrainingError(f"{error}; delete {path} to resume from the checkpoint before it") from None
    return None


# ------------------------------------------------------------------ the loop

def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def lr_lambda(config: TrainParams):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
        progress = max(0.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
        if config.lr_schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if config.lr_schedule == "linear":
            return warm * max(0.0, 1 - progress)
        return warm
    return factor


def train(params: Params, shards: Path = SHARDS_DIR, base: Path = PRETRAINED_DIR,
          out_dir: Path = FINETUNED_DIR, checkpoint_dir: Path = CHECKPOINT_DIR,
          live_dir: Path = LIVE_DIR) -> dict:
    from accelerate import Accelerator
    from dvclive import Live

    config = params.train
    accelerator = Accelerator(mixed_precision=resolve_precision(config.mixed_precision),
                              gradient_accumulation_steps=config.gradient_accumulation)
    device = accelerator.device
    spec = read_spec(shard_files("train", shards)[0])
    pipe = load_pipeline(base)
    if config.zero_terminal_snr:
        pipe.scheduler = zero_terminal_snr(pipe.scheduler)
    vae, unet = pipe.vae.to(device), pipe.unet
    if config.init == "scratch":
        torch.manual_seed(config.seed)
        unet = type(unet).from_config(unet.config)
    run_fingerprint = fingerprint(params, shards, base)
    resumed = latest_checkpoint(checkpoint_dir, run_fingerprint)
    live = Live(str(live_dir), save_dvc_exp=False, dvcyaml=False)
    validation = read_split("val", ["image", "log_mel"], shards)
    report = {"vae_val_mae_db_before": vae_mae_db(vae, validation["image"], validation["log_mel"], spec, device)}

    if config.finetune_vae:
        if resumed is not None:
            vae.load_state_dict(resumed[2]["vae"])
        else:
            finetune_vae_decoder(vae, shards, config, device, live)
    vae.requires_grad_(False).eval()
    report["vae_val_mae_db_after"] = vae_mae_db(vae, validation["image"], validation["log_mel"], spec, device)

    means, stds, captions = cache_posteriors(vae, shards, 32, device)
    states_by_caption = caption_embeddings(pipe, captions)
    caption_states = torch.stack([states_by_caption[c] for c in captions])
    unconditional = states_by_caption[""]
    scaling = vae.config.scaling_factor

    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    ema = EMA(unet, config.ema_decay) if config.ema else None
    start_step, history, loss_value = 0, [], float("nan")
    if resumed is not None:
        path, record, state = resumed
        unet.load_state_dict(state["unet"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.shadow = state["ema"]
        start_step, history, loss_value = record["step"], record["history"], record["loss"]
        print(f"resuming from {path} (step {start_step})", file=sys.stderr)
    unet, optimizer, scheduler = accelerator.prepare(unet, optimizer, scheduler)
    for row in history:  # the log of the steps before the checkpoint, as the new run's start
        live.step = row["step"]
        for key, value in row.items():
            if key != "step":
                live.log_metric(key, value)
    noise_schedule = pipe.scheduler
    per_step = config.batch_size * config.gradient_accumulation * accelerator.num_processes
    started = time.perf_counter()
    progress = tqdm(range(start_step, config.steps), initial=start_step, total=config.steps,
                    desc="train", unit="step", file=sys.stderr, disable=not accelerator.is_main_process)
    try:
        for step in progress:
            for micro in range(config.gradient_accumulation):
                index = (step * config.gradient_accumulation + micro) * accelerator.num_processes \
                    + accelerator.process_index
                generator = micro_batch_generator(config.seed, index)
                rows = torch.from_numpy(micro_batch_rows(index, len(means), config.batch_size, config.seed))
                noise = torch.randn(means[rows].shape, generator=generator)
                latents = ((means[rows] + stds[rows] * noise) * scaling).to(device)
                conditioning, _ = drop_captions(caption_states[rows], unconditional,
                                                config.caption_dropout, generator)
                with accelerator.accumulate(unet), accelerator.autocast():
                    loss = diffusion_loss(unet, noise_schedule, latents, conditioning.to(device), generator,
                                          config.noise_offset)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                last = checkpoints(checkpoint_dir)
                raise TrainingError(
                    f"loss became {loss_value} at step {step + 1}; stopped. The last good checkpoint is "
                    f"{last[-1] if last else 'none (no checkpoint yet)'}. Try a lower train.learning_rate "
                    "or train.mixed_precision: 'no'.")
            if ema is not None:
                ema.update(accelerator.unwrap_model(unet), step)
            done = step + 1
            if done % config.log_every == 0 or done == config.steps:
                # no timings here: the log is tracked in git, and must not change between
                # runs that train the same weights (throughput goes to metrics/timings/)
                row = {"step": done, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}
                history.append(row)
                live.step = done
                for key, value in row.items():
                    if key != "step":
                        live.log_metric(key, value)
                live.next_step()
                progress.set_postfix(loss=f"{loss_value:.4f}")
            if accelerator.is_main_process and (done % config.checkpoint_every == 0 or done == config.steps):
                plain = accelerator.unwrap_model(unet)
                sampling = _with_ema(plain, ema)
                record = {"step": done, "fingerprint": run_fingerprint, "loss": loss_value,
                          "history": history}
                save_checkpoint(checkpoint_dir, record, {
                    "unet": plain.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "ema": ema.shadow if ema else None,
                    "vae": vae.state_dict() if config.finetune_vae else None,
                }, sampling, config.keep_checkpoints)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise TrainingError(
            f"out of memory at train.batch_size={config.batch_size}: lower train.batch_size and raise "
            "train.gradient_accumulation to keep the effective batch, or set "
            "train.gradient_checkpointing: true (or train.mixed_precision: bf16 on a GPU)") from None
    progress.close()
    wall = time.perf_counter() - started
    final_unet = _with_ema(accelerator.unwrap_model(unet), ema)
    pipe.unet = final_unet.to(torch.float32).eval()
    pipe.vae = vae.to(torch.float32)
    save_pipeline(pipe, out_dir)
    write_spec(out_dir, spec)
    live.end()
    report.update({
        "steps": config.steps, "resumed_from_step": start_step, "final_loss": loss_value,
        "training_rows": len(means), "ema": config.ema, "init": config.init,
        "mixed_precision": accelerator.mixed_precision,
    })
    trained = config.steps - start_step
    report["timings"] = {"wall_seconds": wall, "steps_this_run": trained,
                         "samples_per_second": per_step * trained / wall if trained else None}
    return report


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's OutOfMemoryError, or the CPU allocator's plain RuntimeError saying the same."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return "DefaultCPUAllocator" in message or "can't allocate memory" in message


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
    report = train(params_module.load(args.params))
    write_json(TIMINGS_DIR / "train.json", report.pop("timings"))
    write_json(METRICS, report)
    print(json.dumps(report, indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
