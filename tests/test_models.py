import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

import pipeline.training.resume
from pipeline.audio.shards import iter_batches
from pipeline.models import OutOfMemory
from pipeline.models.checkpoints import CheckpointError, checkpoints
from pipeline.models.diffusion import ModelError, drop_captions, load_pipeline, materialise_base, uint8_to_pm1
from pipeline.stages import train as train_module
from pipeline.stages.train import train
from pipeline.training import unet as unet_training
from pipeline.training.latents import cache_posteriors
from pipeline.training.order import micro_batch_rows
from pipeline.training.resume import TrainingError

from conftest import tiny_params


def run_train(root, shards, base, **train_overrides):
    params = tiny_params(train=train_overrides)
    report = train(params, shards, base, root / "finetuned", root / "checkpoints", root / "live")
    return params, report


def unet_weights(path):
    return load_pipeline(path).unet.state_dict()


def vae_of(path):
    return load_pipeline(path).vae


def test_pretrained_base_is_a_standard_pipeline(tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, local_files_only=True)
    assert pipe.unet.config.cross_attention_dim == 384  # all-MiniLM-L6-v2 token states
    assert 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 8
    assert pipe.vae.config.scaling_factor != 1.0
    image = pipe("a spectrogram of the sound of Dial tone", num_inference_steps=2, height=64, width=64,
                 output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()


def test_save_load_round_trip_and_generation(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    _, report = run_train(tmp_path, shards, tiny_base)
    assert report["steps"] == 6 and np.isfinite(report["final_loss"])
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "finetuned", local_files_only=True)
    reloaded = load_pipeline(tmp_path / "finetuned")
    for name, weight in pipe.unet.state_dict().items():
        assert torch.equal(weight, reloaded.unet.state_dict()[name])
    base_unet = load_pipeline(tiny_base).unet.state_dict()
    assert any(not torch.equal(w, base_unet[n]) for n, w in pipe.unet.state_dict().items())
    images = pipe(["a spectrogram of the sound of Dial tone"] * 2, num_inference_steps=2,
                  height=64, width=64, output_type="np").images
    assert images.shape == (2, 64, 64, 3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-000002", "step-000004", "step-000006"]
    assert (tmp_path / "checkpoints" / "step-000004" / "unet" / "config.json").exists()
    assert (tmp_path / "live" / "plots" / "metrics" / "loss.tsv").read_text().count("\n") == 7


def test_caption_dropout_rate():
    states = torch.randn(20_000, 3, 4)
    unconditional = torch.zeros(3, 4)
    mixed, dropped = drop_captions(states, unconditional, 0.1, torch.Generator().manual_seed(0))
    assert 0.09 < dropped.float().mean() < 0.11
    assert torch.equal(mixed[dropped], torch.zeros(int(dropped.sum()), 3, 4))
    assert torch.equal(mixed[~dropped], states[~dropped])


def test_data_order_is_a_seeded_permutation_per_epoch():
    rows = [micro_batch_rows(i, 10, 4, seed=3) for i in range(5)]  # 20 draws = 2 epochs
    flat = np.concatenate(rows)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert np.array_equal(micro_batch_rows(3, 10, 4, seed=3), rows[3])
    assert not np.array_equal(micro_batch_rows(0, 10, 4, seed=4), rows[0])


def test_resume_after_a_kill_reaches_the_same_weights(tmp_path, tiny_shards, tiny_base, monkeypatch):
    shards, _ = tiny_shards
    run_train(tmp_path / "straight", shards, tiny_base)

    calls = {"n": 0}
    real_loss = unet_training.diffusion_training_loss

    def dies_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(unet_training, "diffusion_training_loss", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run_train(tmp_path / "killed", shards, tiny_base)
    assert not (tmp_path / "killed" / "finetuned").exists()
    monkeypatch.setattr(unet_training, "diffusion_training_loss", real_loss)
    _, report = run_train(tmp_path / "killed", shards, tiny_base)
    assert report["resumed_from_step"] == 4
    straight = unet_weights(tmp_path / "straight" / "finetuned")
    resumed = unet_weights(tmp_path / "killed" / "finetuned")
    for name, weight in straight.items():
        assert torch.equal(weight, resumed[name]), name
    # the fine-tuned VAE comes back from the checkpoint, and with it the latents' scale
    straight_vae, resumed_vae = vae_of(tmp_path / "straight" / "finetuned"), vae_of(tmp_path / "killed" / "finetuned")
    assert straight_vae.config.scaling_factor == resumed_vae.config.scaling_factor
    for name, weight in straight_vae.state_dict().items():
        assert torch.equal(weight, resumed_vae.state_dict()[name]), name


def test_vae_fine_tuning_learns_to_draw_spectrograms(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    _, report = run_train(tmp_path, shards, tiny_base, steps=1, vae_steps=40, vae_crop_size=32)
    assert report["vae_val_mae_db_after"] < 0.8 * report["vae_val_mae_db_before"]
    tuned, base = vae_of(tmp_path / "finetuned"), vae_of(tiny_base)
    assert tuned.config.scaling_factor != base.config.scaling_factor  # its latents rescaled to unit variance
    for part in ("encoder", "decoder"):  # both halves learn: the encoder is where detail was lost
        assert not torch.equal(getattr(tuned, part).conv_in.weight, getattr(base, part).conv_in.weight), part


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, tiny_shards, tiny_base, monkeypatch):
    shards, _ = tiny_shards
    real_loss = unet_training.diffusion_training_loss
    calls = {"n": 0}

    def nan_at_step_three(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(unet_training, "diffusion_training_loss", nan_at_step_three)
    with pytest.raises(TrainingError, match="loss became nan at step 3.*step-000002"):
        run_train(tmp_path, shards, tiny_base)
    assert (tmp_path / "checkpoints" / "step-000002" / "checkpoint.json").exists()


def test_training_images_are_the_shard_images_unflipped(tiny_shards, tiny_base):
    shards, params = tiny_shards
    vae = load_pipeline(tiny_base).vae
    seen = []
    encode = vae.encode
    vae.encode = lambda images: (seen.append(images.clone()), encode(images))[1]
    cache_posteriors(vae, shards, 5, "cpu")
    fed = torch.cat(seen)
    stored = np.concatenate([b["image"] for b in iter_batches("train", ["image"], root=shards)])
    assert torch.equal(fed, uint8_to_pm1(stored))
    assert not torch.equal(fed, uint8_to_pm1(stored[:, :, ::-1].copy()))  # a flip would show


def test_empty_training_split_is_a_clear_error(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    empty = tmp_path / "shards"
    shutil.copytree(shards, empty)
    for part in (empty / "train").iterdir():
        part.unlink()
    with pytest.raises(Exception, match="no shards for split 'train'"):
        run_train(tmp_path, empty, tiny_base)


def test_hub_id_offline_fails_at_once_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelError, match=r"not in the local Hugging Face cache.*huggingface-cli download"):
        materialise_base("CompVis/stable-diffusion-v1-4", tmp_path / "out")
    with pytest.raises(ModelError, match="not a directory"):
        materialise_base(str(tmp_path / "missing-dir"), tmp_path / "out")


def test_local_checkpoint_base_is_materialised(tmp_path, tiny_base):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, local_files_only=True)
    pipe.save_pretrained(tmp_path / "my-base")
    materialise_base(str(tmp_path / "my-base"), tmp_path / "pretrained")
    copied = load_pipeline(tmp_path / "pretrained")
    for name, weight in pipe.unet.state_dict().items():
        assert torch.equal(weight, copied.unet.state_dict()[name])


def test_a_finished_run_resumes_to_the_same_report(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    _, first = run_train(tmp_path, shards, tiny_base)
    _, again = run_train(tmp_path, shards, tiny_base)  # e.g. DVC reran it for a docs change
    assert again["resumed_from_step"] == 6
    assert again["final_loss"] == first["final_loss"] and np.isfinite(again["final_loss"])
    # timings describe this run alone, and travel apart from the compared metrics
    assert first["timings"]["steps_this_run"] == 6 and first["timings"]["samples_per_second"] > 0
    assert again["timings"]["steps_this_run"] == 0 and again["timings"]["samples_per_second"] is None


def test_training_twice_writes_identical_checkpoints_and_logs(tmp_path, tiny_shards, tiny_base):
    """Nothing that differs between runs (times, throughput, pickled ids) is kept in what
    DVC hashes or git tracks, so reproducing a result leaves both clean."""
    shards, _ = tiny_shards
    _, first = run_train(tmp_path / "a", shards, tiny_base)
    _, second = run_train(tmp_path / "b", shards, tiny_base)
    assert {k: v for k, v in first.items() if k != "timings"} == \
        {k: v for k, v in second.items() if k != "timings"}
    for folder in ("checkpoints", "finetuned", "live"):
        files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / folder).rglob("*") if p.is_file())
        assert files
        for name in files:
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_a_planted_pickle_is_never_loaded(tmp_path, tiny_shards, tiny_base):
    """Checkpoints come through a shared DVC remote: one that would run code is refused
    unread, and left where it is as evidence."""
    shards, _ = tiny_shards
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    planted = tmp_path / "checkpoints" / "step-999999"
    planted.mkdir(parents=True)
    with open(planted / "training_state.pt", "wb") as f:
        pickle.dump({"fingerprint": "x", "payload": Payload()}, f)
    (planted / "state").mkdir()
    with open(planted / "state" / "state.json", "wb") as f:  # even where the state belongs
        pickle.dump(Payload(), f)
    _, report = run_train(tmp_path, shards, tiny_base)
    assert not marker.exists()
    assert report["resumed_from_step"] == 0
    assert (planted / "training_state.pt").exists()
    assert checkpoints(tmp_path / "checkpoints")[-1].name == "step-000006"


def test_a_damaged_checkpoint_stops_with_the_folder_to_delete(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    run_train(tmp_path, shards, tiny_base)
    state = tmp_path / "checkpoints" / "step-000006" / "state" / "state.safetensors"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"not a readable training state.*delete .*step-000006"):
        run_train(tmp_path, shards, tiny_base)


def test_running_out_of_cpu_memory_gets_advice(tmp_path, tiny_shards, tiny_base, monkeypatch):
    shards, _ = tiny_shards

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 8589934592 bytes. Error code 12")

    monkeypatch.setattr(unet_training, "diffusion_training_loss", no_memory)
    with pytest.raises(OutOfMemory, match=r"out of memory: at train\.batch_size=4, lower train\.batch_size"):
        run_train(tmp_path, shards, tiny_base)


def test_changed_training_code_retrains_instead_of_resuming(tmp_path, tiny_shards, tiny_base, monkeypatch):
    shards, params = tiny_shards
    before = train_module.fingerprint(params, shards, tiny_base, 1)
    monkeypatch.setattr(pipeline.training.resume, "code_digest", lambda module: "a changed loss, say")
    assert train_module.fingerprint(params, shards, tiny_base, 1) != before


def test_checkpoints_resume_across_process_counts_only_at_the_same_global_batch(tiny_shards, tiny_base):
    shards, params = tiny_shards
    accumulating = tiny_params(train={"gradient_accumulation": 2})
    two_processes = train_module.fingerprint(params, shards, tiny_base, 2)
    assert two_processes == train_module.fingerprint(accumulating, shards, tiny_base, 1)
    assert two_processes != train_module.fingerprint(params, shards, tiny_base, 1)


def test_sd_v1_4_layout_has_the_published_sizes():
    """At divisor 1 the SD-shaped parts are SD v1.4's: its U-Net's 859,520,964 parameters and its
    VAE's 83,653,863 (built on the meta device: no memory, no weights)."""
    from pipeline.models.sd_shape import sd_v1_4_unet, sd_v1_4_vae

    with torch.device("meta"):
        unet, vae = sd_v1_4_unet(1), sd_v1_4_vae(1)
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert unet.config.down_block_types[:3] == ("CrossAttnDownBlock2D",) * 3


def test_train_refuses_tampered_checkpoints_as_the_vocoder_does(tmp_path, tiny_shards, tiny_base):
    """A record claiming a step beyond the run (with the right fingerprint) used to skip
    training and ship its weights; a linked step folder used to be resumed from."""
    shards, _ = tiny_shards
    run_train(tmp_path, shards, tiny_base)
    last = checkpoints(tmp_path / "checkpoints")[-1]
    record = json.loads((last / "checkpoint.json").read_text())
    (last / "checkpoint.json").write_text(json.dumps({**record, "step": 1_000_000_000_000}))
    with pytest.raises(CheckpointError, match=r"step 1000000000000 is not the folder's \(6\)"):
        run_train(tmp_path, shards, tiny_base)
    (last / "checkpoint.json").write_text(json.dumps(record))
    elsewhere = tmp_path / "elsewhere"
    last.rename(elsewhere)
    last.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CheckpointError, match=r"step-000006 is a link"):
        run_train(tmp_path, shards, tiny_base)
    assert (elsewhere / "checkpoint.json").is_file()
