"""The training library the stages share: fingerprints, resumable runs, EMA, the VAE step."""

import math

import numpy as np
import pytest
import torch

from pipeline.audio.shards import iter_batches, read_split
from pipeline.models.diffusion import build_vae, uint8_to_pm1
from pipeline.training.ema import EMA, with_ema
from pipeline.training.latents import SplitImages, encode_training_set
from pipeline.training.resume import ResumableRun, TrainingError, run_fingerprint
from pipeline.training.rows import RowFile
from pipeline.training.vae import scale_to_unit_variance, vae_crops, vae_mae_db, vae_step

SETTINGS = {"steps": 10, "learning_rate": 0.1, "checkpoint_every": 5, "keep_checkpoints": 2, "log_every": 1}


def test_the_fingerprint_ignores_cadence_and_follows_settings_data_and_code(monkeypatch):
    base = run_fingerprint(SETTINGS, "pipeline.stages.train_vocoder", [b"audio"])
    cadence = SETTINGS | {"checkpoint_every": 7, "keep_checkpoints": 9, "log_every": 3}
    assert run_fingerprint(cadence, "pipeline.stages.train_vocoder", [b"audio"]) == base
    assert run_fingerprint(SETTINGS | {"learning_rate": 0.2}, "pipeline.stages.train_vocoder", [b"audio"]) != base
    assert run_fingerprint(SETTINGS, "pipeline.stages.train_vocoder", [b"other audio"]) != base
    assert run_fingerprint(SETTINGS, "pipeline.stages.train", [b"audio"]) != base


def model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_a_run_checkpoints_on_cadence_and_the_next_run_resumes_there(tmp_path):
    run = ResumableRun(tmp_path, "f" * 16, steps=5, every=2, keep=2)
    assert run.resumed is None and run.start_step == 0
    net, saved_at = model(), []
    for step in range(5):
        run.record(step + 1, 1.0 / (step + 1), "advice")
        run.progress.history.append({"step": step + 1})
        if run.due():
            saved_at.append(step + 1)
            run.save({"weights": net.state_dict()})
    assert saved_at == [2, 4, 5]  # every 2 steps, and the last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000004", "step-000005"]  # keep=2

    again = ResumableRun(tmp_path, "f" * 16, steps=8, every=2, keep=2)
    assert again.start_step == 5 and again.progress.loss == pytest.approx(0.2)
    assert [row["step"] for row in again.progress.history] == [1, 2, 3, 4, 5]
    restored = torch.nn.Linear(3, 2)
    again.restore(lambda state: restored.load_state_dict(state["weights"]))
    assert torch.equal(restored.weight, net.weight)


def test_a_run_of_another_fingerprint_starts_afresh(tmp_path):
    run = ResumableRun(tmp_path, "a" * 16, steps=2, every=1, keep=2)
    run.record(1, 0.5, "advice")
    run.save({"weights": model().state_dict()})
    assert ResumableRun(tmp_path, "b" * 16, steps=2, every=1, keep=2).resumed is None


def test_a_loss_that_is_not_finite_stops_the_run_naming_the_last_checkpoint(tmp_path):
    run = ResumableRun(tmp_path, "c" * 16, steps=4, every=1, keep=3)
    with pytest.raises(TrainingError, match="loss became nan at step 1; stopped.*none.*lower the rate"):
        run.record(1, math.nan, "lower the rate")
    run.record(1, 0.5, "advice")
    run.save({"weights": model().state_dict()})
    with pytest.raises(TrainingError, match="loss became inf at step 2.*step-000001"):
        run.record(2, math.inf, "advice")


def test_the_ema_warms_up_and_sampling_gets_a_copy():
    net = model()
    ema = EMA(net, decay=0.999)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net, step=0)  # decay min(0.999, 1/10): the average moves 90% of the way
    averaged = with_ema(net, ema)
    assert torch.allclose(averaged.weight, start + 0.9)
    assert torch.equal(net.weight, start + 1.0)  # the trained weights are left as they are
    assert with_ema(net, None) is net


def test_vae_crops_are_squares_of_the_images():
    images = np.arange(2 * 4 * 6, dtype=np.uint8).reshape(2, 4, 6)
    crops = vae_crops(images, 3, np.random.default_rng(0))
    assert crops.shape == (2, 3, 3)
    for image, crop in zip(images, crops):
        top, left = np.argwhere(image == crop[0, 0])[0]
        assert np.array_equal(image[top:top + 3, left:left + 3], crop)
    assert vae_crops(images, 64, np.random.default_rng(0)).shape == (2, 4, 4)  # no larger than the image


