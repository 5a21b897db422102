"""What ``evaluate`` writes for people: Table 3.1 with intervals, and labelled sample grids."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from pipeline.files import atomic_path
from pipeline.models.vocoder import VOCODERS

# The report's Table 3.1 (SD v1.4 fine-tuned on 1.3% of AudioSet): FID, Inception-v3
PAPER_FID = {"pretrained.512x512": 183.63, "pretrained.64x400": 271.93,
             "finetuned.512x512": 140.00, "finetuned.64x400": 72.86}


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


def table(metrics: dict, intervals: dict, sets: list[tuple[str, str]], written: str) -> str:
    """Table 3.1's layout with every score's 95% interval, the report's FID beside ours where it
    has one; under each geometry the real clips (the ceiling and the floor); then the VAE, the
    long and in-painted clips and each vocoder's resynthesis of the test clips."""
    def cell(key: str, digits: int) -> str:
        if key not in metrics or not math.isfinite(metrics[key]):
            return "–"
        low, high = intervals.get(key, {}).get("low", math.nan), intervals.get(key, {}).get("high", math.nan)
        return f"{metrics[key]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    other = next(v for v in VOCODERS if v != written)
    lines = [f"| Model | Resolution (px) | FID | KID | Accuracy (image) | Accuracy (audio, {written}) | "
             f"FAD ({written}) | Accuracy (audio, {other}) | FAD ({other}) | FID in the report |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for resolution in dict.fromkeys(r for _, r in sets):
        for model in (m for m, r in sets if r == resolution):
            key = f"{model}.{resolution}"
            paper = PAPER_FID.get(key)
            lines.append(f"| {model} | {resolution.replace('x', ' x ')} | {cell(f'fid.{key}', 1)} | "
                         f"{cell(f'kid.{key}', 3)} | {cell(f'accuracy.{key}', 3)} | "
                         f"{cell(f'accuracy_audio.{key}', 3)} | {cell(f'fad.{key}', 2)} | "
                         f"{cell(f'vocoder.{other}.accuracy_audio.{key}', 3)} | "
                         f"{cell(f'vocoder.{other}.fad.{key}', 2)} | "
                         f"{paper if paper is not None else '–'} |")
        lines.append(f"| real test clips | {resolution.replace('x', ' x ')} | – | – | "
                     f"{cell(f'accuracy.real.{resolution}', 3)} (ceiling) | "
                     f"{cell('accuracy_audio.real', 3)} (ceiling) | "
                     f"{cell('fad.real', 2)} (floor) | – | – | – |")
    lines.append(f"\nVAE reconstruction of the test clips: accuracy {cell('reconstruction.vae.accuracy', 3)}, "
                 f"mean error {cell('reconstruction.vae.mae_db', 2)} dB.\n")
    lines.append(f"Long clips (out-painted): accuracy per 10 s {cell('longform.accuracy', 3)}, seam flux ratio "
                 f"{cell('longform.seam_ratio', 2)}. In-painted test clips: accuracy in the region "
                 f"{cell('inpaint.accuracy', 3)}, change outside it {cell('inpaint.outside_mae_db', 2)} dB.\n")
    lines += ["| Vocoder, resynthesising the test clips | Mel error (dB) | MR-STFT | Accuracy (audio) |",
              "|---|---|---|---|"]
    for name in VOCODERS:
        lines.append(f"| {name} | {cell(f'vocoder.{name}.mel_l1_db', 2)} | {cell(f'vocoder.{name}.mrstft', 3)} | "
                     f"{cell(f'vocoder.{name}.accuracy', 3)} |")
    return "\n".join(lines) + "\n"
