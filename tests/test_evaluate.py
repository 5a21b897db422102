import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from pipeline import cli
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey, waveform_to_log_mel
from pipeline.models.evaluator import Evaluator, frechet_distance
from pipeline.models.generate import SCHEDULERS, load_generator
from pipeline.models.vocoder import VOCODERS
from pipeline.params import SCHEDULER_NAMES
from pipeline.sources.synthetic import CATALOGUE, render_clip
from pipeline.stages.evaluate import EvaluatorExtractor, evaluate, folder_features, kernel_distance
from pipeline.stages.sample import sample

from conftest import tiny_audio


def class_images(name: str, count: int, spec: SpectrogramSpec, seed: int) -> np.ndarray:
    cls = next(c for c in CATALOGUE if c.name == name)
    clips = np.stack([render_clip(cls, np.random.default_rng((seed, k)), spec.sample_rate,
                                  spec.clip_seconds) for k in range(count)])
    return log_mel_to_grey(waveform_to_log_mel(torch.from_numpy(clips), spec), spec, 64, 64).numpy()


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, grey in enumerate(images):
        Image.fromarray(grey).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def extractor(tiny_models):
    return EvaluatorExtractor(Evaluator.load(tiny_models["evaluator"]))


@pytest.fixture(scope="module")
def feature_sets(tmp_path_factory, extractor):
    spec = extractor.evaluator.spec
    root = tmp_path_factory.mktemp("fid")
    sets = {
        "dial": class_images("Dial tone", 24, spec, 1),
        "dial_again": class_images("Dial tone", 24, spec, 2),
        "noise": class_images("White noise", 24, spec, 1),
    }
    return {name: folder_features(write_folder(root / name, images), extractor, 8)
            for name, images in sets.items()}


def test_fid_of_a_set_with_itself_is_zero_and_grows_for_another_class(feature_sets):
    dial, again, noise = feature_sets["dial"], feature_sets["dial_again"], feature_sets["noise"]
    assert abs(frechet_distance(dial, dial)) < 1e-3
    assert frechet_distance(dial, noise) > 1.0
    assert frechet_distance(dial, noise) > 5 * frechet_distance(dial, again)


def test_kid_is_the_same_on_the_same_features(feature_sets):
    np.random.seed(1)
    first = kernel_distance(feature_sets["dial"], feature_sets["noise"])
    np.random.rand(5)  # whatever else drew from numpy's global state in between
    assert kernel_distance(feature_sets["dial"], feature_sets["noise"]) == first


def test_kid_is_near_zero_within_a_class_and_larger_across(feature_sets):
    within = kernel_distance(feature_sets["dial"], feature_sets["dial_again"])
    across = kernel_distance(feature_sets["dial"], feature_sets["noise"])
    assert abs(within) < across and across > 0


def test_scheduler_names_match_the_params_choices(tiny_base):
    assert set(SCHEDULERS) == set(SCHEDULER_NAMES)
    assert type(load_generator(tiny_base, "ddim").scheduler).__name__ == "DDIMScheduler"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_shards, tiny_models):
    shards, params = tiny_shards
    root = tmp_path_factory.mktemp("evaluated")
    models = {"pretrained": tiny_models["pretrained"], "finetuned": tiny_models["finetuned"]}
    guidance = sample(params, shards, root / "samples", models, tiny_models["checkpoints"],
                      tiny_models["evaluator"], root / "metrics" / "guidance.json", tiny_models["vocoder"],
                      root / "metrics" / "longform.png")
    _, index, raw = tiny_audio(shards)
    metrics = evaluate(params, shards, root / "samples", tiny_models["evaluator"], root / "metrics",
                       tiny_models["finetuned"], tiny_models["vocoder"], index, raw)
    return root, params, metrics, guidance


