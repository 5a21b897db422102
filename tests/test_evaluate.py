import contextlib
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline import cli
from pipeline.evaluation.extractors import AISFX, INCEPTION
from pipeline.evaluation.scoring import evaluate
from pipeline.models.generate import SCHEDULERS, load_generator
from pipeline.models.vocoder import VOCODERS
from pipeline.params import SCHEDULER_NAMES, load
from pipeline.stages.sample import sample


def test_scheduler_names_match_the_params_choices(tiny_base):
    assert set(SCHEDULERS) == set(SCHEDULER_NAMES)
    assert type(load_generator(tiny_base, "ddim").scheduler).__name__ == "DDIMScheduler"


@pytest.fixture(scope="module")
def evaluated(reproduced_repo):
    """What ``sample`` and ``evaluate`` wrote in the tiny repository ``dvc repro`` reproduced
    (stage processes, as a user runs them): (repository, params, metrics, guidance)."""
    metrics = json.loads((reproduced_repo / "metrics" / "metrics.json").read_text())
    guidance = json.loads((reproduced_repo / "metrics" / "guidance.json").read_text())
    return reproduced_repo, load(reproduced_repo / "params.yaml"), metrics, guidance


def test_sample_writes_pngs_wavs_and_prompts(evaluated):
    root, params, _, _ = evaluated
    samples = root / "data" / "samples"
    for model in ("pretrained", "finetuned"):
        for resolution in ("64x64", "64x400"):
            folder = samples / model / resolution
            prompts = pd.read_csv(folder / "prompts.csv")
            assert len(prompts) == 4 * params.sample.per_class and prompts.seed.is_unique
            image = Image.open(folder / prompts.file.iloc[0])
            assert image.size == tuple(int(x) for x in reversed(resolution.split("x")))
            wavs = prompts.wav.dropna()
            assert len(wavs) == 4  # one per class
            info = sf.info(folder / wavs.iloc[0])
            assert info.samplerate == 16_000 and info.channels == 1
    checkpoints = sorted(p.name for p in (samples / "checkpoints").iterdir())
    assert checkpoints == ["step-000002", "step-000004", "step-000006"]
    inpainted = pd.read_csv(samples / "inpaint" / "prompts.csv")
    tensors = load_file(samples / "inpaint" / "inpainted.safetensors")
    assert len(inpainted) == len(tensors["log_mel"]) == len(tensors["mask"]) > 0
    assert (inpainted.class_id != inpainted.source_class_id).all()  # drawn for another class
    longform = pd.read_csv(samples / "longform" / "prompts.csv")
    assert not set(inpainted.seed) & set(longform.seed)  # no two sets start from the same noise


def test_the_guidance_scale_is_chosen_on_the_validation_split(evaluated, tmp_path):
    root, params, _, guidance = evaluated
    assert len(params.sample.guidance_scales) > 1  # the tiny profile chooses, as the default does
    for model in ("pretrained", "finetuned"):
        candidates = guidance[model]["candidates"]
        assert set(candidates) == {str(g) for g in params.sample.guidance_scales}
        chosen = guidance[model]["guidance_scale"]
        assert candidates[str(chosen)]["fd_val"] == min(c["fd_val"] for c in candidates.values())
        assert set(pd.read_csv(root / "data" / "samples" / model / "64x64" / "prompts.csv").guidance) == {chosen}
    # the test split plays no part: with other clips in it (the validation ones) the stage
    # chooses the same (it in-paints test clips, so it needs a test split, not its content)
    shards = root / "data" / "shards"
    shutil.copytree(shards, tmp_path / "shards", ignore=shutil.ignore_patterns("test"))
    shutil.copytree(shards / "val", tmp_path / "shards" / "test")
    params = dataclasses.replace(params, sample=dataclasses.replace(params.sample, resolutions=("64x64",),
                                                                     checkpoint_per_class=0))
    with contextlib.chdir(root):  # the repository's models, as the stage reads them
        again = sample(params, tmp_path / "shards", tmp_path / "samples", guidance_file=tmp_path / "guidance.json",
                       plot_file=tmp_path / "longform.png")
    assert again == guidance


