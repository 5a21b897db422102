"""Audio of any length (out-painting) and regions drawn again (in-painting), through
`specldm generate --seconds` and `specldm inpaint`."""

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from pipeline import cli
from pipeline.audio.spectrogram import waveform_to_log_mel
from pipeline.models.diffusion import build_vae, latent_scale
from pipeline.models.generate import generate_images, load_generator
from pipeline.models.inpaint import _draw, inpaint_log_mel, inpainter, long_latents, region_mask, windows
from pipeline.sources.synthetic import CATALOGUE, render_clip


def run_cli(*argv):
    try:
        return cli.main(list(argv))
    except SystemExit as exit:
        return exit.code


@pytest.fixture
def fast(tiny_models, tmp_path):
    """Options for a quick run of the tiny model (2 steps, 2 Griffin-Lim iterations)."""
    return ["--model", str(tiny_models["finetuned"]), "--steps", "2", "--vocoder", "griffin_lim",
            "--griffin-lim-iters", "2", "--vocoder-dir", str(tiny_models["vocoder"]),
            "--params", str(tmp_path / "none.yaml")]


def test_windows_cover_the_clip_and_follow_the_prompt_schedule():
    plan = windows(20, 8, 2, [(0.0, "rain"), (12.0, "bell")], cells_per_second=0.8)
    assert [w.start for w in plan] == [0, 8, 14]  # 8 new cells, then 6 per window
    assert [w.prompt for w in plan] == ["rain", "rain", "bell"]  # cell 14 is 17.5 s


def test_known_latents_come_back_exactly(tiny_models):
    pipe = load_generator(tiny_models["finetuned"])
    known = torch.randn(1, 4, 8, 8)
    keep = torch.zeros(8, 8, dtype=torch.bool)
    keep[:, :3] = True
    drawn = _draw(inpainter(pipe), "a spectrogram of the sound of Rain", known, keep, 2, 3.0, 0)
    assert torch.equal(drawn[..., :3], known[..., :3])
    assert not torch.allclose(drawn[..., 3:], known[..., 3:])


def test_long_latents_continue_each_window_from_the_last(tiny_models):
    pipe = load_generator(tiny_models["finetuned"])
    spec = tiny_models_spec(tiny_models)
    strip = long_latents(pipe, [(0.0, "a spectrogram of the sound of Rain")], 25.0, 2.5, spec, 2, 3.0, 0)
    assert strip.shape == (1, 4, 8, 20)  # 25 s at 8 cells per 10 s
    again = long_latents(pipe, [(0.0, "a spectrogram of the sound of Rain")], 25.0, 2.5, spec, 2, 3.0, 0)
    assert torch.equal(strip, again)  # seeded per window


def test_a_4x_autoencoder_is_drawn_in_cells_of_4_pixels(tiny_models):
    """A 3-level VAE (``model.vae_channels`` of 3) halves the image twice, not three times: the
    latents, the in-painting mask and the out-painting windows follow it."""
    pipe = load_generator(tiny_models["finetuned"])
    spec = tiny_models_spec(tiny_models)
    vae = build_vae((16, 32, 32), 1, spec.image_size).eval()
    pipe = type(pipe)(**(pipe.components | {"vae": vae}))
    assert latent_scale(pipe.vae) == pipe.vae_scale_factor == 4
    known = torch.randn(1, 4, 16, 16)
    keep = torch.zeros(16, 16, dtype=torch.bool)
    keep[:, :5] = True
    drawn = _draw(inpainter(pipe), "a spectrogram of the sound of Rain", known, keep, 2, 3.0, 0)
    assert drawn.shape == known.shape and torch.equal(drawn[..., :5], known[..., :5])
    strip = long_latents(pipe, [(0.0, "a spectrogram of the sound of Rain")], 25.0, 2.5, spec, 2, 3.0, 0)
    assert strip.shape == (1, 4, 16, 40)  # 25 s at 16 cells per 10 s
    images = generate_images(pipe, ["a spectrogram of the sound of Rain"], [0], 64, 400, 2, 3.0)
    assert images.shape == (1, 64, 400)


def tiny_models_spec(tiny_models):
    from pipeline.models.diffusion import read_model_spec

    return read_model_spec(tiny_models["finetuned"])


