"""The DAG as DVC runs it: a copy of the tiny repository ``dvc repro`` made (conftest), then
what each change of params, code or data invalidates, and what it reruns."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from pipeline.audio.spectrogram import waveform_to_log_mel
from pipeline.params import Params
from pipeline.sources.manifest import read_manifest

from conftest import ROOT, commit, copy_repo, dvc_status, read_clip, run, stages_ran


@pytest.fixture
def repo(reproduced_repo, tmp_path):
    return copy_repo(reproduced_repo, tmp_path / "repo")


def changed_stages(repo, group, key, value):
    """Stages `dvc status` reports as changed after setting params[group][key] = value."""
    path = repo / "params.yaml"
    original = path.read_text()
    params = yaml.safe_load(original)
    params[group][key] = value
    path.write_text(yaml.safe_dump(params))
    try:
        return dvc_status(repo)
    finally:
        path.write_text(original)


def test_dvc_repro_runs_the_dag_and_invalidates_precisely(repo):
    manifest = read_manifest(repo / "data/raw/manifest.parquet")
    assert len(manifest) == 24 and set(manifest.status) == {"ok"}
    metrics = json.loads((repo / "metrics/metrics.json").read_text())
    assert "fid.finetuned.64x400" in metrics and "accuracy.pretrained.64x64" in metrics
    assert json.loads(run(["dvc", "status", "--json"], repo)) == {}  # once as a user asks
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo))
    assert any("metrics/metrics.json" in str(v) for v in shown.values())
    expectations = [
        ("source", "clips_per_class", 5, {"acquire"}),
        ("download", "workers", 7, set()),  # how clips are fetched, not what they are
        ("spectrogram", "sample_rate", 22_050, {"acquire", "render"}),
        ("spectrogram", "n_mels", 64, {"render"}),
        ("subset", "caption_template", "a sound of {name}", {"subset"}),
        ("subset", "mix_domain", "mel", {"render", "train_vocoder"}),
        ("render", "image_size", 128, {"render", "pretrain"}),
        ("model", "unet_channels", [16, 16], {"pretrain"}),
        ("train", "learning_rate", 1e-3, {"train"}),
        ("evaluator", "epochs", 3, {"train_evaluator"}),
        ("vocoder", "steps", 3, {"train_vocoder"}),
        ("sample", "vocoder", "griffin_lim", {"sample"}),
        ("sample", "guidance_scale", 5.0, {"sample"}),
        ("sample", "batch_size", 3, set()),  # per-image seeds: batching cannot change a sample
        ("sample", "resolutions", ["64x64"], {"fit_judge", "sample", "evaluate"}),  # a judge per geometry
        ("evaluate", "batch_size", 16, {"evaluate"}),
        ("evaluate", "bootstrap", 40, {"evaluate"}),  # scoring, not the judge: it holds still
    ]
    for group, key, value, stages in expectations:
        assert changed_stages(repo, group, key, value) == stages, f"{group}.{key}"
    assert "up to date" in run(["dvc", "status"], repo).lower()

    # What reruns, not only what is stale: a new sample set reruns scoring alone
    # (test_sharing.py's branch test), other audio every stage (below).

    # Code: a change reruns every stage that runs it, through any chain of imports, and no
    # other (evaluate vocodes the samples' images too; train reads only shards).
    generate = repo / "pipeline" / "models" / "generate.py"
    original = generate.read_text()
    generate.write_text(original + "\n# another inversion, say\n")
    assert dvc_status(repo) == {"sample", "evaluate"}
    generate.write_text(original)
    # generation that scoring does not run (the test clips are in-painted in sample), and
    # scoring that no generation runs
    # and narrow: a section's validation, or a training helper, stales only what runs it
    for module, stages in (("models/inpaint.py", {"sample"}), ("evaluation/scores.py", {"sample", "evaluate"}),
                           ("evaluation/extractors.py", {"fit_judge", "evaluate"}),
                           ("config/train.py", {"train"}), ("config/source.py", {"acquire"}),
                           ("training/resume.py", {"train", "train_vocoder"})):
        path = repo / "pipeline" / module
        original = path.read_text()
        path.write_text(original + "\n# changed\n")
        assert dvc_status(repo) == stages, module
        path.write_text(original)
    spectrogram = repo / "pipeline" / "audio" / "spectrogram.py"  # sample -> generate -> Griffin-Lim
    original = spectrogram.read_text()
    spectrogram.write_text(original + "\n# another Griffin-Lim, say\n")
    assert {"sample", "render"} <= dvc_status(repo)
    spectrogram.write_text(original)

    # A damaged shard (footer intact): DVC sees the output changed, render writes it again,
    # byte for byte, and nothing downstream has reason to rerun.
    shard = repo / "data" / "shards" / "train" / "part-00000.parquet"
    intact = shard.read_bytes()
    middle = len(intact) // 2
    shard.write_bytes(intact[:middle] + bytes(b ^ 0xFF for b in intact[middle:middle + 64])
                      + intact[middle + 64:])
    assert repro(repo) == {"render"}
    assert shard.read_bytes() == intact

    # Other audio under the same clip names: the data stages rerun on the new audio, and every
    # stage that reads clips or shards is stale after them (what they make is tested above).
    set_param(repo, "source", "seed", 1)
    assert repro(repo, "render") >= {"acquire", "render"}
    assert dvc_status(repo) == {"train", "train_evaluator", "train_vocoder", "fit_judge", "sample", "evaluate"}
    rows = pq.read_table(shard, columns=["source_ids", "log_mel"]).to_pylist()
    first = next(row for row in rows if len(row["source_ids"]) == 1)
    params = Params()  # the tiny profile's spectrogram settings are the defaults
    audio = read_clip(repo / "data" / "raw", first["source_ids"][0])
    expected = waveform_to_log_mel(torch.from_numpy(audio), params.spec).numpy().ravel()
    assert np.abs(np.asarray(first["log_mel"], dtype=np.float32) - expected).max() <= 0.05


def repro(repo, *targets):
    """Stages `dvc repro [targets]` runs."""
    return stages_ran(run(["dvc", "repro", *targets], repo))


def set_param(repo, group, key, value):
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params[group][key] = value
    path.write_text(yaml.safe_dump(params))


def test_every_stage_dependency_exists():
    """Each dependency is in the repository, or is what an earlier stage produces."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    produced = {next(iter(out)) if isinstance(out, dict) else out
                for stage in stages.values() for out in stage.get("outs", [])}
    groups = set(Params().to_dict())
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            assert dep in produced or (ROOT / dep).exists(), f"{name}: missing dependency {dep}"
        for key in stage.get("params", []):
            assert key.split(".")[0] in groups, f"{name}: unknown params key {key}"


