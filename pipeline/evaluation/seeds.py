"""``specldm seeds [N ...]``: the headline scores and targets over training seeds, as mean and spread.

One run is one draw: another seed, or another CPU, moves accuracies by several points. Seed
``N`` is the DAG with ``train.seed`` and ``sample.seed`` set to ``N``. The workspace's own seed is
read from ``metrics/``; every other runs as a DVC experiment named ``seed-N`` in a temporary copy
(``dvc exp run --temp``), so the workspace is left as it is and stages the seeds do not reach
(data, pre-training, the judges, the vocoder) come from the cache. An experiment already made
from this commit, or from an earlier one that differs in nothing a stage reads, is read, not
rerun: a stopped command picks up where it stopped, and committing the summary keeps it.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pipeline.errors import PipelineError
from pipeline.evaluation.compare import WORKSPACE, read_scores
from pipeline.files import atomic_path, write_json
from pipeline.paths import METRICS_DIR

SEEDS_JSON = METRICS_DIR / "seeds.json"
SEEDS_MD = METRICS_DIR / "seeds.md"


@dataclass(frozen=True)
class Target:
    name: str
    numerator: str
    denominator: str | None  # None: the score itself
    bound: float
    at_most: bool = False

    def value(self, scores: dict) -> float:
        top = scores.get(self.numerator, math.nan)
        if self.denominator is None:
            return top
        bottom = scores.get(self.denominator, math.nan)
        return top / bottom if bottom else math.nan  # a ceiling of 0 (a tiny run) bounds nothing

    def met(self, value: float) -> bool:
        return math.isfinite(value) and (value <= self.bound if self.at_most else value >= self.bound)


def targets(train_size: str, wide: str = "64x400") -> list[Target]:
    """The geometry issue's targets, as ratios of the scores they compare."""
    return [
        Target(f"fine-tuned accuracy / ceiling, {wide}", f"accuracy.finetuned.{wide}", f"accuracy.real.{wide}", 0.8),
        Target(f"fine-tuned accuracy / ceiling, {train_size}", f"accuracy.finetuned.{train_size}",
               f"accuracy.real.{train_size}", 0.9),
        Target(f"FID fine-tuned / pre-trained, {wide}", f"fid.finetuned.{wide}", f"fid.pretrained.{wide}", 0.27, True),
        Target(f"FID fine-tuned / pre-trained, {train_size}", f"fid.finetuned.{train_size}",
               f"fid.pretrained.{train_size}", 0.4, True),
        Target("VAE reconstruction accuracy / ceiling", "reconstruction.vae.accuracy",
               f"accuracy.real.{train_size}", 0.9),
        *(Target(f"audio (neural vocoder) accuracy / ceiling, {size}",
                 f"vocoder.neural.accuracy_audio.finetuned.{size}", "accuracy_audio.real", 0.85)
          for size in (train_size, wide)),
        Target("long-clip seam flux ratio", "longform.seam_ratio", None, 1.2, True),
        Target("long-clip accuracy / 10 s samples'", "longform.accuracy", f"accuracy.finetuned.{train_size}", 0.9),
    ]


def headline_keys(scores: dict) -> list[str]:
    return sorted(k for k in scores if k.split(".")[0] in ("accuracy", "accuracy_audio", "fid", "longform")
                  or k in ("reconstruction.vae.accuracy", "vocoder.neural.accuracy"))


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True).stdout.strip()


def _dvc(root: Path, *args: str) -> int:
    """Exit status of ``dvc ARGS`` run by this interpreter, whose folder leads PATH so that the
    stages' ``python`` is this one too, activated or not."""
    tools = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=tools).returncode


