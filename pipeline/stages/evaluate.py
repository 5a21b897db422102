"""Stage ``evaluate``: the report's Table 3.1 as DVC metrics, plus audio-domain scores.

For each sample set ``data/samples/<model>/<H>x<W>`` against real test-split clips
rendered at the same H x W:

* ``fid`` / ``kid``: clean-fid's folder features and distances. The feature extractor is
  Inception-v3 when its weights are present (``evaluate.inception_weights`` or
  clean-fid's cache), otherwise the evaluator network. Which one is written to
  ``metrics/feature_extractor.json``, never mixed into the numbers.
* ``fd_evaluator``: Frechet distance in the evaluator's embedding space.
* ``accuracy``: the fraction of samples the evaluator assigns to the prompted class.
* ``fd_audio`` / ``accuracy_audio``: the same two scores of what users hear: each WAV of
  the set re-analysed with the SpectrogramSpec and rendered at the set's geometry.

Beside them, the ceilings every set is read against: ``accuracy.real.<H>x<W>`` (the
evaluator on the real test clips at that geometry) and ``reconstruction.vae.*`` (the
fine-tuned model's VAE redrawing the test clips: the most its samples can show).

Also: ``metrics/table.md`` (Table 3.1 layout), ``metrics/per_class.csv``,
``metrics/fid_by_checkpoint.csv`` (the report's Fig. 4.2) and labelled sample grids
in ``metrics/grids/``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import torch
from cleanfid import fid as cleanfid
from cleanfid.fid import get_folder_features
from diffusers import AutoencoderKL
from PIL import Image, ImageDraw

from pipeline import params as params_module
from pipeline.audio.shards import read_single_clips
from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel, log_mel_to_grey, waveform_to_log_mel
from pipeline.audio.waveforms import split_waveforms
from pipeline.errors import ModelError, stage_main
from pipeline.files import atomic_path
from pipeline.models import compute_device
from pipeline.models.diffusion import reconstruct
from pipeline.models.evaluator import Evaluator, accuracy, as_clips, db_to_01, frechet_distance
from pipeline.models.generate import image_to_audio, load_generator
from pipeline.models.inpaint import inpaint_log_mel, region_mask
from pipeline.models.vocoder import VOCODERS, Vocode, resynthesis_scores, vocoder_for
from pipeline.params import Params, SampleParams, format_resolution, parse_resolution
from pipeline.paths import (
    EVALUATOR_DIR,
    FINETUNED_DIR,
    METRICS_DIR,
    MODELS,
    RAW_DIR,
    SAMPLES_DIR,
    SHARDS_DIR,
    SUBSET_DIR,
    VOCODER_DIR,
)

INCEPTION_FILE = "inception-2015-12-05.pt"
CLEANFID_CACHE = Path(tempfile.gettempdir()) / INCEPTION_FILE  # where clean-fid keeps it


# ------------------------------------------------------------------ feature extractors

class InceptionExtractor:
    """clean-fid's Inception-v3: float images (B, 3, H, W) in [0, 255], resized to 299 px."""

    name = "inception-v3 (clean-fid torchscript, 2048-d pool3): comparable with the report's FID"
    resize = None  # clean-fid's own resize

    def __init__(self, weights: Path):
        from cleanfid.inception_torchscript import InceptionV3W

        folder = Path(tempfile.mkdtemp(prefix="inception-"))
        (folder / INCEPTION_FILE).symlink_to(weights.resolve())
        self.model = InceptionV3W(str(folder), download=False).eval()

    def __call__(self, images):
        return self.model(images)


class EvaluatorExtractor:
    """The evaluator's embedding of each image read as a spectrogram, at its own size."""

    name = ("specldm evaluator (128-d penultimate embedding of the audio classifier): "
            "no Inception-v3 weights here, so FID/KID are NOT comparable with the report's")

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator

    @staticmethod
    def resize(image):
        return image

    def __call__(self, images):
        grey = images.mean(dim=1).round().clamp(0, 255).to(torch.uint8)
        log_mels = as_clips(grey, self.evaluator.spec)
        return self.evaluator.model.embedding(db_to_01(log_mels, self.evaluator.spec))


def feature_extractor(params: Params, evaluator: Evaluator):
    requested = Path(params.evaluate.inception_weights) if params.evaluate.inception_weights else None
    if requested is not None and not requested.is_file():
        raise ModelError(f"evaluate.inception_weights={requested}: no such file. Get "
                                f"{INCEPTION_FILE} from clean-fid's URL (cleanfid.downloads_helper."
                                "inception_url) or leave the key empty to use the evaluator network")
    weights = requested or (CLEANFID_CACHE if CLEANFID_CACHE.is_file() else None)
    return InceptionExtractor(weights) if weights else EvaluatorExtractor(evaluator)