def test_sample_writes_pngs_wavs_and_prompts(evaluated):
    root, params, _, _ = evaluated
    for model in ("pretrained", "finetuned"):
        for resolution in ("64x64", "64x400"):
            folder = root / "samples" / model / resolution
            prompts = pd.read_csv(folder / "prompts.csv")
            assert len(prompts) == 4 * params.sample.per_class and prompts.seed.is_unique
            image = Image.open(folder / prompts.file.iloc[0])
            assert image.size == tuple(int(x) for x in reversed(resolution.split("x")))
            wavs = prompts.wav.dropna()
            assert len(wavs) == 4  # one per class
            info = sf.info(folder / wavs.iloc[0])
            assert info.samplerate == 16_000 and info.channels == 1
    checkpoints = sorted(p.name for p in (root / "samples" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004", "step-000006"]


def test_the_guidance_scale_is_chosen_on_the_validation_split(evaluated, tmp_path, tiny_shards, tiny_models):
    root, params, _, guidance = evaluated
    assert len(params.sample.guidance_scales) > 1  # the tiny profile chooses, as the default does
    assert json.loads((root / "metrics" / "guidance.json").read_text()) == guidance
    for model in ("pretrained", "finetuned"):
        candidates = guidance[model]["candidates"]
        assert set(candidates) == {str(g) for g in params.sample.guidance_scales}
        chosen = guidance[model]["guidance_scale"]
        assert candidates[str(chosen)]["fd_val"] == min(c["fd_val"] for c in candidates.values())
        assert set(pd.read_csv(root / "samples" / model / "64x64" / "prompts.csv").guidance) == {chosen}
    # the test split plays no part: without it the stage chooses the same
    shards, _ = tiny_shards
    shutil.copytree(shards, tmp_path / "shards", ignore=shutil.ignore_patterns("test"))
    models = {"pretrained": tiny_models["pretrained"], "finetuned": tiny_models["finetuned"]}
    params = dataclasses.replace(params, sample=dataclasses.replace(params.sample, resolutions=("64x64",),
                                                                     checkpoint_per_class=0))
    again = sample(params, tmp_path / "shards", tmp_path / "samples", models, tiny_models["checkpoints"],
                   tiny_models["evaluator"], tmp_path / "guidance.json", tiny_models["vocoder"],
                   tmp_path / "longform.png")
    assert again == guidance


def test_metrics_are_keyed_as_designed(evaluated):
    root, _, metrics, _ = evaluated
    scores = ("fid", "kid", "fd_evaluator", "accuracy", "fd_audio", "accuracy_audio")
    scores += tuple(f"vocoder.{v}.{name}" for v in VOCODERS for name in ("fd_audio", "accuracy_audio"))
    expected = {f"{name}.{model}.{resolution}" for name in scores
                for model in ("pretrained", "finetuned", "real") for resolution in ("64x64", "64x400")
                if model != "real" or name == "accuracy"}
    expected |= {"reconstruction.vae.accuracy", "reconstruction.vae.mae_db"}
    expected |= {f"vocoder.{v}.{name}" for v in VOCODERS
                 for name in ("mel_l1_db", "mrstft", "accuracy", "real_time_factor")}
    expected |= {"longform.accuracy", "longform.seam_ratio", "inpaint.accuracy", "inpaint.outside_mae_db"}
    assert set(metrics) == expected
    assert json.loads((root / "metrics" / "metrics.json").read_text()) == metrics
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected if "accuracy" in k)
    # the sample stage's WAVs are scored under the old names too: they are one vocoder's audio
    written = pd.read_csv(root / "samples" / "finetuned" / "64x64" / "prompts.csv").vocoder.iloc[0]
    assert metrics["accuracy_audio.finetuned.64x64"] == metrics[f"vocoder.{written}.accuracy_audio.finetuned.64x64"]
    extractor = json.loads((root / "metrics" / "feature_extractor.json").read_text())
    assert extractor["fid_kid"].startswith("specldm evaluator")  # no Inception weights offline
    table = (root / "metrics" / "table.md").read_text()
    assert "| finetuned | 64 x 400 |" in table and "| real test clips (ceiling) | 64 x 400 |" in table
    assert metrics["reconstruction.vae.mae_db"] > 0
    assert metrics["inpaint.outside_mae_db"] == 0.0  # composited: outside the region, the input's own mel
    assert metrics["longform.seam_ratio"] > 0
    long = Image.open(root / "metrics" / "longform.png")
    assert long.size == (8 * 48, 64)  # 60 s at 6.4 px per second, in whole latent cells
    curve = pd.read_csv(root / "metrics" / "fid_by_checkpoint.csv")
    assert list(curve.step) == [2, 4, 6] and curve.fid.notna().all()
    assert (root / "metrics" / "grids" / "finetuned_64x400.png").exists()


def test_accuracy_counts_what_the_evaluator_hears(tmp_path, tiny_shards, tiny_models):
    from pipeline.audio.shards import read_split
    from pipeline.stages.evaluate import References, score_set

    shards, _ = tiny_shards
    evaluator = Evaluator.load(tiny_models["evaluator"])
    spec = evaluator.spec
    test = read_split("test", ["log_mel", "target", "is_mixture"], shards)
    keep = ~np.asarray(test["is_mixture"], dtype=bool)
    mels, targets = test["log_mel"][keep], [t for t, k in zip(test["target"], keep) if k]
    folder = write_folder(tmp_path / "real", log_mel_to_grey(torch.from_numpy(mels), spec, 64, 64).numpy())
    truth = pd.DataFrame({"file": [f"{i:03d}.png" for i in range(len(targets))], "class_id": targets,
                          "class_name": targets})
    truth.to_csv(folder / "prompts.csv", index=False)
    extractor = EvaluatorExtractor(evaluator)
    references = References(mels, spec, 64, 64, tmp_path / "ref", extractor, 8)
    scores, per_class = score_set(folder, references, extractor, evaluator, {}, 8)
    predicted = evaluator.predict(torch.from_numpy(mels))
    expected = np.mean([evaluator.class_ids[p] == t for p, t in zip(predicted, targets)])
    assert scores["accuracy"] == pytest.approx(expected)
    rolled = np.roll(np.array(targets), 1)
    truth.assign(class_id=rolled).to_csv(folder / "prompts.csv", index=False)
    expected_rolled = np.mean([evaluator.class_ids[p] == t for p, t in zip(predicted, rolled)])
    assert score_set(folder, references, extractor, evaluator, {}, 8)[0]["accuracy"] == pytest.approx(expected_rolled)
    assert abs(scores["fd_evaluator"]) < 1e-3  # real clips against themselves


def test_what_users_hear_scores_as_the_image_when_the_audio_is_real(tmp_path, tiny_models):
    """The real clips' own audio, as samples: the audio scores equal the image scores (the
    ceiling); the same audio under shuffled prompts scores at chance."""
    from pipeline.models.evaluator import train_classifier
    from pipeline.stages.evaluate import References, score_set

    spec = Evaluator.load(tiny_models["evaluator"]).spec
    names = ["Dial tone", "Ringtone", "Telephone dialing, DTMF", "White noise"]
    by_name = {c.name: c for c in CATALOGUE}

    def clips(seed: int, count: int) -> list[np.ndarray]:
        return [render_clip(by_name[name], np.random.default_rng((seed, c, k)), spec.sample_rate, spec.clip_seconds)
                for c, name in enumerate(names) for k in range(count)]

    def log_mels(audio: list[np.ndarray]) -> np.ndarray:
        return waveform_to_log_mel(torch.from_numpy(np.stack(audio)), spec).numpy()

    # an evaluator that knows these four classes well, trained on other clips of them
    model = train_classifier(log_mels(clips(1, 8)), np.repeat(np.arange(4), 8), 4, spec, 20, 8, 2e-3, 0)
    evaluator = Evaluator(model, names, names, spec)
    audio = clips(2, 6)
    mels = log_mels(audio)
    folder, rows = tmp_path / "heard", []
    folder.mkdir()
    for i, (wave, mel) in enumerate(zip(audio, mels)):
        Image.fromarray(log_mel_to_grey(torch.from_numpy(mel), spec, 64, 64).numpy()).save(folder / f"{i:03d}.png")
        sf.write(folder / f"{i:03d}.wav", wave, spec.sample_rate, subtype="PCM_16")
        name = names[i // 6]
        rows.append({"file": f"{i:03d}.png", "wav": f"{i:03d}.wav", "class_id": name, "class_name": name})
    prompts = pd.DataFrame(rows)
    prompts.to_csv(folder / "prompts.csv", index=False)
    extractor = EvaluatorExtractor(evaluator)
    references = References(mels, spec, 64, 64, tmp_path / "ref", extractor, 8)
    written = {"griffin_lim": None}  # prompts.csv names no vocoder: its WAVs are read, not vocoded
    scores, _ = score_set(folder, references, extractor, evaluator, written, 8)
    assert scores["accuracy"] >= 0.75  # the ceiling: the evaluator hears these clips' classes
    assert scores["accuracy_audio"] == pytest.approx(scores["accuracy"], abs=1 / len(rows))
    quieter = frechet_distance(evaluator.embed(mels), evaluator.embed(mels - 30))
    assert scores["fd_audio"] < 0.05 * quieter  # the same audio, not merely audio
    shuffled = prompts.assign(class_id=np.random.default_rng(0).permutation(prompts.class_id))
    shuffled.to_csv(folder / "prompts.csv", index=False)
    chance = score_set(folder, references, extractor, evaluator, written, 8)[0]
    assert chance["accuracy_audio"] < 0.5 and chance["accuracy"] < 0.5  # 4 classes: chance is 0.25


def run_cli(*argv):
    """The exit status, as the shell sees it (argparse exits on a bad option)."""
    try:
        return cli.main(["generate", *argv])
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("vocoder", ["griffin_lim", "neural", "auto"])
def test_generate_writes_wav_of_the_requested_length(tmp_path, tiny_models, capsys, vocoder):
    out = tmp_path / "bell.wav"
    code = run_cli("Church bell", "--model", str(tiny_models["finetuned"]), "--out", str(out),
                   "--seconds", "1.5", "--steps", "2", "--griffin-lim-iters", "2",
                   "--vocoder", vocoder, "--vocoder-dir", str(tiny_models["vocoder"]),
                   "--params", str(tmp_path / "none.yaml"))
    assert code == 0, capsys.readouterr().err
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (16_000, 1, 24_000)
    audio, _ = sf.read(out)
    assert np.abs(audio).max() > 0  # a sound, not silence
    assert Image.open(out.with_suffix(".png")).size[1] == 64  # the model's training height
    printed = capsys.readouterr().out
    assert "a spectrogram of the sound of Church bell" in printed
    assert f"{vocoder} vocoder" in printed or vocoder == "auto"


def test_generate_takes_the_guidance_the_sample_stage_chose(tmp_path, tiny_models, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "finetuned").symlink_to(tiny_models["finetuned"])
    fast = ["--seconds", "1.5", "--steps", "1", "--vocoder", "griffin_lim", "--griffin-lim-iters", "1"]
    assert run_cli("Church bell", *fast) == 0
    assert "guidance 4 (sample.guidance_scale)" in capsys.readouterr().out  # no choice recorded yet
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "guidance.json").write_text('{"finetuned": {"guidance_scale": 9.0}}')
    assert run_cli("Church bell", *fast) == 0
    assert "guidance 9 (chosen on the validation clips" in capsys.readouterr().out
    assert run_cli("Church bell", *fast, "--guidance", "2") == 0
    assert "guidance 2 (--guidance)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["Church bell", "--model", "/nonexistent/model"], "no model at /nonexistent/model"),
    (["Church bel"], "did you mean 'Church bell'"),
    (["Church bell", "--height", "60"], "argument --height: 60 is not a multiple of 8"),
    (["Church bell", "--width", "0"], "argument --width: 0 is below 8"),
    (["Church bell", "--seconds", "-1"], "argument --seconds: -1 must be a finite number > 0"),
    (["Church bell", "--seconds", "nan"], "argument --seconds: nan must be a finite number > 0"),
    (["Church bell", "--steps", "0"], "argument --steps: 0 is below 1"),
    (["Church bell", "--steps", "-3"], "argument --steps: -3 is below 1"),
    (["Church bell", "--guidance", "inf"], "argument --guidance: inf must be a finite number >= 1"),
    (["Church bell", "--guidance", "nan"], "argument --guidance: nan must be a finite number >= 1"),
    (["Church bell", "--guidance", "-5"], "argument --guidance: -5 must be a finite number >= 1"),
    (["Church bell", "--griffin-lim-iters", "0"], "argument --griffin-lim-iters: 0 is below 1"),
    (["Church bell", "--out", "x.png"], "argument --out: 'x.png' must end in .wav"),
    (["Church bell", "--vocoder", "hifigan"], "argument --vocoder: invalid choice: 'hifigan'"),
    (["Church bell", "--vocoder", "neural", "--vocoder-dir", "/nonexistent/vocoder"],
     "no neural vocoder at /nonexistent/vocoder; run `dvc repro train_vocoder`"),
])
def test_generate_errors(tiny_models, capsys, argv, message):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_models["finetuned"])]
    fast = [] if "--steps" in argv else ["--steps", "1"]
    assert run_cli(*argv, *fast) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
