"""The DAG as DVC runs it: a throwaway copy of the repository, a tiny config, `dvc repro`."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS
from pipeline.manifest import read_manifest
from pipeline.params import Params

ROOT = Path(__file__).resolve().parent.parent
TRACKED = ["dvc.yaml", "params.yaml", "pyproject.toml", "pipeline", "data/meta", "configs", ".dvc/config",
           ".dvcignore"]


def run(cmd, cwd):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(cwd))
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def repo(tmp_path):
    for name in TRACKED:
        source = ROOT / name
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    for group, values in TINY_PARAMS.items():
        params[group].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], tmp_path)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], tmp_path)
    return tmp_path


def changed_stages(repo, group, key, value):
    """Stages `dvc status` reports as changed after setting params[group][key] = value."""
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params[group][key] = value
    path.write_text(yaml.safe_dump(params))
    try:
        return set(json.loads(run(["dvc", "status", "--json"], repo)))
    finally:
        path.write_text(original)


def test_dvc_repro_runs_the_dag_and_invalidates_precisely(repo):
    run(["dvc", "repro"], repo)
    manifest = read_manifest(repo / "data/raw/manifest.parquet")
    assert len(manifest) == 24 and set(manifest.status) == {"ok"}
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert "fid.finetuned.64x400" in metrics and "accuracy.pretrained.64x64" in metrics
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo))
    assert any("metrics/metrics.json" in str(v) for v in shown.values())
    expectations = [
        ("source", "clips_per_class", 5, {"acquire"}),
        ("spectrogram", "sample_rate", 22_050, {"acquire", "render"}),
        ("spectrogram", "n_mels", 64, {"render"}),
        ("subset", "caption_template", "a sound of {name}", {"subset"}),
        ("subset", "mix_domain", "mel", {"render"}),
        ("render", "image_size", 128, {"render", "pretrain"}),
        ("model", "unet_channels", [16, 16], {"pretrain"}),
        ("train", "learning_rate", 1e-3, {"train"}),
        ("evaluator", "epochs", 3, {"train_evaluator"}),
        ("sample", "guidance_scale", 5.0, {"sample"}),
        ("sample", "batch_size", 3, set()),  # per-image seeds: batching cannot change a sample
        ("sample", "resolutions", ["64x64"], {"sample", "evaluate"}),
        ("evaluate", "batch_size", 16, {"evaluate"}),
    ]
    for group, key, value, stages in expectations:
        assert changed_stages(repo, group, key, value) == stages, f"{group}.{key}"
    assert "up to date" in run(["dvc", "status"], repo).lower()

    downstream = {"render", "train", "train_evaluator", "sample", "evaluate"}
    assert stages_run(repo, "subset", "caption_template", "a sound of {name}") == {"subset"} | downstream
    assert stages_run(repo, "sample", "guidance_scale", 4.0) == {"sample", "evaluate"}


def stages_run(repo, group, key, value):
    """Stages `dvc repro` actually runs after setting params[group][key] = value."""
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[group][key] = value
    path.write_text(yaml.safe_dump(params))
    output = run(["dvc", "repro"], repo)
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_every_stage_dependency_exists():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    groups = set(Params().to_dict())
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            assert (ROOT / dep).exists(), f"{name}: missing dependency {dep}"
        for key in stage.get("params", []):
            assert key.split(".")[0] in groups, f"{name}: unknown params key {key}"
