"""Stage ``train_vocoder``: a neural vocoder for this SpectrogramSpec -> ``models/vocoder/``.

:func:`train_vocoder` reads top to bottom: the training split's waveforms (mixtures
included) and their log-mels, the model (fresh, or as this run's latest checkpoint left
it), the loop over random crops, then a comparison with Griffin-Lim on the validation
clips, saved beside the weights (``sample.vocoder: auto`` takes the better of the two).

The loss is the mel error in dB through the SpectrogramSpec's own analysis (what the
``vocoder.*.mel_l1_db`` score measures) plus the multi-resolution STFT distance, which
holds the finer time and frequency structure the coarse mel cannot see. There is no
adversarial phase: it would cost more than the whole stage on 2 CPU cores.

Each step's crops (rows and offsets) come from ``(vocoder.seed, step)`` alone, so a run
resumed from a checkpoint reaches the same weights as one that never stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from tqdm import tqdm

from pipeline.audio.spectrogram import SpectrogramSpec, waveform_to_log_mel
from pipeline.audio.waveforms import SplitAudio
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.spectrogram import SpectrogramParams
from pipeline.config.subset import SubsetParams
from pipeline.config.vocoder import VocoderParams
from pipeline.errors import stage_main
from pipeline.files import write_json
from pipeline.models import advice_when_out_of_memory, compute_device
from pipeline.models.checkpoints import load_optimizer
from pipeline.models.vocoder import (
    NeuralVocoder,
    VocoderShape,
    better_vocoder,
    griffin_lim,
    neural,
    resynthesis_scores,
    stft_distance,
)
from pipeline.paths import METRICS_DIR, RAW_DIR, SHARDS_DIR, SUBSET_DIR, VOCODER_CHECKPOINT_DIR, VOCODER_DIR
from pipeline.training.resume import ResumableRun, TrainingError, run_fingerprint
from pipeline.training.rows import RowFile

METRICS = METRICS_DIR / "vocoder.json"


def crops(step: int, waveforms: RowFile, log_mels: RowFile, config: VocoderParams,
          spec: SpectrogramSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-mel crops, the audio under them) of step ``step``, drawn from ``(seed, step)``."""
    rng = np.random.default_rng([config.seed, step])
    frames = min(config.crop_frames, log_mels.shape[-1])
    rows = rng.integers(0, len(log_mels), config.batch_size)
    starts = rng.integers(0, log_mels.shape[-1] - frames + 1, config.batch_size)
    hop = spec.hop_length
    mels = torch.stack([mel[:, s:s + frames] for mel, s in zip(log_mels[rows], starts)])
    audio = torch.stack([clip[s * hop:(s + frames) * hop] for clip, s in zip(waveforms[rows], starts)])
    return mels, audio


def analysed(split: SplitAudio) -> tuple[RowFile, RowFile]:
    """(waveforms, their log-mels through the spec's own analysis) of a split, in temporary
    files a batch at a time: the loop reads only the rows a step crops from."""
    waveforms = log_mels = None
    for batch in tqdm(split.batches(), desc="read training audio", unit="batch", file=sys.stderr):
        if waveforms is None:
            waveforms = RowFile(batch["waveform"].shape[1:])
            log_mels = RowFile(waveform_to_log_mel(batch["waveform"][:1], split.spec).shape[1:])
        waveforms.append(batch["waveform"])
        log_mels.append(waveform_to_log_mel(batch["waveform"], split.spec))
    if waveforms is None:
        raise TrainingError(f"no training rows with audio under {split.shards / split.split}")
    return waveforms, log_mels


def vocoder_loss(vocoder: NeuralVocoder, mels: torch.Tensor, audio: torch.Tensor, mel_weight: float):
    generated = vocoder(mels)
    spec = vocoder.spec
    mel_error = (waveform_to_log_mel(generated, spec) - waveform_to_log_mel(audio, spec)).abs().mean()
    return stft_distance(generated, audio) + mel_weight * mel_error


