import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.audio.shards import ShardError, iter_batches, iter_rows, read_spec, shard_files
from pipeline.audio.spectrogram import image_to_log_mel, log_mel_to_image, waveform_to_log_mel
from pipeline.audio.waveforms import SplitAudio, row_clips
from pipeline.params import render_profile

from conftest import ROOT, audio_bytes, build_subset, read_clip, render_into, replace_clips


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, ontology):
    tmp_path = tmp_path_factory.mktemp("render")
    params = build_subset(tmp_path, ontology)
    report = render_into(tmp_path, params)
    return tmp_path, params, report


def rows_by_id(shards, split):
    return {i: (img, mel) for batch in iter_batches(split, ["id", "image", "log_mel"], root=shards)
            for i, img, mel in zip(batch["id"], batch["image"], batch["log_mel"])}


def test_shards_hold_every_row(rendered):
    tmp_path, params, report = rendered
    index = pq.read_table(tmp_path / "subset" / "index.parquet").to_pandas()
    assert report["rows"] == index.split.value_counts().to_dict() and report["skipped"] == []
    for split in ("train", "val", "test"):
        files = shard_files(split, tmp_path / "shards")
        assert all(pq.read_metadata(f).num_rows <= 8 for f in files)
        assert all(pq.read_metadata(f).row_group(0).column(0).compression == "ZSTD" for f in files)
        assert read_spec(files[0]) == params.spec
        assert set(rows_by_id(tmp_path / "shards", split)) == set(index[index.split == split].id)


def test_image_and_mel_round_trip(rendered, ontology):
    tmp_path, params, _ = rendered
    spec = params.spec
    rows = rows_by_id(tmp_path / "shards", "test")
    clip_id, (image, log_mel) = next(iter(rows.items()))
    audio = read_clip(tmp_path / "raw", clip_id)
    expected = waveform_to_log_mel(torch.from_numpy(audio), spec).numpy()
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert log_mel.shape == (128, 128)
    assert np.abs(log_mel - expected).max() <= 0.05  # float16 storage: < 0.03 dB over [-40, 60]
    assert np.array_equal(image, log_mel_to_image(torch.from_numpy(expected), spec)[0].numpy())
    back = image_to_log_mel(torch.from_numpy(image), spec).numpy()
    step = (spec.max_db - spec.min_db) / 255
    # A 64-px image averages 2x2 mel cells, so its inverse matches the cell means.
    pooled = expected.reshape(64, 2, 64, 2).mean(axis=(1, 3)).repeat(2, 0).repeat(2, 1)
    assert np.abs(back - pooled).max() <= step / 2 + 1e-3


@pytest.mark.parametrize("domain", ["waveform", "mel"])
@pytest.mark.slow
def test_mixture_is_the_average_of_its_sources(tmp_path, ontology, domain):
    params = build_subset(tmp_path, ontology, subset={"mix_domain": domain})
    render_into(tmp_path, params)
    spec = params.spec
    index = pq.read_table(tmp_path / "subset" / "index.parquet").to_pandas()
    mixture = index[index.is_mixture].iloc[0]
    clips = [read_clip(tmp_path / "raw", clip_id) for clip_id in mixture.source_ids]
    if domain == "waveform":
        expected = waveform_to_log_mel(torch.from_numpy((clips[0] + clips[1]) / 2), spec)
    else:
        expected = waveform_to_log_mel(torch.from_numpy(np.stack(clips)), spec).mean(dim=0)
    _, stored = rows_by_id(tmp_path / "shards", "train")[mixture.id]
    assert np.abs(stored - expected.numpy()).max() <= 0.05


@pytest.mark.slow
def test_bad_audio_is_skipped_and_reported(tmp_path, ontology):
    params = build_subset(tmp_path, ontology)
    replace_clips(tmp_path / "raw", {
        "syn-00-0000": None,
        "syn-00-0001": b"not a flac file",
        "syn-00-0002": audio_bytes(np.zeros(160_000, np.float32)),
        "syn-00-0003": audio_bytes(np.zeros((160_000, 2), np.float32) + 0.1),
        "syn-00-0004": audio_bytes(np.full(40_000, 0.1, np.float32))})
    report = render_into(tmp_path, params)
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert reasons["syn-00-0000"] == "missing clip"
    assert reasons["syn-00-0001"].startswith("unreadable audio")
    assert reasons["syn-00-0002"] == "silent"
    assert reasons["syn-00-0003"] == "2 channels, expected mono"
    assert reasons["syn-00-0004"].startswith("truncated")
    saved = json.loads((tmp_path / "shards" / "report.json").read_text())
    assert saved["skipped_by_reason"]["missing clip"] >= 1
    written = sum(report["rows"].values())
    index_rows = pq.read_metadata(tmp_path / "subset" / "index.parquet").num_rows
    assert written + len(report["skipped"]) == index_rows


