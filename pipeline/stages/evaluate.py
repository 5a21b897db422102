"""Stage ``evaluate``: the report's Table 3.1 as DVC metrics, plus audio-domain scores.

For each sample set ``data/samples/<model>/<H>x<W>`` against real test-split clips
rendered at the same H x W:

* ``fid`` / ``kid``: clean-fid's folder features and distances. The feature extractor is
  Inception-v3 when its weights are present (``evaluate.inception_weights`` or
  clean-fid's cache), otherwise the evaluator network. Which one is written to
  ``metrics/feature_extractor.json``, never mixed into the numbers.
* ``fd_evaluator``: Frechet distance in the evaluator's embedding space.
* ``accuracy``: the fraction of samples the evaluator assigns to the prompted class.

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
import torch
from cleanfid import fid as cleanfid
from cleanfid.fid import frechet_distance, get_folder_features
from PIL import Image, ImageDraw

from pipeline import params as params_module
from pipeline.audio.shards import read_spec, read_split, shard_files
from pipeline.audio.spectrogram import SpectrogramSpec, image_to_log_mel, log_mel_to_grey
from pipeline.errors import ModelError, stage_main
from pipeline.files import atomic_path
from pipeline.models.evaluator import Evaluator, db_to_01
from pipeline.params import Params, format_resolution, parse_resolution
from pipeline.paths import EVALUATOR_DIR, METRICS_DIR, MODELS, SAMPLES_DIR, SHARDS_DIR

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


def as_clips(grey: torch.Tensor, spec: SpectrogramSpec) -> torch.Tensor:
    """Read each image as one clip (``n_frames`` frames), whatever its width: references and
    samples at a geometry then pass through exactly the same steps."""
    return image_to_log_mel(grey, spec, n_frames=spec.n_frames)


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


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    return float(frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False),
                                  b.mean(axis=0), np.cov(b, rowvar=False)))


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


def score_set(folder: Path, references: References, extractor, evaluator: Evaluator,
              batch_size: int) -> tuple[dict, pd.DataFrame]:
    prompts = pd.read_csv(folder / "prompts.csv")
    generated_features = folder_features(folder, extractor, batch_size)
    spec = evaluator.spec
    generated = as_clips(torch.from_numpy(load_images(folder, list(prompts.file))), spec)
    real = as_clips(torch.from_numpy(references.images), spec)
    index = {c: i for i, c in enumerate(evaluator.class_ids)}
    known = prompts.class_id.map(index)
    predicted = evaluator.predict(generated)
    correct = pd.Series(predicted == known.fillna(-1).to_numpy(), index=prompts.index)[known.notna()]
    per_class = (prompts[known.notna()].assign(correct=correct)
                 .groupby(["class_id", "class_name"]).correct.agg(["size", "mean"]).reset_index()
                 .rename(columns={"size": "samples", "mean": "accuracy"}))
    scores = {
        "fid": fid_from_features(generated_features, references.features),
        "kid": kernel_distance(generated_features, references.features),
        "fd_evaluator": fid_from_features(evaluator.embed(generated), evaluator.embed(real)),
        "accuracy": float(correct.mean()) if len(correct) else math.nan,
    }
    return scores, per_class


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
    lines = ["| Model | Resolution (px) | FID | KID | FD (evaluator) | Conditioning accuracy |",
             "|---|---|---|---|---|---|"]
    for model, resolution in sets:
        key = f"{model}.{resolution}"
        lines.append(f"| {model} | {resolution.replace('x', ' x ')} | {metrics[f'fid.{key}']:.2f} | "
                     f"{metrics[f'kid.{key}']:.4f} | {metrics[f'fd_evaluator.{key}']:.2f} | "
                     f"{metrics[f'accuracy.{key}']:.3f} |")
    return "\n".join(lines) + "\n"


def evaluate(params: Params, shards: Path = SHARDS_DIR, samples: Path = SAMPLES_DIR,
             evaluator_dir: Path = EVALUATOR_DIR, out_dir: Path = METRICS_DIR) -> dict:
    evaluator = Evaluator.load(evaluator_dir)
    spec = read_spec(shard_files("test", shards)[0])
    test = read_split("test", ["log_mel", "is_mixture"], shards)
    real_mels = test["log_mel"][~np.asarray(test["is_mixture"], dtype=bool)]
    extractor = feature_extractor(params, evaluator)
    metrics, per_class, sets = {}, [], []
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
            for model in MODELS:
                folder = samples / model / resolution
                scores, classes = score_set(folder, references, extractor, evaluator, batch_size)
                metrics.update({f"{name}.{model}.{resolution}": value for name, value in scores.items()})
                per_class.append(classes.assign(model=model, resolution=resolution))
                sets.append((model, resolution))
                grid(folder, f"{model} {resolution}", out_dir / "grids" / f"{model}_{resolution}.png")
        training = format_resolution(spec.image_size, spec.image_size)
        checkpoint_sets = sorted((samples / "checkpoints").glob(f"step-*/{training}"))
        references = references_at(training) if checkpoint_sets else None
        curve = [{"step": int(folder.parent.name.split("-")[1]),
                  "fid": fid_from_features(folder_features(folder, extractor, batch_size), references.features)}
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