def fingerprint(params: Sections, clip_sha256: list[str], spec: SpectrogramSpec) -> str:
    """What a checkpoint must share with this run to be resumed from: settings, spec, the
    training clips (their recorded digests, in order; the code that mixes them is in the
    code closure) and the code."""
    settings = params.to_dict()["vocoder"] | {"spec": spec.__dict__, "mix_domain": params.subset.mix_domain}
    return run_fingerprint(settings, "pipeline.stages.train_vocoder", clip_sha256)


def compare_on_validation(vocoder: NeuralVocoder, validation: SplitAudio) -> tuple[dict, int]:
    """Both vocoders on the validation clips: mean mel error in dB and STFT distance; the clips' count."""
    spec = vocoder.spec
    runs = {"griffin_lim": lambda mel, seed: griffin_lim(mel, spec, seed),
            "neural": lambda mel, seed: neural(vocoder, mel)}
    scores = {name: resynthesis_scores(vocode, validation.batches(), spec) for name, vocode in runs.items()}
    return ({name: {key: float(run[key].mean()) for key in ("mel_l1_db", "mrstft")} for name, run in scores.items()},
            len(scores["neural"]["mel_l1_db"]))


def train_vocoder(params: Sections, shards: Path = SHARDS_DIR, index: Path = SUBSET_DIR / "index.parquet",
                  raw_dir: Path = RAW_DIR, out_dir: Path = VOCODER_DIR,
                  checkpoint_dir: Path = VOCODER_CHECKPOINT_DIR) -> dict:
    config = params.vocoder
    train = SplitAudio("train", shards, index, raw_dir, params.subset.mix_domain)
    spec = train.spec
    waveforms, log_mels = analysed(train)

    device = compute_device()
    torch.manual_seed(config.seed)
    vocoder = NeuralVocoder(spec, VocoderShape(config.dim, config.intermediate_dim, config.num_layers, config.n_fft))
    vocoder.to(device)
    optimizer = torch.optim.AdamW(vocoder.parameters(), lr=config.learning_rate, betas=(0.8, 0.9))
    schedule = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=config.steps)
    run = ResumableRun(checkpoint_dir, fingerprint(params, train.clip_sha256(), spec), config.steps,
                       config.checkpoint_every, config.keep_checkpoints)

    def load(state: dict) -> None:
        vocoder.load_state_dict(state["vocoder"])
        load_optimizer(optimizer, state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
    run.restore(load)

    vocoder.train()
    history = run.progress.history
    with advice_when_out_of_memory(f"at vocoder.batch_size={config.batch_size} and "
                                   f"vocoder.crop_frames={config.crop_frames}, lower either"):
        for step in tqdm(range(run.start_step, config.steps), initial=run.start_step, total=config.steps,
                         desc="train vocoder", unit="step", file=sys.stderr):
            mels, audio = crops(step, waveforms, log_mels, config, spec)
            loss = vocoder_loss(vocoder, mels.to(device), audio.to(device), config.mel_weight)
            run.record(step + 1, loss.item(), "Try a lower vocoder.learning_rate.")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            if run.due(config.log_every):
                history.append({"step": step + 1, "loss": run.progress.loss})
            if run.due():
                run.save({"vocoder": vocoder.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": schedule.state_dict()})
    vocoder.cpu().eval()  # scored and saved as generate and evaluate use it

    scores, validation_clips = compare_on_validation(
        vocoder, SplitAudio("val", shards, index, raw_dir, params.subset.mix_domain))
    vocoder.save(out_dir, scores)
    return {"steps": config.steps, "resumed_from_step": run.start_step, "training_clips": len(log_mels),
            "final_loss": history[-1]["loss"] if history else None, "history": history,
            "validation_clips": validation_clips, "validation": scores,
            "chosen": better_vocoder(scores)}


@stage_main("train_vocoder")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    report = train_vocoder(load_sections(args.params, vocoder=VocoderParams, subset=SubsetParams,
                                                 spectrogram=SpectrogramParams))
    # the log is in the checkpoints; the step resumed from is how it ran, not what it made
    write_json(METRICS, {k: v for k, v in report.items() if k not in ("history", "resumed_from_step")})
    print(json.dumps(report["validation"], indent=2), file=sys.stderr)


if __name__ == "__main__":
    main()