@pytest.mark.slow
def test_resume_after_a_kill_redoes_only_unfinished_shards(tmp_path, ontology):
    params = build_subset(tmp_path, ontology)
    first = render_into(tmp_path, params)
    files = sorted((tmp_path / "shards").glob("*/part-*.parquet"))
    stamps = {f: f.stat().st_mtime_ns for f in files}
    files[0].unlink()  # the shard a killed run had not finished
    (files[1].parent / f".{files[1].name}.x.partial").write_bytes(b"half")
    second = render_into(tmp_path, params)
    assert second["shards_reused"] == len(files) - 1 and second["rows"] == first["rows"]
    assert all(f.stat().st_mtime_ns == stamps[f] for f in files[1:])
    assert not list((tmp_path / "shards").glob("*/*.partial"))
    bigger = build_subset(tmp_path, ontology, render={"image_size": 128})
    assert render_into(tmp_path, bigger)["shards_reused"] == 0  # another spec: everything redone


@pytest.mark.slow
def test_shards_of_an_older_layout_are_rewritten(tmp_path, ontology, monkeypatch):
    import pipeline.audio.shard_writer
    from pipeline.audio.shards import shard_schema

    params = build_subset(tmp_path, ontology)
    render_into(tmp_path, params)

    def other_layout(spec, fingerprint):  # e.g. a field's nullability changed
        schema = shard_schema(spec, fingerprint)
        index = schema.get_field_index("image")
        return schema.set(index, schema.field(index).with_nullable(False))

    monkeypatch.setattr(pipeline.audio.shard_writer, "shard_schema", other_layout)
    assert render_into(tmp_path, params)["shards_reused"] == 0


def test_iter_batches_shuffles_deterministically(rendered):
    shards = rendered[0] / "shards"
    plain = [i for b in iter_batches("train", ["id"], batch_size=5, root=shards) for i in b["id"]]
    one = [i for b in iter_batches("train", ["id"], batch_size=5, shuffle_seed=1, root=shards,
                                   buffer_row_groups=2) for i in b["id"]]
    same = [i for b in iter_batches("train", ["id"], batch_size=5, shuffle_seed=1, root=shards,
                                    buffer_row_groups=2) for i in b["id"]]
    other = [i for b in iter_batches("train", ["id"], batch_size=5, shuffle_seed=2, root=shards,
                                     buffer_row_groups=2) for i in b["id"]]
    assert sorted(one) == sorted(plain) and len(set(plain)) == len(plain)
    assert one == same and one != other and one != plain
    sizes = [len(b["id"]) for b in iter_batches("train", ["id"], batch_size=5, root=shards, drop_last=True)]
    assert set(sizes) == {5}
    with pytest.raises(ShardError, match="run `dvc repro render`"):
        next(iter_batches("nope", root=shards))


def test_standard_readers(rendered):
    import datasets

    shards = rendered[0] / "shards"
    files = [str(f) for f in shard_files("val", shards)]
    dataset = datasets.load_dataset("parquet", data_files=files, split="train")
    assert isinstance(dataset.features["image"], datasets.Image)
    first = dataset[0]
    assert first["image"].size == (64, 64) and len(first["log_mel"]) == 128 * 128
    assert pq.read_table(files[0]).num_rows == pq.read_metadata(files[0]).num_rows


def shard_of(shards, split, row_id):
    """The shard file holding ``row_id``."""
    return next(f for f in shard_files(split, shards)
                if row_id in pq.read_table(f, columns=["id"]).column("id").to_pylist())


@pytest.mark.slow
def test_a_changed_clip_rerenders_its_shard(tmp_path, ontology):
    """Same ids and shards, other audio (another source.seed, a replaced recording, a clip
    downloaded again): the shard holding it must not be reused."""
    params = build_subset(tmp_path, ontology)
    render_into(tmp_path, params)
    index = pq.read_table(tmp_path / "subset" / "index.parquet").to_pandas()
    row = index[(index.split == "train") & ~index.is_mixture].iloc[0]
    other = index[(index.target != row.target) & ~index.is_mixture].iloc[0].source_ids[0]
    audio = read_clip(tmp_path / "raw", other)
    replace_clips(tmp_path / "raw", {row.source_ids[0]: audio_bytes(audio)})
    users = index[index.source_ids.map(lambda ids: row.source_ids[0] in ids)]  # mixtures too
    touched = {shard_of(tmp_path / "shards", u.split, u.id) for u in users.itertuples()}
    report = render_into(tmp_path, params)
    assert report["shards_reused"] == report["shards"] - len(touched)
    expected = waveform_to_log_mel(torch.from_numpy(audio), params.spec).numpy()
    _, stored = rows_by_id(tmp_path / "shards", "train")[row.id]
    assert np.abs(stored - expected).max() <= 0.05


