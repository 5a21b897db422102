"""Peak memory of the stages that read a split as the data grows: 1×, 4× and 16× the default's clips.

The default's synthetic source is made once (on a 2-worker local Dask cluster) and repeated
under new clip ids up to the largest scale: memory follows the number of rows, not what they
sound like, and synthesising 16× the clips would cost most of the run. Each scale takes as
many clips per class, and mixtures, as that multiple of the default uses, and renders its own
shards. Each stage then runs in a fresh process, in
pipeline order (each reads what the one before made), with its work per row cut to a minimum:
a few steps, one epoch, one sample per class, one Griffin-Lim iteration. Memory is held by the
data, not by the step count. Each reports its peak resident set (`ru_maxrss`). `evaluate`
reads the default run's judge (`models/judge`): its real-clip features are fitted once per
dataset, and their count grows with the data by design.

    python benchmarks/bench_memory.py [--scales 1 4 16] [--stages train ...] [--code CHECKOUT ...]
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.ontology import Ontology
from pipeline.params import Params, parse
from pipeline.sources.clip_shards import CLIPS_SUBDIR, ClipStore, write_shard
from pipeline.sources.manifest import read_manifest, read_manifest_rows, write_manifest
from pipeline.sources.subset import build_index, write_subset
from pipeline.stages.acquire import acquire
from pipeline.stages.render import render

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "models" / "pretrained"  # the default's image-pretrained base (`dvc pull` or `make run`)
JUDGE = ROOT / "models" / "judge"

STAGES = ["train", "train_evaluator", "train_vocoder", "sample", "evaluate"]
RUN = """
import json, resource, sys
from pathlib import Path
from pipeline.params import parse
params = parse(json.loads(sys.argv[1]))
root, stage, base, judge = Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
shards, index, raw, out = root / "shards", root / "subset" / "index.parquet", root / "raw", root / "out"
if stage == "train":
    from pipeline.stages.train import train
    train(params, shards, base, out / "finetuned", out / "checkpoints", out / "live")
elif stage == "train_evaluator":
    from pipeline.stages.train_evaluator import train_evaluator
    train_evaluator(params, shards, out / "evaluator")
elif stage == "train_vocoder":
    from pipeline.stages.train_vocoder import train_vocoder
    train_vocoder(params, shards, index, raw, out / "vocoder", out / "vocoder_checkpoints")
elif stage == "sample":
    from pipeline.stages.sample import sample
    sample(params, shards, out / "samples", {"pretrained": base, "finetuned": out / "finetuned"}, out / "checkpoints",
           out / "evaluator", out / "guidance.json", out / "vocoder", out / "longform.png")
elif stage == "evaluate":
    from pipeline.evaluation.scoring import evaluate
    evaluate(params, shards, out / "samples", judge, out / "metrics", out / "finetuned", out / "vocoder", index, raw,
             out / "timings")
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def scaled(scale: int, largest: int) -> Params:
    default = Params()
    raw = default.to_dict()
    raw["source"]["clips_per_class"] = default.source.clips_per_class * largest
    # the default uses every clip of a class (40, under its cap of 60): so does each scale
    raw["subset"] |= {"max_per_class": default.source.clips_per_class * scale,
                      "mixtures": default.subset.mixtures * scale}
    raw["train"] |= {"steps": 4, "vae_steps": 4, "checkpoint_every": 1000}
    raw["evaluator"] |= {"epochs": 1}
    raw["vocoder"] |= {"steps": 4, "checkpoint_every": 1000}
    raw["spectrogram"] |= {"griffin_lim_iters": 1}
    raw["sample"] |= {"resolutions": ["128x128"], "per_class": 1, "steps": 2, "wavs_per_class": 1,
                      "guidance_scale": [4.0, 7.0], "checkpoint_per_class": 0, "longform_seconds": 20.0}
    raw["evaluate"] |= {"bootstrap": 20, "revocode_per_class": 1}
    return parse(raw)


def repeat_clips(raw_dir: Path, times: int) -> None:
    """Each clip of ``raw_dir`` ``times`` times (copies under ids ``<id>~k``), in shards of their
    own, with their manifest rows."""
    rows = read_manifest_rows(raw_dir / "manifest.parquet")
    store, copies = ClipStore(raw_dir), []
    for k in range(1, times):
        shard = f"{CLIPS_SUBDIR}/copy-{k:03d}.parquet"
        clips = [(row, f"{row['id']}~{k}") for row in rows if row["status"] == "ok"]
        write_shard(raw_dir / shard, ((copy, store.flac(row["path"], row["id"])) for row, copy in clips))
        copies += [row | {"id": copy, "path": shard} for row, copy in clips]
    write_manifest(rows + copies, raw_dir / "manifest.parquet")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--stages", nargs="+", default=STAGES, choices=STAGES,
                        help="each needs the outputs of those before it in the list, run in the same call")
    parser.add_argument("--code", type=Path, nargs="+", default=[ROOT],
                        help="checkouts whose stages run, each on the same data (another commit's, to compare)")
    args = parser.parse_args()
    if not (BASE / "model_index.json").exists() or not (JUDGE / "judge.json").exists():
        raise SystemExit(f"{BASE} or {JUDGE} is missing: `dvc pull pretrain fit_judge` or `make run` first")
    ontology = Ontology.load()
    largest = max(args.scales)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = scaled(1, 1)
        acquire(parse(source.to_dict() | {"engine": {"kind": "dask", "workers": 2}}), tmp / "raw", ontology)
        repeat_clips(tmp / "raw", largest)
        for scale in args.scales:
            params = scaled(scale, largest)
            root = tmp / f"x{scale}"
            root.mkdir()
            (root / "raw").symlink_to(tmp / "raw")
            table, report = build_index(read_manifest(tmp / "raw" / "manifest.parquet"), params.subset, ontology)
            write_subset(table, report, root / "subset")
            rendered = render(params, root / "subset" / "index.parquet", root / "raw", root / "shards")
            for code in args.code:
                shutil.rmtree(root / "out", ignore_errors=True)
                for stage in [s for s in STAGES if s in args.stages]:
                    started = time.monotonic()
                    out = subprocess.run([sys.executable, "-c", RUN, json.dumps(params.to_dict()), str(root), stage,
                                          str(BASE), str(JUDGE)], cwd=code, capture_output=True, text=True)
                    if out.returncode:
                        raise SystemExit(f"{stage} at {scale}x failed:\n{out.stderr[-3000:]}")
                    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]
                    results[(code, scale, stage)] = (rendered["rows"].get("train", 0), peak)
                    seconds = time.monotonic() - started
                    print(f"  {code} x{scale} {stage}: {peak:.0f} MB in {seconds:.0f} s", file=sys.stderr)
    print("| code | stage | scale | training rows | peak RSS (MB) | vs 1× |\n|---|---|---|---|---|---|")
    for code in args.code:
        for stage in args.stages:
            first = results[(code, args.scales[0], stage)][1]
            for scale in args.scales:
                rows, peak = results[(code, scale, stage)]
                print(f"| {code.name} | {stage} | {scale}× | {rows} | {peak:.0f} | {peak / first:.2f} |")


if __name__ == "__main__":
    main()