def stage_inputs(root: Path) -> set[str]:
    """What a stage reads from git: the DAG, its lock (which names the data each stage used),
    the params, and every dep the stages list."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values()
    return {"dvc.yaml", "dvc.lock", "params.yaml", *(dep for stage in stages for dep in stage.get("deps", []))}


def reads_the_same(baseline: str, root: Path) -> bool:
    """Whether the workspace differs from commit ``baseline`` in nothing a stage reads, so that an
    experiment made from ``baseline`` is one this workspace would make."""
    if subprocess.run(["git", "merge-base", "--is-ancestor", baseline, "HEAD"], cwd=root).returncode:
        return False
    inputs = stage_inputs(root)
    changed = _git(root, "diff", "--name-only", baseline).splitlines()
    return not any(path == dep or path.startswith(dep.rstrip("/") + "/") for path in changed for dep in inputs)


def experiment_commit(seed: int, root: Path) -> str | None:
    """The commit of experiment ``seed-N`` made from HEAD or from the nearest commit before it that
    differs in nothing a stage reads (a commit of docs, or of this summary, keeps the seeds), if
    there is one. DVC keeps it under ``refs/exps/<baseline[:2]>/<baseline[2:]>/seed-N``."""
    made = {}
    for ref in _git(root, "for-each-ref", "--format=%(refname)", "refs/exps").splitlines():
        parts = ref.split("/")
        if len(parts) == 5 and parts[4] == f"seed-{seed}":
            made[parts[2] + parts[3]] = ref
    usable = [(int(_git(root, "rev-list", "--count", f"{baseline}..HEAD")), ref)
              for baseline, ref in made.items() if reads_the_same(baseline, root)]
    return _git(root, "rev-parse", min(usable)[1]) if usable else None


def run_seed(seed: int, root: Path) -> str:
    made = experiment_commit(seed, root)
    if made is None:
        status = _dvc(root, "exp", "run", "--temp", "--name", f"seed-{seed}",
                      "--set-param", f"train.seed={seed}", "--set-param", f"sample.seed={seed}")
        made = experiment_commit(seed, root)
        if status or made is None:
            raise PipelineError(f"seed {seed}: `dvc exp run` failed (exit {status}); its output is above")
    return made


def summarise(per_seed: dict[int, dict], train_size: str) -> dict:
    """Per score and per target: each seed's value, the mean and the sample standard deviation;
    per target also on how many seeds it is met, and the same for the score it bounds."""
    def spread(values: list[float]) -> dict:
        return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    seeds = list(per_seed)
    keys = [k for k in headline_keys(per_seed[seeds[0]]) if all(k in s for s in per_seed.values())]
    scores = {k: {"seeds": [per_seed[s][k] for s in seeds], **spread([per_seed[s][k] for s in seeds])} for k in keys}
    checks = {}
    for target in targets(train_size):
        values = [target.value(per_seed[s]) for s in seeds]
        bounded = [per_seed[s].get(target.numerator, math.nan) for s in seeds]
        checks[target.name] = {"bound": f"{'<=' if target.at_most else '>='} {target.bound}", "seeds": values,
                               **spread(values), "met_on": sum(target.met(v) for v in values),
                               "over": target.denominator,
                               "score": {"key": target.numerator, "seeds": bounded, **spread(bounded)}}
    return {"seeds": seeds, "scores": scores, "targets": checks}


def markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    head = "| {} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |"
    rule = "|---" * (len(seeds) + 2) + "|"

    def number(value: float) -> str:
        return f"{value:.3f}" if math.isfinite(value) else "–"

    def row(name: str, entry: dict) -> str:
        return (f"| {name} | " + " | ".join(number(v) for v in entry["seeds"])
                + f" | {number(entry['mean'])} ± {number(entry['sd'])} |")

    # each target's score with its spread and what the target makes of it (the README's table), then every
    # headline score
    lines = [head.format("score").removesuffix(" |") + " | target | its value, mean ± sd | met on |",
             rule + "---|---|---|"]
    for entry in summary["targets"].values():
        bound = f"÷ {entry['over']} {entry['bound']}" if entry["over"] else entry["bound"]
        value = f"{number(entry['mean'])} ± {number(entry['sd'])}"
        met = f"{entry['met_on']} of {len(seeds)}"
        lines.append(row(entry["score"]["key"], entry["score"]) + f" {bound} | {value} | {met} |")
    lines += ["", head.format("score"), rule]
    lines += [row(key, entry) for key, entry in summary["scores"].items()]
    return "\n".join(lines) + "\n"


def seeds_table(seeds: list[int], root: Path = Path(".")) -> str:
    from pipeline.params import load

    settings = load(root / "params.yaml")
    if settings.train.seed != settings.sample.seed:
        raise PipelineError(f"params.yaml has train.seed {settings.train.seed} and sample.seed "
                            f"{settings.sample.seed}; a seed here sets both, so set them equal first")
    if settings.train.seed in seeds and _dvc(root, "status", "--quiet"):
        raise PipelineError("the workspace's metrics are not what its code and params make (`dvc status`); "
                            "run `dvc repro` first")
    per_seed = {}
    for seed in seeds:
        revision = WORKSPACE if seed == settings.train.seed else run_seed(seed, root)
        per_seed[seed] = read_scores(revision, root)[0]
    size = settings.render.image_size
    summary = summarise(per_seed, f"{size}x{size}")
    write_json(root / SEEDS_JSON, summary)
    text = markdown(summary)
    with atomic_path(root / SEEDS_MD) as tmp:
        tmp.write_text(text)
    return text

