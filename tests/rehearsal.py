"""The paper rehearsal: `dvc repro` of configs/paper-rehearsal.yaml in this repository, with
stand-ins for the two things the paper run fetches from the internet, then checks that every
paper-sized path was taken.

    specldm profile paper-rehearsal && python tests/rehearsal.py   # (`make rehearse` does both
                                                                    #  in a scratch clone)

* YouTube: the AudioSet segments the profile selects, each served by a localhost media server
  as an ffmpeg-made file (silence up to the segment, then a tone of its first class), at the
  port of ``source.url_template``; acquire downloads them with the real yt-dlp and ffmpeg.
* The Hugging Face hub: an SD-v1.4-shaped pipeline (narrow, random weights) is written into a
  scratch hub cache under ``model.base``, so pretrain resolves the paper's model id exactly as
  it would from a real cache (HF_HUB_OFFLINE is set: nothing leaves the machine).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import soundfile as sf
from PIL import Image

# this repository's pipeline/ (not an editable install's) and the tests' media server
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from pipeline.models.diffusion import save_pipeline  # noqa: E402
from pipeline.models.sd_shape import sd_v1_4_shaped  # noqa: E402
from pipeline.ontology import Ontology  # noqa: E402
from pipeline.params import load  # noqa: E402
from pipeline.sources.audioset import plan  # noqa: E402
from pipeline.stages.acquire import clip_rules  # noqa: E402

from media_server import MediaServer, make_media  # noqa: E402

WORK = Path(".rehearsal")  # git-ignored: the served media and the scratch hub cache
BASE_DIVISOR = 10  # U-Net widths 32-64-128-128, VAE 16-24-48-48, text encoder 72 wide


def make_served_media(params, media_dir: Path) -> int:
    """One media file per selected segment: silence up to it, then 1 s more than it of a tone
    whose pitch depends on the segment's first label (so classes differ)."""
    media_dir.mkdir(parents=True, exist_ok=True)
    rows = plan(params.source, clip_rules(params), Ontology.load()).rows
    for row in rows:
        path = media_dir / f"{row['origin']}.webm"
        if path.exists():
            continue
        pitch = 200 + zlib.crc32(row["labels"][0].encode()) % 1800
        silence = [(0, row["start_seconds"])] if row["start_seconds"] else []
        make_media(path, silence + [(pitch, row["end_seconds"] - row["start_seconds"] + 1)])
    return len(rows)


def hub_cache_with_base(model_id: str, cache: Path) -> Path:
    """A hub cache holding ``model_id`` as huggingface_hub lays it out (refs/main names the
    snapshot) with an SD-v1.4-shaped pipeline in it."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    if not (snapshot / "model_index.json").exists():
        save_pipeline(sd_v1_4_shaped(BASE_DIVISOR), snapshot)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
    return cache


def check_outputs(params) -> list[str]:
    """What the rehearsal must have produced at the paper's geometry; the failures."""
    failures = []
    size = params.render.image_size
    shard = sorted(Path("data/shards/train").glob("*.parquet"))[0]
    png = pq.read_table(shard, columns=["image"]).column("image")[0].as_py()["bytes"]
    if (shape := Image.open(io.BytesIO(png)).size) != (size, size):
        failures.append(f"{shard}: images of {shape[0]}x{shape[1]} px, not {size}x{size}")
    if not any(pq.read_table("data/subset/index.parquet", columns=["is_mixture"]).column("is_mixture").to_pylist()):
        failures.append("data/subset/index.parquet: no mixtures")
    if len(list(Path("models/checkpoints").glob("step-*"))) < 1:
        failures.append("models/checkpoints: no checkpoint kept")
    for resolution in params.sample.resolutions:
        pngs = sorted(Path("data/samples/finetuned", resolution).glob("*.png"))
        wavs = sorted(Path("data/samples/finetuned", resolution).glob("*.wav"))
        if not pngs or not wavs:
            failures.append(f"data/samples/finetuned/{resolution}: no images or audio")
        elif (info := sf.info(wavs[0])).samplerate != params.spec.sample_rate:
            failures.append(f"{wavs[0]}: {info.samplerate} Hz")
    longform = pd.read_csv("data/samples/longform/prompts.csv")
    if len(longform) != params.sample.longform_classes:
        failures.append(f"data/samples/longform: {len(longform)} long clips, not {params.sample.longform_classes}")
    metrics = json.loads(Path("metrics/metrics.json").read_text())
    for key in (f"fid.finetuned.{r}" for r in params.sample.resolutions):
        if not isinstance(metrics.get(key), float) or not np.isfinite(metrics[key]):
            failures.append(f"metrics/metrics.json: {key} is {metrics.get(key)!r}")
    return failures


def main() -> int:
    params = load()
    if params.source.kind != "audioset" or params.render.image_size != 512:
        print("params.yaml is not the rehearsal: run `specldm profile paper-rehearsal` first",
              file=sys.stderr)
        return 2
    segments = make_served_media(params, WORK / "media")
    env = dict(os.environ, HF_HUB_CACHE=str(hub_cache_with_base(params.model.base, (WORK / "hub").resolve())),
               HF_HUB_OFFLINE="1")
    port = urlsplit(params.source.url_template).port
    print(f"rehearsal: {segments} segments served at port {port}, base {params.model.base} "
          f"(SD v1.4 shape, widths / {BASE_DIVISOR})", file=sys.stderr)
    with MediaServer(WORK / "media", port=port):
        done = subprocess.run(["dvc", "repro"], env=env)
    if done.returncode:
        return done.returncode
    failures = check_outputs(params)
    for failure in failures:
        print(f"rehearsal: {failure}", file=sys.stderr)
    subprocess.run(["dvc", "metrics", "show"])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