@pytest.mark.parametrize("seconds, frames, width", [(25, 400_000, 160), (23.3, 372_800, 152)])
def test_generate_makes_one_long_clip_of_the_exact_length(tmp_path, fast, capsys, seconds, frames, width):
    out = tmp_path / "long.wav"
    assert run_cli("generate", "Rain", "--seconds", str(seconds), "--prompt-at", "12:Church bell",
                   "--out", str(out), *fast) == 0, capsys.readouterr().err
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (16_000, 1, frames)
    assert Image.open(out.with_suffix(".png")).size == (width, 64)  # 6.4 px per second, whole latent cells
    printed = capsys.readouterr().out
    assert "'a spectrogram of the sound of Rain' from 0 s then 'a spectrogram of the sound of Church bell' " \
           "from 12 s" in printed


def tone(path, seconds=10.0, rate=16_000, channels=1):
    clip = render_clip(next(c for c in CATALOGUE if c.name == "Dial tone"), np.random.default_rng(0), rate, seconds)
    audio = np.repeat(clip[:, None], channels, axis=1) * 0.5
    sf.write(path, audio, rate, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def test_inpaint_keeps_the_audio_outside_a_time_region(tmp_path, fast, capsys):
    source = tone(tmp_path / "in.wav")
    out = tmp_path / "out.wav"
    assert run_cli("inpaint", str(tmp_path / "in.wav"), "White noise", "--start", "3", "--end", "6",
                   "--out", str(out), *fast) == 0, capsys.readouterr().err
    audio, rate = sf.read(out, dtype="float32")
    assert rate == 16_000 and len(audio) == len(source)
    assert np.array_equal(audio[:3 * rate], source[:3 * rate]) and np.array_equal(audio[6 * rate:], source[6 * rate:])
    assert not np.allclose(audio[4 * rate:5 * rate], source[4 * rate:5 * rate], atol=1e-2)
    assert "3-6 s of" in capsys.readouterr().out


def test_inpaint_keeps_the_spectrogram_outside_a_band(tiny_models):
    pipe = load_generator(tiny_models["finetuned"])
    spec = tiny_models_spec(tiny_models)
    clip = render_clip(next(c for c in CATALOGUE if c.name == "Dial tone"), np.random.default_rng(0),
                       spec.sample_rate, 10.0)
    log_mel = waveform_to_log_mel(torch.from_numpy(clip), spec)
    mask = region_mask(log_mel.shape[-1], 2.0, 7.0, 1000.0, 3000.0, spec)
    redrawn = inpaint_log_mel(pipe, log_mel, mask, "a spectrogram of the sound of White noise", spec, 2, 3.0, 0)
    assert torch.equal(redrawn[~torch.from_numpy(mask)], log_mel[~torch.from_numpy(mask)])
    assert not torch.allclose(redrawn[torch.from_numpy(mask)], log_mel[torch.from_numpy(mask)])
    rows = mask.any(axis=1)
    assert 0 < rows.sum() < spec.n_mels and mask[:, mask.any(axis=0)].all(axis=1).sum() == rows.sum()


def test_inpaint_takes_any_rate_and_channel_count(tmp_path, fast, capsys):
    tone(tmp_path / "in.wav", seconds=4.0, rate=44_100, channels=2)
    out = tmp_path / "out.wav"
    assert run_cli("inpaint", str(tmp_path / "in.wav"), "Rain", "--start", "1", "--end", "2",
                   "--low-hz", "500", "--high-hz", "4000", "--out", str(out), *fast) == 0, capsys.readouterr().err
    info = sf.info(out)
    assert (info.samplerate, info.channels) == (16_000, 1) and abs(info.frames - 64_000) <= 1250


@pytest.mark.parametrize("region, message", [
    (["--start", "8", "--end", "12"], "the region 8-12 s must satisfy 0 <= start < end <= 10.00 s"),
    (["--start", "3", "--end", "3"], "the region 3-3 s must satisfy"),
    (["--start", "1", "--end", "2", "--high-hz", "9000"], "the band 0-9000 Hz must lie within 0-8000 Hz (Nyquist)"),
    (["--start", "1", "--end", "2", "--low-hz", "3000", "--high-hz", "2000"], "the band 3000-2000 Hz is empty"),
])
def test_inpaint_errors_are_one_line(tmp_path, fast, capsys, region, message):
    tone(tmp_path / "in.wav")
    assert run_cli("inpaint", str(tmp_path / "in.wav"), "Rain", *region, "--out", str(tmp_path / "o.wav"), *fast) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--seconds", "25", "--prompt-at", "30:Church bell"], "--prompt-at 30 lies beyond the clip's 25 s"),
    (["--seconds", "25", "--prompt-at", "Church bell"], "is not SECONDS:PROMPT"),
    (["--seconds", "25", "--overlap", "10"], "--overlap 10 must be above 0 and below one window (10 s)"),
])
def test_long_generate_errors(tmp_path, fast, capsys, argv, message):
    assert run_cli("generate", "Rain", *argv, "--out", str(tmp_path / "o.wav"), *fast) == 2
    assert message in capsys.readouterr().err


