"""DVC never calls stale code fresh: each stage's code deps are the closure of its imports."""

import yaml

from pipeline.provenance import closure, code_digest, repo_relative

from conftest import ROOT


def stage_module(stage: dict) -> str:
    command = stage["cmd"].split()
    assert command[:2] == ["python", "-m"], f"{stage['cmd']}: not a `python -m pipeline.<stage>` command"
    return command[2]


def test_dvc_yaml_lists_exactly_the_code_each_stage_runs():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        needed = {repo_relative(p) for p in closure(stage_module(stage))}
        listed = {dep for dep in stage.get("deps", []) if dep.startswith("pipeline/")}
        assert not needed - listed, f"{name}: dvc.yaml misses {sorted(needed - listed)}"
        # more would rerun the stage for code it never runs
        assert not listed - needed, f"{name}: dvc.yaml lists {sorted(listed - needed)}, which it never imports"


def test_the_closure_follows_imports_through_other_modules():
    sample = {repo_relative(p) for p in closure("pipeline.stages.sample")}
    # sample -> generate -> spectrogram (Griffin-Lim): the case that used to leave WAVs stale
    assert {"pipeline/__init__.py", "pipeline/models/generate.py", "pipeline/audio/spectrogram.py"} <= sample
    assert "pipeline/stages/acquire.py" not in sample
    acquire = {repo_relative(p) for p in closure("pipeline.stages.acquire")}
    assert "pipeline/sources/download.py" in acquire  # the download workers' module


def test_the_code_digest_changes_with_any_file_of_the_closure(monkeypatch, tmp_path):
    import shutil

    import pipeline.provenance as provenance

    copy = tmp_path / "pipeline"
    shutil.copytree(ROOT / "pipeline", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "PACKAGE_DIR", copy)

    def digests():
        provenance.closure.cache_clear()
        provenance.code_digest.cache_clear()
        return code_digest("pipeline.stages.sample"), code_digest("pipeline.stages.acquire")

    try:
        sample, acquire = digests()
        spectrogram = copy / "audio" / "spectrogram.py"
        spectrogram.write_text(spectrogram.read_text() + "\n# a different Griffin-Lim, say\n")
        edited_sample, edited_acquire = digests()
        assert edited_sample != sample and edited_acquire != acquire  # both run spectrogram.py
        download = copy / "sources" / "download.py"
        download.write_text(download.read_text() + "\n# another retry rule\n")
        assert digests() == (edited_sample, digests()[1]) and digests()[1] != edited_acquire
    finally:
        provenance.closure.cache_clear()
        provenance.code_digest.cache_clear()