def test_metrics_are_keyed_as_designed(evaluated):
    root, _, metrics, _ = evaluated
    sets = [f"{model}.{resolution}" for model in ("pretrained", "finetuned") for resolution in ("64x64", "64x400")]
    expected = {f"{name}.{key}" for name in ("fid", "kid", "accuracy", "accuracy_audio", "fad", "kad") for key in sets}
    expected |= {f"vocoder.{v}.{name}.{key}" for v in VOCODERS for name in ("fad", "kad", "accuracy_audio")
                 for key in sets}
    expected |= {"accuracy.real.64x64", "accuracy.real.64x400", "accuracy_audio.real", "fad.real", "kad.real"}
    expected |= {"reconstruction.vae.accuracy", "reconstruction.vae.mae_db"}
    expected |= {f"vocoder.{v}.{name}" for v in VOCODERS for name in ("mel_l1_db", "mrstft", "accuracy")}
    expected |= {"longform.accuracy", "longform.seam_ratio", "inpaint.accuracy", "inpaint.outside_mae_db"}
    assert set(metrics) == expected  # no timing among them: those are in metrics/timings/
    intervals = json.loads((root / "metrics" / "intervals.json").read_text())
    assert set(intervals) == expected
    for key, value in metrics.items():
        assert isinstance(value, float) and np.isfinite(value), key
        low, high = intervals[key]["low"], intervals[key]["high"]
        assert low <= value <= high or not np.isfinite(low), key  # NaN only where a set has one item
        if "accuracy" in key:
            assert 0.0 <= value <= 1.0
    # the sample stage's WAVs are scored under the plain names too: they are one vocoder's audio
    written = pd.read_csv(root / "data" / "samples" / "finetuned" / "64x64" / "prompts.csv").vocoder.iloc[0]
    assert metrics["accuracy_audio.finetuned.64x64"] == metrics[f"vocoder.{written}.accuracy_audio.finetuned.64x64"]
    extractor = json.loads((root / "metrics" / "feature_extractor.json").read_text())
    assert extractor["image"]["name"].startswith("Inception-v3")
    assert extractor["image"]["sha256"] == INCEPTION.sha256 and extractor["audio"]["sha256"] == AISFX.sha256
    table = (root / "metrics" / "table.md").read_text()
    assert "| finetuned | 64 x 400 |" in table and "| real test clips | 64 x 400 |" in table
    assert metrics["reconstruction.vae.mae_db"] > 0
    assert metrics["inpaint.outside_mae_db"] == 0.0  # composited: outside the region, the input's own mel
    long = Image.open(root / "metrics" / "longform.png")
    assert long.size == (8 * 48, 64)  # 60 s at 6.4 px per second, in whole latent cells
    curve = pd.read_csv(root / "metrics" / "fid_by_checkpoint.csv")
    assert list(curve.step) == [2, 4, 6] and curve.fid.notna().all() and curve.kid.notna().all()
    assert (root / "metrics" / "grids" / "finetuned_64x400.png").exists()
    timings = json.loads((root / "metrics" / "timings" / "vocoder.json").read_text())
    assert set(timings) == set(VOCODERS) and all(t["real_time_factor"] > 0 for t in timings.values())