def folder_features(folder: Path, extractor, batch_size: int) -> np.ndarray:
    return get_folder_features(str(folder), extractor, num_workers=0, batch_size=batch_size,
                               device=torch.device("cpu"), mode="clean", custom_fn_resize=extractor.resize,
                               description=f"features {folder.name}: ", verbose=False)


KID_SEED = 0


def kernel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """clean-fid's KID, its 100 random subsets drawn from a fixed seed: the same samples
    give the same number (clean-fid draws from numpy's global state, so reruns differed)."""
    state = np.random.get_state()
    np.random.seed(KID_SEED)
    try:
        return float(cleanfid.kernel_distance(a, b))
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------ scoring

class References:
    """Real test clips rendered at one geometry: images, their folder for clean-fid, features."""

    def __init__(self, log_mels: np.ndarray, spec: SpectrogramSpec, height: int, width: int,
                 folder: Path, extractor, batch_size: int):
        folder.mkdir(parents=True, exist_ok=True)
        self.images = log_mel_to_grey(torch.from_numpy(log_mels), spec, height, width).numpy()
        for i, grey in enumerate(self.images):
            Image.fromarray(grey).save(folder / f"ref-{i:05d}.png")
        self.features = folder_features(folder, extractor, batch_size)


def load_images(folder: Path, files: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(folder / f).convert("L")) for f in files])


def read_wav(path: Path, spec: SpectrogramSpec) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != spec.sample_rate:
        raise ModelError(f"{path}: {rate} Hz, but the SpectrogramSpec says {spec.sample_rate} Hz")
    return audio.mean(axis=1)


def heard_as_image(audio: list[np.ndarray], height: int, width: int, spec: SpectrogramSpec) -> np.ndarray:
    """Each waveform re-analysed with the SpectrogramSpec and rendered at ``height x width``:
    the audio users hear, in the form the image scores read, so both pass the same steps."""
    return np.stack([log_mel_to_grey(waveform_to_log_mel(torch.from_numpy(a), spec), spec, height, width).numpy()
                     for a in audio])


def set_audio(folder: Path, voiced: pd.DataFrame, images: np.ndarray, vocoders: dict[str, Vocode], written: str,
              spec: SpectrogramSpec) -> dict[str, list[np.ndarray]]:
    """The voiced samples' audio from each vocoder: the set's own WAVs for the vocoder that
    wrote them (``written``), the other vocoded here from the same images with the same seeds."""
    return {name: [read_wav(folder / w, spec) for w in voiced.wav] if name == written
            else [image_to_audio(grey, spec, vocode, seed) for grey, seed in zip(images, voiced.seed)]
            for name, vocode in vocoders.items()}


def score_set(folder: Path, references: References, extractor, evaluator: Evaluator,
              vocoders: dict[str, Vocode], batch_size: int) -> tuple[dict, pd.DataFrame]:
    prompts = pd.read_csv(folder / "prompts.csv")
    generated_features = folder_features(folder, extractor, batch_size)
    spec = evaluator.spec
    images = load_images(folder, list(prompts.file))
    generated = as_clips(torch.from_numpy(images), spec)
    real_embedding = evaluator.embed(as_clips(torch.from_numpy(references.images), spec))
    hits = evaluator.recognised(generated, list(prompts.class_id))
    per_class = (prompts.assign(correct=hits).dropna(subset=["correct"])
                 .groupby(["class_id", "class_name"]).correct.agg(["size", "mean"]).reset_index()
                 .rename(columns={"size": "samples", "mean": "accuracy"}))
    scores = {
        "fid": frechet_distance(generated_features, references.features),
        "kid": kernel_distance(generated_features, references.features),
        "fd_evaluator": frechet_distance(evaluator.embed(generated), real_embedding),
        "accuracy": accuracy(hits),
    }
    voiced = prompts[prompts.wav.notna()] if "wav" in prompts else prompts.iloc[:0]
    if len(voiced):
        written = voiced.vocoder.iloc[0] if "vocoder" in voiced else "griffin_lim"
        audio = set_audio(folder, voiced, images[voiced.index.to_numpy()], vocoders, written, spec)
        for name, waveforms in audio.items():
            heard = as_clips(torch.from_numpy(heard_as_image(waveforms, *images.shape[1:], spec)), spec)
            scores[f"vocoder.{name}.fd_audio"] = frechet_distance(evaluator.embed(heard), real_embedding)
            scores[f"vocoder.{name}.accuracy_audio"] = accuracy(evaluator.recognised(heard, list(voiced.class_id)))
        # what the sample stage's WAVs score, under the names tracked before there was a choice
        scores["fd_audio"] = scores[f"vocoder.{written}.fd_audio"]
        scores["accuracy_audio"] = scores[f"vocoder.{written}.accuracy_audio"]
    return scores, per_class


