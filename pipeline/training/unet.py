"""The diffusion fine-tuning's parts, in the order ``train`` calls them: the precision, the base
model, the VAE adapted to spectrograms, the optimiser state (fresh or resumed) and one step.

Every random draw of micro-batch ``m`` (its rows, noise, timesteps, dropped captions) comes
from ``(train.seed, m)`` alone; under ``accelerate launch`` process ``r`` of ``P`` takes
micro-batches ``m = k * P + r``, so P processes with ``gradient_accumulation: G`` train what
one process does with ``G * P``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.optimization import get_scheduler

from pipeline.audio.shards import iter_batches
from pipeline.config.train import TrainParams
from pipeline.models.checkpoints import load_optimizer
from pipeline.models.diffusion import diffusion_training_loss, load_pipeline, zero_terminal_snr
from pipeline.training.ema import EMA
from pipeline.training.latents import SplitImages, TrainingSet
from pipeline.training.resume import ResumableRun
from pipeline.training.vae import finetune_vae, vae_mae_db


def resolve_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def load_base(base: Path, config: TrainParams, device):
    pipe = load_pipeline(base)
    if config.zero_terminal_snr:
        pipe.scheduler = zero_terminal_snr(pipe.scheduler)
    pipe.vae.to(device)
    if config.init == "scratch":
        torch.manual_seed(config.seed)
        pipe.unet = type(pipe.unet).from_config(pipe.unet.config)
    return pipe


def adapt_vae(vae, shards: Path, spec, config: TrainParams, run: ResumableRun, live, accelerator) -> dict:
    """Fine-tune the VAE if asked (or take it from the checkpoint resumed from), and report
    its reconstruction error on the validation spectrograms before and after."""
    def validation():
        return iter_batches("val", ["image", "log_mel"], batch_size=32, root=shards)
    before = vae_mae_db(vae, validation(), spec)
    if config.finetune_vae:
        if run.resumed is not None:
            run.restore(lambda state: vae.load_state_dict(state["vae"]))
        else:
            def log(loss: float) -> None:  # dvclive rewrites its files at every step logged
                live.log_metric("vae_finetune/loss", loss)
                live.next_step()
            finetune_vae(vae, SplitImages("train", shards), config, accelerator.device,
                         log if live else None)
        if accelerator.num_processes > 1:  # every process encodes its latents with the main one's VAE
            for tensor in vae.state_dict().values():
                torch.distributed.broadcast(tensor, src=0)
    vae.requires_grad_(False).eval()
    # an untouched VAE reconstructs as it did: no second pass over the validation split
    after = vae_mae_db(vae, validation(), spec) if config.finetune_vae else before
    return {"vae_val_mae_db_before": before, "vae_val_mae_db_after": after}


def start_optimisation(unet, config: TrainParams, run: ResumableRun):
    """AdamW, its learning-rate schedule and the EMA, fresh or as the checkpoint left them."""
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate)
    scheduler = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=config.warmup_steps,
                              num_training_steps=config.steps)
    ema = EMA(unet, config.ema_decay) if config.ema else None

    def load(state: dict) -> None:
        unet.load_state_dict(state["unet"])
        load_optimizer(optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.restore(state["ema"])
    run.restore(load)
    return optimizer, scheduler, ema


def log_step(live, row: dict) -> None:
    live.step = row["step"]
    for key, value in row.items():
        if key != "step":
            live.log_metric(key, value)


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
