import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image

from pipeline import cli
from pipeline.audio.spectrogram import SpectrogramSpec, log_mel_to_grey, waveform_to_log_mel
from pipeline.models.evaluator import Evaluator
from pipeline.models.generate import SCHEDULERS, load_generator
from pipeline.params import SCHEDULER_NAMES
from pipeline.sources.synthetic import CATALOGUE, render_clip
from pipeline.stages.evaluate import EvaluatorExtractor, evaluate, fid_from_features, folder_features, kernel_distance
from pipeline.stages.sample import sample


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
    assert abs(fid_from_features(dial, dial)) < 1e-3
    assert fid_from_features(dial, noise) > 1.0
    assert fid_from_features(dial, noise) > 5 * fid_from_features(dial, again)


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
    sample(params, shards, root / "samples", models, tiny_models["checkpoints"])
    metrics = evaluate(params, shards, root / "samples", tiny_models["evaluator"], root / "metrics")
    return root, params, metrics


def test_sample_writes_pngs_wavs_and_prompts(evaluated):
    root, params, _ = evaluated
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


def test_metrics_are_keyed_as_designed(evaluated):
    root, _, metrics = evaluated
    expected = {f"{name}.{model}.{resolution}" for name in ("fid", "kid", "fd_evaluator", "accuracy")
                for model in ("pretrained", "finetuned") for resolution in ("64x64", "64x400")}
    assert set(metrics) == expected
    assert json.loads((root / "metrics" / "metrics.json").read_text()) == metrics
    assert all(isinstance(v, float) and np.isfinite(v) for v in metrics.values())
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected if k.startswith("accuracy"))
    extractor = json.loads((root / "metrics" / "feature_extractor.json").read_text())
    assert extractor["fid_kid"].startswith("specldm evaluator")  # no Inception weights offline
    table = (root / "metrics" / "table.md").read_text()
    assert "| finetuned | 64 x 400 |" in table
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
    scores, per_class = score_set(folder, references, extractor, evaluator, 8)
    predicted = evaluator.predict(torch.from_numpy(mels))
    expected = np.mean([evaluator.class_ids[p] == t for p, t in zip(predicted, targets)])
    assert scores["accuracy"] == pytest.approx(expected)
    rolled = np.roll(np.array(targets), 1)
    truth.assign(class_id=rolled).to_csv(folder / "prompts.csv", index=False)
    expected_rolled = np.mean([evaluator.class_ids[p] == t for p, t in zip(predicted, rolled)])
    assert score_set(folder, references, extractor, evaluator, 8)[0]["accuracy"] == pytest.approx(expected_rolled)
    assert abs(scores["fd_evaluator"]) < 1e-3  # real clips against themselves


def run_cli(*argv):
    """The exit status, as the shell sees it (argparse exits on a bad option)."""
    try:
        return cli.main(["generate", *argv])
    except SystemExit as exit:
        return exit.code


def test_generate_writes_wav_of_the_requested_length(tmp_path, tiny_models, capsys):
    out = tmp_path / "bell.wav"
    code = run_cli("Church bell", "--model", str(tiny_models["finetuned"]), "--out", str(out),
                   "--seconds", "1.5", "--steps", "2", "--griffin-lim-iters", "2",
                   "--params", str(tmp_path / "none.yaml"))
    assert code == 0, capsys.readouterr().err
    info = sf.info(out)
    assert (info.samplerate, info.channels, info.frames) == (16_000, 1, 24_000)
    assert Image.open(out.with_suffix(".png")).size[1] == 64  # the model's training height
    assert "a spectrogram of the sound of Church bell" in capsys.readouterr().out


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
])
def test_generate_errors(tiny_models, capsys, argv, message):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_models["finetuned"])]
    fast = [] if "--steps" in argv else ["--steps", "1"]
    assert run_cli(*argv, *fast) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