def test_the_vae_step_learns_and_the_scaling_gives_unit_variance():
    torch.manual_seed(0)
    vae = build_vae((8, 8, 8, 8), 1, 32)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3)
    ramps = np.linspace(0, 255, 32)[None, None, :] * np.linspace(0.2, 1.0, 4)[:, None, None]
    images = uint8_to_pm1(np.broadcast_to(ramps, (4, 32, 32)).astype(np.uint8))
    generator = torch.Generator().manual_seed(0)
    losses = [vae_step(vae, optimizer, images, 1e-6, generator).item() for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    latents = torch.randn(64, 4, 4, 4) * 3.0
    factor = scale_to_unit_variance(vae, latents)
    assert vae.config.scaling_factor == factor
    assert (latents * factor).std().item() == pytest.approx(1.0)


def test_a_row_file_gives_back_the_rows_asked_for():
    rows = torch.randn(10, 4, 2, 2)
    stored = RowFile((4, 2, 2))
    stored.append(rows[:6])
    stored.append(rows[6:])
    assert len(stored) == 10
    assert torch.equal(stored[[7, 0, 7, 3]], rows[[7, 0, 7, 3]])
    assert torch.equal(stored[np.arange(10)], rows)


@pytest.mark.slow
def test_split_images_are_the_split_row_by_row(tiny_shards):
    shards, _ = tiny_shards
    whole = read_split("train", ["image"], shards)["image"]
    images = SplitImages("train", shards, cached_groups=1)
    assert len(images) == len(whole)
    order = np.random.default_rng(0).permutation(len(whole))
    assert np.array_equal(images[order], whole[order])


def test_the_training_set_holds_each_caption_once_and_a_geometry_per_micro_batch(tiny_shards, tiny_base):
    from pipeline.audio.spectrogram import log_mel_to_grey
    from pipeline.config.train import TrainParams
    from pipeline.models.diffusion import caption_embeddings, load_pipeline

    shards, params = tiny_shards
    pipe = load_pipeline(tiny_base)
    size = params.spec.image_size
    data = encode_training_set(pipe, shards, "cpu", vae_tuned=False, resolutions=(f"{size}x{size}", "64x400"))
    split = read_split("train", ["caption", "image", "log_mel"], shards)
    captions = split["caption"]
    states = caption_embeddings(pipe, captions)
    assert len(data.caption_states) == len(set(captions) | {""}) < len(captions)
    for row, caption in enumerate(captions):
        assert torch.equal(data.caption_states[data.caption_index[row]], states[caption])

    # the training size is the rendered images; another is drawn from the log-mels as evaluate draws it
    rows = [0, len(captions) - 1]
    with torch.no_grad():
        rendered = pipe.vae.encode(uint8_to_pm1(split["image"][rows])).latent_dist.mean
        redrawn = log_mel_to_grey(torch.from_numpy(split["log_mel"][rows]), params.spec, 64, 400)
        wide = pipe.vae.encode(uint8_to_pm1(redrawn)).latent_dist.mean
    assert torch.allclose(data.means[0][rows], rendered, atol=1e-5)
    assert torch.allclose(data.means[1][rows], wide, atol=1e-5)

    config = TrainParams(batch_size=3, resolutions=(f"{size}x{size}", "64x400"))
    shapes = [tuple(data.micro_batch(index, config, "cpu")[0].shape) for index in range(4)]
    channels = data.means[0].shape[0]
    assert shapes == [(3, channels, size // 8, size // 8), (3, channels, 8, 50)] * 2  # in turn, one shape a batch
    again = data.micro_batch(3, config, "cpu")[0]  # what a resumed run draws
    assert torch.equal(again, data.micro_batch(3, config, "cpu")[0])


def test_the_vae_error_summed_by_batch_is_the_mean_over_the_split(tiny_shards, tiny_base):
    from pipeline.audio.spectrogram import image_to_log_mel
    from pipeline.models.diffusion import load_pipeline, reconstruct

    shards, params = tiny_shards
    vae = load_pipeline(tiny_base).vae
    whole = read_split("val", ["image", "log_mel"], shards)
    recovered = image_to_log_mel(torch.from_numpy(reconstruct(vae, whole["image"])), params.spec,
                                 n_frames=whole["log_mel"].shape[-1])
    expected = float((recovered - torch.from_numpy(whole["log_mel"])).abs().double().mean())
    # the batches reconstruct() makes of the whole split: a convolution's last bits move with the
    # batch size, and the uint8 rounding of the reconstructions shows them
    batches = iter_batches("val", ["image", "log_mel"], batch_size=32, root=shards)
    assert vae_mae_db(vae, batches, params.spec) == pytest.approx(expected, rel=1e-6)
