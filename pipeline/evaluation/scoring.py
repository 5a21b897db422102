"""Every score ``evaluate`` tracks, read through the frozen judge, each with its interval."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from diffusers import AutoencoderKL
from PIL import Image
from safetensors import safe_open
from tqdm import tqdm

from pipeline.audio.shards import BATCH_ROWS, iter_rows, single_clip_batches
from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel, log_mel_to_grey
from pipeline.audio.waveforms import SplitAudio
from pipeline.config.core import Sections
from pipeline.config.spectrogram import format_resolution, parse_resolution
from pipeline.errors import ModelError
from pipeline.evaluation.extractors import Inception, SoundEmbedding, clip_features
from pipeline.evaluation.references import Judge
from pipeline.evaluation.scores import Score, frechet, kernel_distance, mean_score, ratio_score
from pipeline.evaluation.table import grid, table
from pipeline.files import atomic_path, write_json
from pipeline.models import compute_device
from pipeline.models.diffusion import reconstruct
from pipeline.models.generate import image_to_audio, save_wav
from pipeline.models.vocoder import VOCODERS, Vocode, resynthesis_scores, vocoder_for
from pipeline.paths import (
    FINETUNED_DIR,
    INPAINTED,
    JUDGE_DIR,
    METRICS_DIR,
    MODELS,
    RAW_DIR,
    SAMPLES_DIR,
    SHARDS_DIR,
    SUBSET_DIR,
    TIMINGS_DIR,
    VOCODER_DIR,
)


class Scorer:
    """Holds the extractors, the judge and the bootstrap settings; each method adds scores."""

    def __init__(self, judge: Judge, inception: Inception, sound: SoundEmbedding, spec: SpectrogramSpec,
                 resamples: int, seed: int):
        self.judge, self.inception, self.sound, self.spec = judge, inception, sound, spec
        self.resamples, self.seed = resamples, seed
        self.scores: dict[str, Score] = {}
        self.train_audio = judge.features["train.audio"].mean(axis=1)  # FAD's reference: clip means

    def add(self, key: str, score: Score) -> None:
        self.scores[key] = score

    def mean(self, key: str, values) -> None:
        self.add(key, mean_score(np.asarray(values, dtype=np.float64), self.resamples, self.seed))

    def distances(self, prefix: str, key: str, generated: np.ndarray, real: np.ndarray) -> None:
        """``<prefix[0]>.<key>`` Frechet and ``<prefix[1]>.<key>`` kernel distance."""
        fd, kd = prefix
        self.add(f"{fd}.{key}", frechet(generated, real, self.resamples, self.seed))
        self.add(f"{kd}.{key}", kernel_distance(generated, real, self.resamples, self.seed))

    def audio(self, prefix: str, key: str, waveforms, class_ids) -> None:
        """``<prefix>fad``, ``kad`` and ``accuracy_audio`` ``.<key>`` of some audio: distances to
        the training clips' audio, and how often the audio judge hears the prompted class."""
        blocks = self.sound(np.stack(waveforms))
        self.distances((f"{prefix}fad", f"{prefix}kad"), key, blocks.mean(axis=1), self.train_audio)
        self.mean(f"{prefix}accuracy_audio.{key}", self.judge.hits("audio", clip_features(blocks), class_ids))

    def image_hits(self, log_mels: np.ndarray | torch.Tensor, class_ids) -> np.ndarray:
        """The image judge at the training geometry on log-mels of any length (rendered there)."""
        side = self.spec.image_size
        grey = log_mel_to_grey(torch.as_tensor(np.asarray(log_mels)), self.spec, side, side).numpy()
        return self.judge.hits(self.judge.head_for(side, side), self.inception(grey), class_ids)

    def values(self) -> dict:
        return {key: score.value for key, score in sorted(self.scores.items())}

    def intervals(self) -> dict:
        return {key: score.interval() for key, score in sorted(self.scores.items())}


def load_images(folder: Path, files) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f).convert("L")) for f in files])


def read_wav(path: Path, spec: SpectrogramSpec) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != spec.sample_rate:
        raise ModelError(f"{path}: {rate} Hz, but the SpectrogramSpec says {spec.sample_rate} Hz")
    return audio.mean(axis=1)