@pytest.mark.slow
def test_a_damaged_shard_is_rendered_again(tmp_path, ontology):
    params = build_subset(tmp_path, ontology)
    render_into(tmp_path, params)
    shard = shard_files("train", tmp_path / "shards")[0]
    intact = shard.read_bytes()
    damaged = bytearray(intact)
    middle = len(damaged) // 2
    damaged[middle:middle + 64] = bytes(b ^ 0xFF for b in damaged[middle:middle + 64])
    shard.write_bytes(bytes(damaged))  # the footer, and so the fingerprint, still read fine
    report = render_into(tmp_path, params)
    assert report["shards_reused"] == report["shards"] - 1
    assert shard.read_bytes() == intact
    record = json.loads(shard.with_suffix(".json").read_text())
    assert record["file"] == shard.name and len(record["sha256"]) == 64


@pytest.mark.slow
def test_changed_render_code_rerenders_everything(tmp_path, ontology, monkeypatch):
    import pipeline.audio.shard_writer

    params = build_subset(tmp_path, ontology)
    render_into(tmp_path, params)
    monkeypatch.setattr(pipeline.audio.shard_writer, "code_digest", lambda module: "edited render code")
    assert render_into(tmp_path, params)["shards_reused"] == 0


@pytest.mark.slow
def test_non_finite_audio_is_a_recorded_skip(tmp_path, ontology):
    params = build_subset(tmp_path, ontology)
    nan = np.full(160_000, 0.1, np.float32)
    nan[1000] = np.nan
    # float WAVs in the clips' places: soundfile reads them whatever the shard calls them
    replace_clips(tmp_path / "raw", {
        "syn-00-0000": audio_bytes(nan, format="WAV", subtype="FLOAT"),
        "syn-00-0001": audio_bytes(np.full(160_000, np.inf, np.float32), format="WAV", subtype="FLOAT")})
    report = render_into(tmp_path, params)
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert reasons["syn-00-0000"] == reasons["syn-00-0001"] == "non-finite samples (NaN or inf)"
    for split in ("train", "val", "test"):
        for batch in iter_batches(split, ["id", "source_ids", "log_mel"], root=tmp_path / "shards"):
            assert np.isfinite(batch["log_mel"]).all()
            used = {i for ids in batch["source_ids"] for i in ids}  # mixtures included
            assert not used & {"syn-00-0000", "syn-00-0001"}


@pytest.mark.slow
def test_a_killed_render_leaves_no_worker(tmp_path, ontology):
    params = build_subset(tmp_path / "data", ontology)
    assert params.render.workers == 2
    (tmp_path / "params.yaml").write_text(render_profile("tiny"))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    render = subprocess.Popen([sys.executable, "-m", "pipeline.stages.render"], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    orphans: set[str] = set()

    def workers() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            # the stage's, or orphans: reparented to init (or a subreaper) once it died
            if b"spawn_main" in cmdline and (parent == render.pid or entry in orphans):
                found.append(int(entry))
        return found

    deadline = time.monotonic() + 60
    while len(workers()) < 2 and render.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    started = workers()
    assert len(started) == 2, "render's workers never started"
    orphans.update(map(str, started))
    render.send_signal(signal.SIGKILL)
    render.wait()
    deadline = time.monotonic() + 60
    while any(os.path.exists(f"/proc/{pid}") and not _is_zombie(pid) for pid in started) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in started if os.path.exists(f"/proc/{pid}") and not _is_zombie(pid)]


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("mix_domain", ["waveform", None])
def test_split_audio_reads_the_same_rows_in_any_batch_size(rendered, mix_domain):
    """A split's audio a few rows at a time is the whole split's, row for row: fixed-size batches
    (the last fewer), each row's waveform its clips' mean, mixtures only in the waveform domain."""
    tmp_path = rendered[0]
    audio = SplitAudio("train", tmp_path / "shards", tmp_path / "subset" / "index.parquet", tmp_path / "raw",
                       mix_domain)
    small, whole = list(audio.batches(3)), list(audio.batches(10_000))
    assert len(whole) == 1 and [len(b["id"]) for b in small[:-1]] == [3] * (len(small) - 1)
    assert [i for b in small for i in b["id"]] == whole[0]["id"]
    assert torch.equal(torch.cat([b["waveform"] for b in small]), whole[0]["waveform"])
    assert np.array_equal(np.concatenate([b["log_mel"] for b in small]), whole[0]["log_mel"])
    rows = {r["id"]: r for r in iter_rows("train", ["id", "is_mixture", "log_mel"], tmp_path / "shards")}
    mixtures = [i for i in whole[0]["id"] if rows[i]["is_mixture"]]
    assert bool(mixtures) == (mix_domain == "waveform")
    index = {r["id"]: r for r in pq.read_table(tmp_path / "subset" / "index.parquet").to_pylist()}
    first = index[mixtures[0] if mixtures else whole[0]["id"][0]]
    assert torch.equal(whole[0]["waveform"][whole[0]["id"].index(first["id"])],
                       row_clips(first, audio.store, audio.spec).mean(dim=0))
    digests = audio.clip_sha256()
    assert len(digests) == sum(len(index[i]["paths"]) for i in whole[0]["id"]) and None not in digests
