"""The neural vocoder: trained by its stage, saved without pickle, refused for another spec,
resumed bit-identically, and better than silence at what it is for."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import pipeline.stages.train_vocoder as stage
from pipeline.audio.waveforms import SplitAudio
from pipeline.errors import ModelError
from pipeline.models import OutOfMemory
from pipeline.models.vocoder import (
    VOCODERS,
    NeuralVocoder,
    VocoderShape,
    chosen_vocoder,
    load_vocoder,
    neural,
    resynthesis_scores,
    vocoder_for,
)

from conftest import tiny_audio


def run(tmp_path, tiny_shards, **vocoder):
    shards, params = tiny_shards
    params = dataclasses.replace(params, vocoder=dataclasses.replace(params.vocoder, **vocoder))
    report = stage.train_vocoder(params, *tiny_audio(shards), tmp_path / "vocoder", tmp_path / "checkpoints")
    return report, params


def test_the_stage_trains_saves_and_loads(tiny_models, tiny_shards):
    directory = tiny_models["vocoder"]
    config = json.loads((directory / "config.json").read_text())
    spec = tiny_shards[1].spec
    assert config["spectrogram_spec"] == dataclasses.asdict(spec)
    assert set(config["validation"]) == set(VOCODERS)
    vocoder = load_vocoder(directory, spec)
    assert set(load_file(directory / "vocoder.safetensors")) == set(vocoder.state_dict())
    log_mel = torch.full((spec.n_mels, 16), 10.0)
    audio = neural(vocoder, log_mel)
    assert audio.shape == (16 * spec.hop_length,) and np.isfinite(audio).all()
    # the same function the sample stage and `specldm generate` get
    name, vocode = vocoder_for("neural", spec, directory)
    assert name == "neural" and np.array_equal(vocode(log_mel, 0), audio)


def test_a_vocoder_for_another_spectrogram_spec_is_refused(tiny_models, tiny_shards):
    spec = tiny_shards[1].spec
    other = spec.replace(hop_length=1000, n_mels=64)
    with pytest.raises(ModelError, match=r"another SpectrogramSpec: hop_length=1250 \(model: 1000\), "
                                         r"n_mels=128 \(model: 64\)"):
        load_vocoder(tiny_models["vocoder"], other)
    with pytest.raises(ModelError, match="another SpectrogramSpec"):
        vocoder_for("neural", other, tiny_models["vocoder"])
    # the image geometry is not the vocoder's business
    load_vocoder(tiny_models["vocoder"], spec.replace(image_size=128, griffin_lim_iters=8))


def test_a_damaged_vocoder_is_a_clear_error(tmp_path, tiny_models):
    import shutil

    shutil.copytree(tiny_models["vocoder"], tmp_path / "vocoder")
    (tmp_path / "vocoder" / "vocoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="unreadable or not the architecture config.json describes"):
        load_vocoder(tmp_path / "vocoder")


def edited_copy(tmp_path, tiny_models, edit):
    import shutil

    directory = tmp_path / "vocoder"
    shutil.copytree(tiny_models["vocoder"], directory)
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


@pytest.mark.parametrize("field", ["dim", "intermediate_dim", "num_layers", "n_fft"])
@pytest.mark.parametrize("value", [10**9, -1, 0, "abc", 2.5, None])
def test_a_vocoder_config_out_of_bounds_is_refused_before_allocating(tmp_path, tiny_models, field, value):
    directory = edited_copy(tmp_path, tiny_models, lambda config: config["shape"].update({field: value}))
    with pytest.raises(ModelError, match=rf"config\.json: shape\.{field} is .*, not a whole number in 1\.\."):
        load_vocoder(directory)


def test_a_vocoder_config_that_does_not_match_its_weights_is_refused(tmp_path, tiny_models):
    directory = edited_copy(tmp_path, tiny_models, lambda config: config["shape"].update(dim=8))
    with pytest.raises(ModelError, match="not the architecture config.json describes .its tensors differ"):
        load_vocoder(directory)
    directory = edited_copy(tmp_path / "b", tiny_models, lambda config: config["shape"].pop("dim"))
    with pytest.raises(ModelError, match="shape must have exactly the fields"):
        load_vocoder(directory)


def test_a_nan_vocoder_weight_is_refused(tmp_path, tiny_models):
    from safetensors.torch import save_file

    directory = edited_copy(tmp_path, tiny_models, lambda config: None)
    weights = load_file(directory / "vocoder.safetensors")
    name = sorted(weights)[-1]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, directory / "vocoder.safetensors")
    with pytest.raises(ModelError, match=f"{name} holds NaN or infinite weights"):
        load_vocoder(directory)


@pytest.mark.parametrize(("neural_db", "chosen"), [(1.0, "neural"), (3.0, "griffin_lim")])
def test_the_vocoder_closer_to_the_validation_mels_is_chosen(tmp_path, tiny_models, neural_db, chosen):
    validation = {"neural": {"mel_l1_db": neural_db, "mrstft": 1.0}, "griffin_lim": {"mel_l1_db": 2.0, "mrstft": 1.0}}
    directory = edited_copy(tmp_path, tiny_models, lambda config: config.update(validation=validation))
    assert chosen_vocoder(directory) == chosen


@pytest.mark.parametrize("validation", [{}, {"neural": {"mel_l1_db": 1.0}}, "best",
                                        {"neural": {"mel_l1_db": "1"}, "griffin_lim": {"mel_l1_db": 2.0}},
                                        {"neural": {"mel_l1_db": float("nan")}, "griffin_lim": {"mel_l1_db": 2.0}}])
def test_a_tampered_validation_block_picks_no_vocoder_silently(tmp_path, tiny_models, validation):
    directory = edited_copy(tmp_path, tiny_models, lambda config: config.update(validation=validation))
    with pytest.raises(ModelError, match="records no usable validation scores"):
        chosen_vocoder(directory)


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, tiny_shards, monkeypatch):
    straight, _ = run(tmp_path / "straight", tiny_shards)
    calls = {"n": 0}
    real_loss = stage.vocoder_loss

    def dies_at_step_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(stage, "vocoder_loss", dies_at_step_three)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", tiny_shards)
    assert not (tmp_path / "killed" / "vocoder").exists()
    monkeypatch.setattr(stage, "vocoder_loss", real_loss)
    resumed, _ = run(tmp_path / "killed", tiny_shards)
    assert resumed["resumed_from_step"] == 2 and straight["resumed_from_step"] == 0
    a = load_file(tmp_path / "straight" / "vocoder" / "vocoder.safetensors")
    b = load_file(tmp_path / "killed" / "vocoder" / "vocoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["history"] == straight["history"]


def test_changed_settings_train_afresh_instead_of_resuming(tmp_path, tiny_shards):
    run(tmp_path, tiny_shards)
    report, _ = run(tmp_path, tiny_shards, learning_rate=1e-4)
    assert report["resumed_from_step"] == 0


def test_training_brings_the_resynthesis_closer_to_the_mels(tmp_path, tiny_shards):
    """60 steps of a small vocoder: its validation mel error falls well below the untrained one's."""
    shards, params = tiny_shards
    report, params = run(tmp_path, tiny_shards, steps=60, dim=32, intermediate_dim=64, num_layers=2,
                         batch_size=4, checkpoint_every=60, learning_rate=3e-3)
    validation = SplitAudio("val", *tiny_audio(shards), params.subset.mix_domain)
    torch.manual_seed(0)
    untrained = NeuralVocoder(params.spec, VocoderShape(32, 64, 2, params.vocoder.n_fft)).eval()
    before = resynthesis_scores(lambda mel, seed: neural(untrained, mel), validation.batches(), params.spec)
    after = report["validation"]["neural"]
    assert after["mel_l1_db"] < 0.7 * before["mel_l1_db"].mean()
    assert after["mrstft"] < before["mrstft"].mean()


def test_unknown_vocoder_names_are_refused(tiny_models, tiny_shards):
    with pytest.raises(ModelError, match="unknown vocoder 'hifigan'"):
        vocoder_for("hifigan", tiny_shards[1].spec, tiny_models["vocoder"])


def test_running_out_of_memory_gets_advice(tmp_path, tiny_shards, monkeypatch):
    def no_memory(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes")

    monkeypatch.setattr(stage, "vocoder_loss", no_memory)
    with pytest.raises(OutOfMemory, match=r"out of memory: at vocoder\.batch_size=\d+ and vocoder\.crop_frames=\d+"):
        run(tmp_path, tiny_shards)