REPORT_MEDIA = "report"  # under evaluate's out_dir: what the listening page plays that data/samples does not hold


def revoiced_name(image_file: str, vocoder: str) -> str:
    return f"{Path(image_file).stem}-{vocoder}.wav"


def score_set(scorer: Scorer, folder: Path, key: str, reference: np.ndarray, head: str,
              vocoders: dict[str, Vocode], revocode_per_class: int,
              revoiced_dir: Path) -> tuple[pd.DataFrame, str | None]:
    """A sample set's image and audio scores under ``key`` (``<model>.<H>x<W>``). The samples
    another vocoder re-voices are kept in ``revoiced_dir`` (``<image stem>-<vocoder>.wav``) for
    the listening page."""
    prompts = pd.read_csv(folder / "prompts.csv")
    images = load_images(folder, prompts.file)
    features = scorer.inception(images)
    scorer.distances(("fid", "kid"), key, features, reference)
    hits = scorer.judge.hits(head, features, prompts.class_id)
    scorer.mean(f"accuracy.{key}", hits)
    per_class = (prompts.assign(correct=hits).dropna(subset=["correct"])
                 .groupby(["class_id", "class_name"]).correct.agg(["size", "mean"]).reset_index()
                 .rename(columns={"size": "samples", "mean": "accuracy"}))
    voiced = prompts[prompts.wav.notna()] if "wav" in prompts else prompts.iloc[:0]
    if not len(voiced):
        return per_class, None
    written = voiced.vocoder.iloc[0]
    scorer.audio("", key, [read_wav(folder / w, scorer.spec) for w in voiced.wav], voiced.class_id)
    for suffix in ("fad", "kad", "accuracy_audio"):  # the WAVs are one vocoder's: its scores too
        scorer.add(f"vocoder.{written}.{suffix}.{key}", scorer.scores[f"{suffix}.{key}"])
    revoiced = voiced.groupby("class_id", sort=False).head(revocode_per_class)
    for name, vocode in vocoders.items():
        if name != written and len(revoiced):
            audio = [image_to_audio(grey, scorer.spec, vocode, seed)
                     for grey, seed in zip(images[revoiced.index.to_numpy()], revoiced.seed)]
            scorer.audio(f"vocoder.{name}.", key, audio, revoiced.class_id)
            for clip, file in zip(audio, revoiced.file):
                save_wav(revoiced_dir / revoiced_name(file, name), clip, scorer.spec.sample_rate)
    return per_class, written


def vae_reconstruction(scorer: Scorer, model_dir: Path, shards: Path) -> None:
    """The fine-tuned VAE redrawing the real test clips at the training geometry, a batch at a
    time: the error in dB on the native mel, and how often the image judge still hears their class."""
    spec = scorer.spec
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", use_safetensors=True).eval()
    vae.to(compute_device())  # SD's VAE at 512 px: seconds an image on a CPU
    errors, hits = [], []
    for batch in single_clip_batches("test", ["log_mel", "target"], shards):
        real = torch.from_numpy(batch["log_mel"])
        drawn = reconstruct(vae, log_mel_to_grey(real, spec).numpy())
        recovered = image_to_log_mel(torch.from_numpy(drawn), spec, n_frames=real.shape[-1])
        errors.append((recovered - real).abs().mean(dim=(1, 2)).numpy())
        hits.append(scorer.image_hits(recovered, batch["target"]))
    scorer.mean("reconstruction.vae.mae_db", np.concatenate(errors))
    scorer.mean("reconstruction.vae.accuracy", np.concatenate(hits))


def vocoder_scores(scorer: Scorer, vocoders: dict[str, Vocode], test: SplitAudio) -> dict:
    """Each vocoder resynthesising the real test clips: mel error in dB, STFT distance to the
    real audio, what the audio judge hears; returns the real-time factors (timings)."""
    def listen(audio: torch.Tensor, batch: dict) -> np.ndarray:
        return scorer.judge.hits("audio", clip_features(scorer.sound(audio)), batch["target"])

    timings = {}
    for name, vocode in vocoders.items():
        run = resynthesis_scores(vocode, test.batches(), scorer.spec, listen)
        scorer.mean(f"vocoder.{name}.mel_l1_db", run["mel_l1_db"])
        scorer.mean(f"vocoder.{name}.mrstft", run["mrstft"])
        scorer.mean(f"vocoder.{name}.accuracy", run["heard"])
        timings[name] = {"real_time_factor": run["real_time_factor"]}
    return timings


