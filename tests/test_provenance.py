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


STAGE_MODULES = {name: stage_module(stage)
                 for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items()}


def stages_running(path: str) -> set[str]:
    return {name for name, module in STAGE_MODULES.items() if path in {repo_relative(p) for p in closure(module)}}


def test_a_sections_validation_reruns_only_the_stages_that_read_it():
    """Narrow invalidation: an edit to how one section is checked makes only its readers
    stale (DVC then reruns what their outputs feed)."""
    assert stages_running("pipeline/config/source.py") == {"acquire"}
    assert stages_running("pipeline/config/train.py") == {"train"}
    assert stages_running("pipeline/config/evaluator.py") == {"train_evaluator"}
    assert stages_running("pipeline/config/subset.py") == {"subset", "render", "train_vocoder"}
    assert stages_running("pipeline/params.py") == set()  # all sections together: the CLI's and the tests'
    assert stages_running("pipeline/config/core.py") == set(STAGE_MODULES)


def test_a_training_library_edit_reruns_the_stages_that_train_with_it():
    assert stages_running("pipeline/training/resume.py") == {"train", "train_vocoder"}
    assert stages_running("pipeline/training/vae.py") == {"pretrain", "train"}
    assert stages_running("pipeline/training/ema.py") == {"train"}
    assert stages_running("pipeline/training/unet.py") == {"train"}
    assert stages_running("pipeline/sources/photographs.py") == {"pretrain"}


def test_imports_only_a_type_checker_reads_are_not_code_that_runs(tmp_path):
    from pipeline.provenance import _imports

    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nimport pipeline.files\n"
                      "if TYPE_CHECKING:\n    from pipeline.config.train import TrainParams\n"
                      "else:\n    import pipeline.paths\n"
                      "def f():\n    from pipeline.ontology import Ontology\n")
    found = _imports(module)
    assert {"pipeline.files", "pipeline.paths", "pipeline.ontology"} <= found
    assert "pipeline.config.train" not in found