def test_inpaint_of_an_unreadable_file_is_one_line(tmp_path, fast, capsys):
    (tmp_path / "in.wav").write_bytes(b"RIFF nonsense")
    assert run_cli("inpaint", str(tmp_path / "in.wav"), "Rain", "--start", "0", "--end", "1",
                   "--out", str(tmp_path / "o.wav"), *fast) == 2
    assert "soundfile cannot read it" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--seconds", "1e6"], "argument --seconds: 1e6 is above 600"),
    (["--seconds", "3600"], "argument --seconds: 3600 is above 600"),
    (["--seed", str(2**70)], f"argument --seed: {2**70} is above {2**63 - 1}"),
    (["--seed", "-1"], "argument --seed: -1 is below 0"),
    (["--width", "400", "--prompt-at", "5:Church bell"], "--prompt-at out-paints, so it needs --seconds"),
    (["--out", "/proc/specldm.wav"], "--out /proc/specldm.wav: cannot write /proc/specldm.wav"),
])
def test_generate_refuses_what_would_fail_late(tmp_path, fast, capsys, argv, message):
    """Each used to run minutes of diffusion first, or ran out of memory, or was ignored."""
    out = [] if "--out" in argv else ["--out", str(tmp_path / "o.wav")]
    assert run_cli("generate", "Rain", *argv, *out, *fast) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_generate_refuses_a_directory_as_out(tmp_path, fast, capsys):
    (tmp_path / "taken.wav").mkdir()
    assert run_cli("generate", "Rain", "--out", str(tmp_path / "taken.wav"), *fast) == 2
    assert f"{tmp_path / 'taken.wav'} is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("record", ["{not json", '{"finetuned": {"guidance_scale": NaN}}',
                                    '{"finetuned": {"guidance_scale": "x"}}', '{"finetuned": 3}', "[1, 2]"])
def test_a_broken_guidance_file_is_one_line(tmp_path, tiny_models, capsys, monkeypatch, record):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "finetuned").symlink_to(tiny_models["finetuned"])
    (tmp_path / "guidance.json").write_text(record)
    assert run_cli("generate", "Rain", "--guidance-file", "guidance.json", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert "--guidance-file guidance.json: not the sample stage's record" in err and "Traceback" not in err


def test_inpaint_refuses_its_input_as_out_a_directory_and_an_hour(tmp_path, fast, capsys):
    tone(tmp_path / "in.wav")
    before = (tmp_path / "in.wav").read_bytes()
    region = ["--start", "1", "--end", "2"]
    assert run_cli("inpaint", str(tmp_path / "in.wav"), "Rain", *region, "--out", str(tmp_path / "in.wav"), *fast) == 2
    assert "is the input; write the result to another file" in capsys.readouterr().err
    assert (tmp_path / "in.wav").read_bytes() == before
    assert run_cli("inpaint", str(tmp_path), "Rain", *region, "--out", str(tmp_path / "o.wav"), *fast) == 2
    assert f"{tmp_path} is a directory; give one audio file" in capsys.readouterr().err
    sf.write(tmp_path / "hour.wav", np.zeros(3600 * 8000, dtype=np.int16), 8000, subtype="PCM_16")
    assert run_cli("inpaint", str(tmp_path / "hour.wav"), "Rain", *region, "--out", str(tmp_path / "o.wav"),
                   *fast) == 2
    assert "3600 s is longer than the 120 s inpaint takes at once" in capsys.readouterr().err


def test_cli_prompts_are_the_training_captions(ontology):
    """`specldm generate Rain` ignored subset.verbose_captions, so with it on the prompt was
    not a caption the model had seen."""
    from pipeline.params import SubsetParams

    class_id = ontology.resolve("Dial tone")
    for verbose in (False, True):
        subset = SubsetParams(verbose_captions=verbose)
        expected = ontology.caption(class_id, subset.caption_template, verbose)
        assert cli.resolve_prompt("Dial tone", subset) == expected
    assert "a kind of" in cli.resolve_prompt("Dial tone", SubsetParams(verbose_captions=True))
    assert cli.resolve_prompt("a mel spectrogram of rain", SubsetParams()) == "a mel spectrogram of rain"