def vae_reconstruction(model_dir: Path, real_mels: np.ndarray, class_ids: list[str],
                       evaluator: Evaluator) -> dict:
    """How well the model's VAE redraws the real test clips at the training geometry: the
    error in dB on the native mel, and how often the evaluator still hears their class."""
    spec = evaluator.spec
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", use_safetensors=True).eval()
    vae.to(compute_device())  # SD's VAE at 512 px: seconds an image on a CPU
    drawn = reconstruct(vae, log_mel_to_grey(torch.from_numpy(real_mels), spec).numpy())
    recovered = image_to_log_mel(torch.from_numpy(drawn), spec, n_frames=real_mels.shape[-1])
    return {"reconstruction.vae.mae_db": float((recovered - torch.from_numpy(real_mels)).abs().mean()),
            "reconstruction.vae.accuracy": accuracy(evaluator.recognised(recovered, class_ids))}


def vocoder_scores(vocoders: dict[str, Vocode], log_mels: np.ndarray, waveforms: torch.Tensor,
                   class_ids: list[str], evaluator: Evaluator) -> dict:
    """Each vocoder resynthesising the real test clips from their log-mels: mel error in dB,
    STFT distance to the real audio, speed (10 s clips, batch 1) and what the evaluator hears."""
    metrics = {}
    for name, vocode in vocoders.items():
        scores = resynthesis_scores(vocode, torch.from_numpy(log_mels), waveforms, evaluator.spec)
        metrics.update({f"vocoder.{name}.{key}": scores[key] for key in ("mel_l1_db", "mrstft", "real_time_factor")})
        metrics[f"vocoder.{name}.accuracy"] = accuracy(evaluator.recognised(scores["log_mel"], class_ids))
    return metrics


def longform_scores(folder: Path, evaluator: Evaluator) -> dict:
    """Long out-painted clips: the evaluator on each whole window-length stretch of them, and
    the spectral flux (mean absolute change between adjacent mel frames, in dB) at the frames
    where a window's new part begins, over the flux between all other adjacent frames."""
    spec, rows = evaluator.spec, pd.read_csv(folder / "prompts.csv")
    hits, at_seams, elsewhere = [], [], []
    for row in rows.itertuples():
        log_mel = image_to_log_mel(torch.from_numpy(load_images(folder, [row.file])[0]), spec)
        count = log_mel.shape[-1] // spec.n_frames
        stretches = log_mel[:, :count * spec.n_frames].reshape(spec.n_mels, count, spec.n_frames).transpose(0, 1)
        hits.append(evaluator.recognised(stretches, [row.class_id] * count))
        flux = (log_mel[:, 1:] - log_mel[:, :-1]).abs().mean(dim=0)
        seams = torch.tensor([int(frame) - 1 for frame in str(row.seam_frames).split()], dtype=torch.long)
        inside = torch.ones(len(flux), dtype=torch.bool)
        inside[seams] = False
        at_seams.append(flux[seams])
        elsewhere.append(flux[inside])
    return {"longform.accuracy": accuracy(np.concatenate(hits)),
            "longform.seam_ratio": float(torch.cat(at_seams).mean() / torch.cat(elsewhere).mean())}


INPAINT_REGION = (3.0, 7.0)  # seconds of each test clip drawn again
INPAINT_EVERY = 3  # every third single-clip test row
INPAINT_SEED = 2_000_000_011  # added to sample.seed: seeds no sample set uses