def test_seeds_run_as_experiments_beside_the_workspace_and_are_read_again(repo):
    before = {path: (repo / path).read_bytes() for path in ("params.yaml", "metrics/metrics.json", "dvc.lock")}
    ran = run(["specldm", "seeds", "0", "1"], repo)
    # seed 0 is the workspace's; seed 1 retrains and resamples in a temporary copy, the rest from the cache
    assert stages_ran(ran) == {"train", "sample", "evaluate"}
    assert {path: (repo / path).read_bytes() for path in before} == before
    summary = json.loads((repo / "metrics" / "seeds.json").read_text())
    workspace = json.loads(before["metrics/metrics.json"])
    assert summary["seeds"] == [0, 1]
    fid = summary["scores"]["fid.finetuned.64x64"]["seeds"]
    assert fid[0] == workspace["fid.finetuned.64x64"] and fid[1] != fid[0]  # other samples, another score
    assert "| seed 0 | seed 1 | mean ± sd |" in ran and "met on" in ran
    # made once: asked again, the experiment is read, not rerun
    again = run(["specldm", "seeds", "0", "1"], repo)
    assert stages_ran(again) == set() and json.loads((repo / "metrics" / "seeds.json").read_text()) == summary
    # and still after a commit that no stage reads (the summary itself, a note)
    (repo / "NOTES.md").write_text("seeds 0 and 1 made\n")
    commit(repo, "the seeds' summary")
    assert stages_ran(run(["specldm", "seeds", "0", "1"], repo)) == set()
    # an edit to what a stage reads makes them again; committed or not, it differs from their baseline
    from pipeline.evaluation.seeds import experiment_commit
    assert experiment_commit(1, repo) is not None
    scoring = repo / "pipeline" / "evaluation" / "scoring.py"
    scoring.write_text(scoring.read_text() + "\n")
    assert experiment_commit(1, repo) is None