def test_scores_do_not_depend_on_the_thread_count(evaluated, tmp_path):
    """The same samples scored with another thread count (torch and BLAS) than the stage
    process used, 1 or 2: a stand-in for another machine's kernels. Every score agrees to 1e-4
    relative (the accuracies exactly: the same predictions), but Griffin-Lim's, which stay in
    their interval."""
    from threadpoolctl import threadpool_limits

    root, params, metrics, _ = evaluated
    threads = torch.get_num_threads()  # what the stage process had: the same environment
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        with threadpool_limits(torch.get_num_threads()), contextlib.chdir(root):
            again = evaluate(params, out_dir=tmp_path / "metrics", timings_dir=tmp_path / "timings")
    finally:
        torch.set_num_threads(threads)
    assert set(again) == set(metrics)
    intervals = json.loads((root / "metrics" / "intervals.json").read_text())
    for key, value in metrics.items():
        if key.startswith("vocoder.griffin_lim."):
            # 64 Griffin-Lim iterations at momentum 0.99 amplify last-bit differences (its audio
            # moves by up to ~4% of full scale): these stay within their interval, not to 1e-4
            half_width = (intervals[key]["high"] - intervals[key]["low"]) / 2
            assert abs(again[key] - value) <= half_width or not np.isfinite(half_width), key
        else:
            assert again[key] == pytest.approx(value, rel=1e-4, abs=1e-9), key


def test_accuracy_counts_what_the_judge_hears(tmp_path, tiny_judge):
    """Real test clips' features as a set: accuracy is the judge's ceiling; under shuffled
    prompts it falls to chance."""
    from pipeline.evaluation.references import Judge

    judge = Judge.load(tiny_judge)
    features = judge.features["test.image.64x64"]
    truth = [judge.class_ids[label] for label in judge.features["test.labels"]]
    hits = judge.hits("image.64x64", features, truth)
    np.testing.assert_array_equal(hits, judge.real_hits("image.64x64", features))
    assert hits.mean() >= 0.5  # 4 classes: chance is 0.25
    rolled = judge.hits("image.64x64", features, np.roll(np.array(truth), len(truth) // 2))
    assert rolled.mean() < hits.mean()
    assert np.isnan(judge.hits("image.64x64", features[:1], ["/m/not-a-class"])).all()


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


def test_the_seed_summary_gives_mean_spread_and_targets_met_per_seed():
    from pipeline.evaluation.seeds import markdown, summarise

    def scores(finetuned_wide, seam):
        return {"accuracy.finetuned.64x400": finetuned_wide, "accuracy.real.64x400": 0.9,
                "longform.seam_ratio": seam, "kid.finetuned.64x400": 0.1}

    summary = summarise({0: scores(0.81, 1.1), 3: scores(0.63, 1.3)}, "128x128")
    assert summary["seeds"] == [0, 3]
    assert summary["scores"]["accuracy.finetuned.64x400"] == pytest.approx({"seeds": [0.81, 0.63], "mean": 0.72,
                                                                            "sd": 0.18 / 2 ** 0.5})
    assert "kid.finetuned.64x400" not in summary["scores"]  # not a headline score
    wide = summary["targets"]["fine-tuned accuracy / ceiling, 64x400"]
    assert wide["seeds"] == pytest.approx([0.9, 0.7]) and wide["met_on"] == 1 and wide["bound"] == ">= 0.8"
    seam = summary["targets"]["long-clip seam flux ratio"]
    assert seam["met_on"] == 1 and seam["bound"] == "<= 1.2"
    # a score a seed lacks is a target not met, never one met
    assert summary["targets"]["VAE reconstruction accuracy / ceiling"]["met_on"] == 0
    assert wide["score"] == pytest.approx({"key": "accuracy.finetuned.64x400", "seeds": [0.81, 0.63], "mean": 0.72,
                                           "sd": 0.18 / 2 ** 0.5})
    text = markdown(summary)
    assert "| seed 0 | seed 3 | mean ± sd |" in text
    # a target's row: its score per seed and spread, the bound, the ratio's spread, on how many seeds it holds
    assert ("| accuracy.finetuned.64x400 | 0.810 | 0.630 | 0.720 ± 0.127 | ÷ accuracy.real.64x400 >= 0.8 "
            "| 0.800 ± 0.141 | 1 of 2 |") in text
    assert "| longform.seam_ratio | 1.100 | 1.300 | 1.200 ± 0.141 | <= 1.2 | 1.200 ± 0.141 | 1 of 2 |" in text
    assert "| reconstruction.vae.accuracy | – | – | – ± – |" in text