def longform_scores(scorer: Scorer, folder: Path) -> None:
    """Long out-painted clips: the image judge on each whole window-length stretch, and the
    spectral flux (mean absolute change between adjacent mel frames, in dB) at the frames where
    a window's new part begins, over the flux between all other adjacent frames."""
    spec, rows = scorer.spec, pd.read_csv(folder / "prompts.csv")
    stretches, classes, at_seams, elsewhere = [], [], [], []
    for row in rows.itertuples():
        log_mel = image_to_log_mel(torch.from_numpy(load_images(folder, [row.file])[0]), spec)
        count = log_mel.shape[-1] // spec.n_frames
        stretches.append(log_mel[:, :count * spec.n_frames].reshape(spec.n_mels, count, spec.n_frames).transpose(0, 1))
        classes += [row.class_id] * count
        flux = (log_mel[:, 1:] - log_mel[:, :-1]).abs().mean(dim=0)
        seams = torch.tensor([int(frame) - 1 for frame in str(row.seam_frames).split()], dtype=torch.long)
        inside = torch.ones(len(flux), dtype=torch.bool)
        inside[seams] = False
        at_seams.append(flux[seams].double().numpy())
        elsewhere.append(flux[inside].double().numpy())
    scorer.mean("longform.accuracy", scorer.image_hits(torch.cat(stretches), classes))
    scorer.add("longform.seam_ratio", ratio_score(at_seams, elsewhere, scorer.resamples, scorer.seed))


def inpaint_scores(scorer: Scorer, folder: Path, shards: Path) -> None:
    """The test clips ``sample`` redrew in part for another class: how often the image judge
    hears that class in the region (rendered alone at the training geometry), and the mean
    change in dB outside it (0 when, as here, the result is composited on the input)."""
    rows = pd.read_csv(folder / "prompts.csv")
    if not len(rows):
        raise ModelError(f"{folder}: no in-painted test clips; run `dvc repro sample`")
    # every third test clip: read BATCH_ROWS at a time, and the test split streamed past them,
    # so memory does not grow with the split (a row kept from a batch would keep the batch)
    position = {test_id: k for k, test_id in enumerate(rows.test_id)}
    hits, outside = [], np.full(len(rows), np.nan)
    with safe_open(str(folder / INPAINTED), framework="pt") as drawn:
        log_mels, masks = drawn.get_slice("log_mel"), drawn.get_slice("mask")
        for start in range(0, len(rows), BATCH_ROWS):
            log_mel, mask = log_mels[start:start + BATCH_ROWS], masks[start:start + BATCH_ROWS].bool()
            regions = [one[:, region.any(dim=0)] for one, region in zip(log_mel, mask)]  # clips of one length
            hits.append(scorer.image_hits(torch.stack(regions), rows.class_id.iloc[start:start + BATCH_ROWS]))
        for test in iter_rows("test", ["id", "log_mel"], shards, single_clips=True):
            k = position.get(test["id"])
            if k is not None:
                log_mel, mask = log_mels[k], masks[k].bool()
                outside[k] = float((log_mel - torch.from_numpy(test["log_mel"])).abs()[~mask].mean())
    if np.isnan(outside).any():
        missing = sorted(rows.test_id[np.isnan(outside)])
        raise ModelError(f"{folder}: in-painted test clips {missing[:3]} are not in {shards}'s test split; "
                         "run `dvc repro sample`")
    scorer.mean("inpaint.accuracy", np.concatenate(hits))
    scorer.mean("inpaint.outside_mae_db", outside)


