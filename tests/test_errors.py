"""Damaged or foreign artifacts, and how stages report what the user can fix: one line."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from pipeline.audio.shards import SPEC_KEY, read_spec, shard_files
from pipeline.audio.spectrogram import SpecError
from pipeline.errors import ModelError, PipelineError, stage_main
from pipeline.models.diffusion import load_pipeline, read_model_spec
from pipeline.params import render_profile

from conftest import ROOT


def with_spec_metadata(shard, target, value: bytes):
    table = pq.read_table(shard)
    metadata = dict(table.schema.metadata) | {SPEC_KEY: value}
    pq.write_table(table.replace_schema_metadata(metadata), target)


@pytest.mark.parametrize("value, message", [
    (b'{"sample_rate": 16000}', r"unknown fields \[\] and lacks \['clip_seconds'"),
    (b"not json", r"the recorded SpectrogramSpec is not valid JSON"),
    (b"[1, 2]", r"the recorded SpectrogramSpec is not a mapping"),
])
def test_a_bogus_spec_in_a_shard_is_a_clear_error(tmp_path, tiny_shards, value, message):
    shards, _ = tiny_shards
    target = tmp_path / "part-00000.parquet"
    with_spec_metadata(shard_files("train", shards)[0], target, value)
    with pytest.raises(SpecError, match=f"{target}: .*{message}"):
        read_spec(target)


def test_an_impossible_spec_names_its_field(tmp_path, tiny_shards):
    shards, params = tiny_shards
    target = tmp_path / "part-00000.parquet"
    values = json.loads(pq.read_schema(shard_files("train", shards)[0]).metadata[SPEC_KEY])
    with_spec_metadata(shard_files("train", shards)[0], target,
                       json.dumps(values | {"clip_seconds": float("inf")}).encode())
    with pytest.raises(SpecError, match=r"SpectrogramSpec\.clip_seconds=inf: must be a finite number"):
        read_spec(target)


def test_a_stage_reports_a_damaged_shard_in_one_line(tmp_path, tiny_shards):
    shards, _ = tiny_shards
    shutil.copytree(shards, tmp_path / "data" / "shards")
    shard = shard_files("train", tmp_path / "data" / "shards")[0]
    with_spec_metadata(shard, shard, b"{}")
    (tmp_path / "params.yaml").write_text(render_profile("tiny"))
    done = subprocess.run([sys.executable, "-m", "pipeline.stages.train_evaluator"], cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith(f"train_evaluator: {shard.relative_to(tmp_path)}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("content, message", [
    ("{not json", "not readable JSON"),
    ('["unet"]', "not a Stable Diffusion pipeline index"),
    ('{"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["nonexistent_library", "X"]}',
     "cannot load this diffusers pipeline"),
])
def test_a_malformed_model_index_is_a_clear_error(tmp_path, tiny_base, content, message):
    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    (model / "model_index.json").write_text(content)
    with pytest.raises(ModelError, match=message):
        load_pipeline(model)


def test_a_malformed_model_spec_is_a_clear_error(tmp_path):
    (tmp_path / "spectrogram_spec.json").write_text('{"n_mels": "many"}')
    with pytest.raises(SpecError, match="spectrogram_spec.json: the recorded SpectrogramSpec has unknown"):
        read_model_spec(tmp_path)


def test_stage_main_turns_a_pipeline_error_into_one_line(capsys):
    @stage_main("demo")
    def main(argv=None):
        raise PipelineError("what went wrong, and what to do")

    with pytest.raises(SystemExit) as exit:
        main([])
    assert exit.value.code == 1
    assert capsys.readouterr().err == "demo: what went wrong, and what to do\n"


def test_ctrl_c_in_any_stage_is_one_line_and_status_130(capsys):
    """Ctrl-C in `sample` used to end in a KeyboardInterrupt traceback."""
    @stage_main("sample")
    def main(argv=None):
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit:
        main([])
    assert exit.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("sample: interrupted; finished outputs are kept") and err.count("\n") == 1


def test_a_pickled_model_file_is_never_loaded(tmp_path, tiny_base):
    """Models come through a shared DVC remote too: only safetensors weights are read."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    model = tmp_path / "model"
    shutil.copytree(tiny_base, model)
    for weights in (model / "unet").glob("*.safetensors"):
        weights.unlink()
    with open(model / "unet" / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump(Payload(), f)
    with pytest.raises(ModelError):
        load_pipeline(model)
    assert not marker.exists()
