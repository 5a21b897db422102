import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import AcquireError
from pipeline.params import parse
from pipeline.sources.clip_shards import STAGING_SUBDIR, ClipStore
from pipeline.sources.manifest import SCHEMA, read_manifest, write_manifest
from pipeline.stages.acquire import acquire, summary


def tiny(**source):
    return parse({"source": {"num_classes": 3, "clips_per_class": 2, **source}})


def test_synthetic_acquire_writes_clips_and_manifest(tmp_path, ontology):
    rows, _ = acquire(tiny(two_label_fraction=0.5, shard_clips=4), tmp_path, ontology)
    manifest = read_manifest(tmp_path / "manifest.parquet")
    assert pq.read_schema(tmp_path / "manifest.parquet").equals(SCHEMA, check_metadata=False)
    assert len(manifest) == len(rows) == 6
    assert set(manifest.status) == {"ok"} and manifest.id.is_unique
    assert list(manifest.path) == ["clips/part-00000.parquet"] * 4 + ["clips/part-00001.parquet"] * 2
    store = ClipStore(tmp_path)
    for row in manifest.itertuples():
        audio, sr = store.audio(row.path, row.id)
        assert sr == 16_000 and audio.shape == (160_000, 1)
        assert row.duration_seconds == 10.0 and row.bytes == len(store.flac(row.path, row.id))
        assert all(ontology.is_target(label) for label in row.labels)
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert not list((tmp_path / STAGING_SUBDIR).iterdir())  # every clip sealed
    assert "6 ok" in summary(rows, ontology)


def test_rerun_is_identical_and_cleans_up(tmp_path, ontology):
    acquire(tiny(shard_clips=4), tmp_path, ontology)
    first = {p.name: p.read_bytes() for p in (tmp_path / "clips").iterdir()}
    # A killed earlier run's leftovers: a partial temp file, a shard of another config and
    # a staged clip nobody needs.
    (tmp_path / "clips" / ".part-00000.parquet.abc.partial").write_bytes(b"half")
    (tmp_path / "clips" / "part-00009.parquet").write_bytes(b"stale")
    (tmp_path / STAGING_SUBDIR / "syn-09-0009.flac").write_bytes(b"stale")
    acquire(tiny(shard_clips=4), tmp_path, ontology)
    assert {p.name: p.read_bytes() for p in (tmp_path / "clips").iterdir()} == first
    assert not list((tmp_path / STAGING_SUBDIR).iterdir())


def test_shard_size_changes_layout_not_clips(tmp_path, ontology):
    acquire(tiny(shard_clips=4), tmp_path, ontology)
    before = read_manifest(tmp_path / "manifest.parquet")
    one = [ClipStore(tmp_path).flac(row.path, row.id) for row in before.itertuples()]
    acquire(tiny(shard_clips=5), tmp_path, ontology)
    after = read_manifest(tmp_path / "manifest.parquet")
    assert [ClipStore(tmp_path).flac(row.path, row.id) for row in after.itertuples()] == one
    assert sorted(p.name for p in (tmp_path / "clips").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert pq.read_metadata(tmp_path / "clips" / "part-00001.parquet").num_rows == 1


def test_damaged_clip_bytes_are_refused(tmp_path, ontology):
    acquire(tiny(), tmp_path, ontology)
    shard = tmp_path / "clips" / "part-00000.parquet"
    table = pq.read_table(shard)
    flacs = table["flac"].to_pylist()
    flacs[0] = flacs[0][:-100] + bytes(100)
    pq.write_table(table.set_column(1, "flac", pa.array(flacs, pa.binary())), shard)
    with pytest.raises(ValueError, match="damaged"):
        ClipStore(tmp_path).audio("clips/part-00000.parquet", table["id"][0].as_py())


def test_seed_changes_audio(tmp_path, ontology):
    acquire(tiny(seed=1), tmp_path / "a", ontology)
    acquire(tiny(seed=2), tmp_path / "b", ontology)
    a, _ = ClipStore(tmp_path / "a").audio("clips/part-00000.parquet", "syn-00-0000")
    b, _ = ClipStore(tmp_path / "b").audio("clips/part-00000.parquet", "syn-00-0000")
    assert not np.array_equal(a, b)


def test_too_many_classes_is_a_clear_error(tmp_path, ontology):
    with pytest.raises(AcquireError, match="catalogue has"):
        acquire(tiny(num_classes=500), tmp_path, ontology)


def test_manifest_rejects_bad_rows(tmp_path):
    row = dict(id="x", source="synthetic", labels=["/m/09x0r"], status="ok", attempts=1,
               updated_at=None)
    with pytest.raises(ValueError, match="duplicate ids"):
        write_manifest([row, dict(row)], tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="status 'done'"):
        write_manifest([dict(row, status="done")], tmp_path / "m.parquet")
    assert not (tmp_path / "m.parquet").exists()
