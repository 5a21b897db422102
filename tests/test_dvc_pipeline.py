"""The DAG as DVC runs it: a throwaway copy of the repository, a tiny config, `dvc repro`."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    params["source"].update(num_classes=2, clips_per_class=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q"], tmp_path)
    return tmp_path


def test_dvc_repro_runs_the_dag_and_is_then_up_to_date(repo):
    run(["dvc", "repro"], repo)
    manifest = read_manifest(repo / "data/raw/manifest.parquet")
    assert len(manifest) == 4 and set(manifest.status) == {"ok"}
    assert "up to date" in run(["dvc", "status"], repo).lower()
    # A spectrogram setting that acquire does not read leaves it up to date.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["spectrogram"]["n_mels"] = 64
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "acquire" not in run(["dvc", "status"], repo)
    params["spectrogram"]["sample_rate"] = 22_050
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert "acquire" in run(["dvc", "status"], repo)


def test_every_stage_dependency_exists():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    groups = set(Params().to_dict())
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            assert (ROOT / dep).exists(), f"{name}: missing dependency {dep}"
        for key in stage.get("params", []):
            assert key.split(".")[0] in groups, f"{name}: unknown params key {key}"