def inpaint_scores(model_dir: Path, samples: Path, shards: Path, config: SampleParams,
                   evaluator: Evaluator) -> dict:
    """Every ``INPAINT_EVERY``-th single test clip with ``INPAINT_REGION`` drawn again by the
    fine-tuned model for the class half the class list away (its caption and guidance scale
    as the training-geometry samples had them): how often the evaluator hears that class in
    the region, and the mean change in dB outside it."""
    spec = evaluator.spec
    drawn_set = pd.read_csv(samples / "finetuned" / format_resolution(spec.image_size, spec.image_size) / "prompts.csv")
    captions = dict(zip(drawn_set.class_id, drawn_set.prompt))
    classes = sorted(captions)
    pipe = load_generator(model_dir, config.scheduler)
    test = read_single_clips("test", ["log_mel", "target"], shards)
    hits, outside = [], []
    for i in range(0, len(test["target"]), INPAINT_EVERY):
        if test["target"][i] not in captions:
            continue
        other = classes[(classes.index(test["target"][i]) + len(classes) // 2) % len(classes)]
        log_mel = torch.from_numpy(test["log_mel"][i])
        mask = region_mask(log_mel.shape[-1], *INPAINT_REGION, None, None, spec)
        drawn = inpaint_log_mel(pipe, log_mel, mask, captions[other], spec, config.steps,
                                float(drawn_set.guidance.iloc[0]), config.seed + INPAINT_SEED + i)
        hits.append(evaluator.recognised(drawn[:, mask.any(axis=0)][None], [other]))
        outside.append(float((drawn - log_mel).abs()[~torch.from_numpy(mask)].mean()))
    return {"inpaint.accuracy": accuracy(np.concatenate(hits)), "inpaint.outside_mae_db": float(np.mean(outside))}


def grid(folder: Path, title: str, out: Path, columns: int = 6, cell_height: int = 96) -> None:
    """One sample per class, each labelled with its class, in a contact sheet."""
    prompts = pd.read_csv(folder / "prompts.csv").drop_duplicates("class_id")
    first = Image.open(folder / prompts.file.iloc[0])
    cell_width = max(48, round(first.width * cell_height / first.height))
    label = 14
    rows = math.ceil(len(prompts) / columns)
    sheet = Image.new("L", (columns * cell_width, 20 + rows * (cell_height + label)), 255)
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), title, fill=0)
    for i, row in enumerate(prompts.itertuples()):
        x, y = (i % columns) * cell_width, 20 + (i // columns) * (cell_height + label)
        image = Image.open(folder / row.file).convert("L").resize((cell_width - 4, cell_height))
        sheet.paste(image, (x + 2, y))
        draw.text((x + 2, y + cell_height), row.class_name[:cell_width // 6], fill=0)
    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG")


def table(metrics: dict, sets: list[tuple[str, str]]) -> str:
    """Table 3.1's layout, the image scores beside the audio's from each vocoder, and under each
    geometry the real clips' accuracy (the ceiling); then the VAE's reconstruction of them and
    each vocoder's resynthesis of them."""
    def cell(key: str, digits: int) -> str:
        return f"{metrics[key]:.{digits}f}" if key in metrics else "–"

    lines = ["| Model | Resolution (px) | FID | KID | FD (evaluator) | Accuracy | "
             "Accuracy (audio, GL) | Accuracy (audio, neural) | FD (audio, GL) | FD (audio, neural) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for resolution in dict.fromkeys(r for _, r in sets):
        for model in (m for m, r in sets if r == resolution):
            key = f"{model}.{resolution}"
            lines.append(f"| {model} | {resolution.replace('x', ' x ')} | {cell(f'fid.{key}', 2)} | "
                         f"{cell(f'kid.{key}', 4)} | {cell(f'fd_evaluator.{key}', 2)} | {cell(f'accuracy.{key}', 3)} | "
                         + " | ".join(cell(f"vocoder.{name}.accuracy_audio.{key}", 3) for name in VOCODERS) + " | "
                         + " | ".join(cell(f"vocoder.{name}.fd_audio.{key}", 2) for name in VOCODERS) + " |")
        lines.append(f"| real test clips (ceiling) | {resolution.replace('x', ' x ')} | – | – | – | "
                     f"{cell(f'accuracy.real.{resolution}', 3)} | – | – | – | – |")
    lines.append(f"\nVAE reconstruction of the test clips: accuracy {cell('reconstruction.vae.accuracy', 3)}, "
                 f"mean error {cell('reconstruction.vae.mae_db', 2)} dB.\n")
    lines.append(f"Long clips (out-painted): accuracy per 10 s {cell('longform.accuracy', 3)}, seam flux ratio "
                 f"{cell('longform.seam_ratio', 2)}. In-painted test clips: accuracy in the region "
                 f"{cell('inpaint.accuracy', 3)}, change outside it {cell('inpaint.outside_mae_db', 2)} dB.\n")
    lines += ["| Vocoder, resynthesising the test clips | Mel error (dB) | MR-STFT | Accuracy | Real-time factor |",
              "|---|---|---|---|---|"]
    for name in VOCODERS:
        lines.append(f"| {name} | {cell(f'vocoder.{name}.mel_l1_db', 2)} | {cell(f'vocoder.{name}.mrstft', 3)} | "
                     f"{cell(f'vocoder.{name}.accuracy', 3)} | {cell(f'vocoder.{name}.real_time_factor', 0)} |")
    return "\n".join(lines) + "\n"


def evaluate(params: Params, shards: Path = SHARDS_DIR, samples: Path = SAMPLES_DIR,
             evaluator_dir: Path = EVALUATOR_DIR, out_dir: Path = METRICS_DIR,
             finetuned: Path = FINETUNED_DIR, vocoder_dir: Path = VOCODER_DIR,
             index: Path = SUBSET_DIR / "index.parquet", raw_dir: Path = RAW_DIR) -> dict:
    evaluator = Evaluator.load(evaluator_dir)
    test = split_waveforms("test", shards, index, raw_dir, mix_domain=None)  # single clips: one class each
    spec, real_mels, real_classes = test["spec"], test["log_mel"], test["target"]
    extractor = feature_extractor(params, evaluator)
    vocoders = dict(vocoder_for(name, spec, vocoder_dir) for name in VOCODERS)
    metrics = vae_reconstruction(finetuned, real_mels, real_classes, evaluator)
    metrics.update(vocoder_scores(vocoders, real_mels, test["waveform"], real_classes, evaluator))
    per_class, sets = [], []
    work = Path(tempfile.mkdtemp(prefix="specldm-evaluate-"))
    batch_size = params.evaluate.batch_size

    built: dict[str, References] = {}

    def references_at(resolution: str) -> References:
        if resolution not in built:
            height, width = parse_resolution(resolution)
            built[resolution] = References(real_mels, spec, height, width, work / resolution,
                                           extractor, batch_size)
        return built[resolution]

    try:
        for resolution in params.sample.resolutions:
            references = references_at(resolution)
            metrics[f"accuracy.real.{resolution}"] = accuracy(evaluator.recognised(
                as_clips(torch.from_numpy(references.images), spec), real_classes))
            for model in MODELS:
                folder = samples / model / resolution
                scores, classes = score_set(folder, references, extractor, evaluator, vocoders, batch_size)
                metrics.update({f"{name}.{model}.{resolution}": value for name, value in scores.items()})
                per_class.append(classes.assign(model=model, resolution=resolution))
                sets.append((model, resolution))
                grid(folder, f"{model} {resolution}", out_dir / "grids" / f"{model}_{resolution}.png")
        metrics.update(longform_scores(samples / "longform", evaluator))
        metrics.update(inpaint_scores(finetuned, samples, shards, params.sample, evaluator))
        training = format_resolution(spec.image_size, spec.image_size)
        checkpoint_sets = sorted((samples / "checkpoints").glob(f"step-*/{training}"))
        references = references_at(training) if checkpoint_sets else None
        curve = [{"step": int(folder.parent.name.split("-")[1]),
                  "fid": frechet_distance(folder_features(folder, extractor, batch_size), references.features)}
                 for folder in checkpoint_sets]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with atomic_path(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    with atomic_path(out_dir / "feature_extractor.json") as tmp:
        tmp.write_text(json.dumps({"fid_kid": extractor.name,
                                   "fd_evaluator_accuracy": "specldm evaluator (models/evaluator)",
                                   "references": f"{len(real_mels)} test-split clips per resolution"},
                                  indent=2) + "\n")
    with atomic_path(out_dir / "table.md") as tmp:
        tmp.write_text(table(metrics, sets))
    with atomic_path(out_dir / "per_class.csv") as tmp:
        pd.concat(per_class).to_csv(tmp, index=False,
                                    columns=["model", "resolution", "class_id", "class_name", "samples", "accuracy"])
    with atomic_path(out_dir / "fid_by_checkpoint.csv") as tmp:
        pd.DataFrame(curve, columns=["step", "fid"]).to_csv(tmp, index=False)
    return metrics


@stage_main("evaluate")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(params_module.PARAMS_YAML))
    args = parser.parse_args(argv)
    evaluate(params_module.load(args.params))
    print((METRICS_DIR / "table.md").read_text(), file=sys.stderr)


if __name__ == "__main__":
    main()
