"""Where the stages read and write, relative to the repository root (DVC runs every stage
there, and ``dvc.yaml`` names the same paths). A stage finds what another stage wrote
here, never by importing that stage."""

from pathlib import Path

RAW_DIR = Path("data/raw")  # acquire: clips/ and the manifest
MANIFEST = RAW_DIR / "manifest.parquet"
SUBSET_DIR = Path("data/subset")  # subset: index.parquet and report.json
SHARDS_DIR = Path("data/shards")  # render: <split>/part-NNNNN.parquet
SPLITS = ("train", "val", "test")
PRETRAINED_DIR = Path("models/pretrained")
FINETUNED_DIR = Path("models/finetuned")
CHECKPOINT_DIR = Path("models/checkpoints")
EVALUATOR_DIR = Path("models/evaluator")
JUDGE_DIR = Path("models/judge")  # fit_judge: the frozen judge and the real clips' features
VOCODER_DIR = Path("models/vocoder")
VOCODER_CHECKPOINT_DIR = Path("models/vocoder_checkpoints")
MODELS = {"pretrained": PRETRAINED_DIR, "finetuned": FINETUNED_DIR}  # what sample and evaluate compare
SAMPLES_DIR = Path("data/samples")
INPAINTED = "inpainted.safetensors"  # in SAMPLES_DIR/inpaint: redrawn test clips and masks, in dB
METRICS_DIR = Path("metrics")
# How long stages took. Apart from the tracked metrics, and git-ignored: timings differ
# on every run, and reproducing must leave the repository as it was.
TIMINGS_DIR = METRICS_DIR / "timings"