def evaluate(params: Sections, shards: Path = SHARDS_DIR, samples: Path = SAMPLES_DIR, judge_dir: Path = JUDGE_DIR,
             out_dir: Path = METRICS_DIR, finetuned: Path = FINETUNED_DIR, vocoder_dir: Path = VOCODER_DIR,
             index: Path = SUBSET_DIR / "index.parquet", raw_dir: Path = RAW_DIR,
             timings_dir: Path = TIMINGS_DIR) -> dict:
    config = params.evaluate
    judge = Judge.load(judge_dir)
    shutil.rmtree(out_dir / REPORT_MEDIA, ignore_errors=True)  # the listening page's media, made anew
    test = SplitAudio("test", shards, index, raw_dir, mix_domain=None)  # single clips: one class each
    spec = test.spec
    inception = Inception.from_params(config.inception_weights, config.inception_sha256, config.batch_size)
    if inception.sha256 != judge.record["extractors"]["image"]["sha256"]:
        raise ModelError("models/judge was made with other Inception weights than evaluate.inception_weights; "
                         "run `dvc repro fit_judge`")
    scorer = Scorer(judge, inception, SoundEmbedding(spec.sample_rate), spec, config.bootstrap, config.seed)
    vocoders = dict(vocoder_for(name, spec, vocoder_dir) for name in VOCODERS)
    steps = tqdm(total=4 + 2 * len(params.sample.resolutions), desc="evaluate", unit="part", file=sys.stderr)
    vae_reconstruction(scorer, finetuned, shards)
    timings = vocoder_scores(scorer, vocoders, test)
    scorer.mean("accuracy_audio.real", judge.real_hits("audio", clip_features(judge.features["test.audio"])))
    scorer.distances(("fad", "kad"), "real", judge.features["test.audio"].mean(axis=1), scorer.train_audio)
    steps.update(2)
    per_class, sets, written = [], [], None
    for resolution in params.sample.resolutions:
        head = judge.head_for(*parse_resolution(resolution))
        reference = judge.features[f"test.image.{resolution}"]
        scorer.mean(f"accuracy.real.{resolution}", judge.real_hits(head, reference))
        for model in MODELS:
            folder = samples / model / resolution
            classes, written = score_set(scorer, folder, f"{model}.{resolution}", reference, head, vocoders,
                                         config.revocode_per_class, out_dir / REPORT_MEDIA / model / resolution)
            per_class.append(classes.assign(model=model, resolution=resolution))
            sets.append((model, resolution))
            grid(folder, f"{model} {resolution}", out_dir / "grids" / f"{model}_{resolution}.png")
            steps.update(1)
    longform_scores(scorer, samples / "longform")
    inpaint_scores(scorer, samples / "inpaint", shards)
    training = format_resolution(spec.image_size, spec.image_size)
    curve, reference = [], judge.features[f"test.image.{training}"]
    for folder in sorted((samples / "checkpoints").glob(f"step-*/{training}")):
        features = inception(load_images(folder, pd.read_csv(folder / "prompts.csv").file))
        curve.append({"step": int(folder.parent.name.split("-")[1]),  # a plot: values, no intervals
                      "fid": frechet(features, reference, 0, config.seed).value,
                      "kid": kernel_distance(features, reference, 0, config.seed).value})
    steps.update(2)
    steps.close()
    metrics = scorer.values()
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "intervals.json", scorer.intervals())
    write_json(out_dir / "feature_extractor.json", {
        **judge.record["extractors"], "judge": judge.record["judge"],
        "judge_fit": judge.record["heads_fit"], "clips": judge.record["clips"],
        "intervals": f"percentile bootstrap, 95%, {config.bootstrap} resamples from seed {config.seed}, "
                     "recentred on the estimate",
        "references": "FID/KID: the real test clips rendered at the set's geometry; FAD/KAD: the training "
                      "clips' audio (clip means of the aisfx blocks)"})
    write_json(timings_dir / "vocoder.json", timings)
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(table(metrics, scorer.intervals(), sets, written or "neural"))
    with atomic_path(out_dir / "per_class.csv") as tmp:
        pd.concat(per_class).to_csv(tmp, index=False,
                                    columns=["model", "resolution", "class_id", "class_name", "samples", "accuracy"])
    with atomic_path(out_dir / "fid_by_checkpoint.csv") as tmp:
        pd.DataFrame(curve, columns=["step", "fid", "kid"]).to_csv(tmp, index=False)
    return metrics
