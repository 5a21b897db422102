import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.errors import AcquireError
from pipeline.params import parse
from pipeline.sources.manifest import SCHEMA, read_manifest, write_manifest
from pipeline.stages.acquire import acquire, summary


def tiny(**source):
    return parse({"source": {"num_classes": 3, "clips_per_class": 2, **source}})


def test_synthetic_acquire_writes_clips_and_manifest(tmp_path, ontology):
    rows, _ = acquire(tiny(two_label_fraction=0.5), tmp_path, ontology)
    manifest = read_manifest(tmp_path / "manifest.parquet")
    assert pq.read_schema(tmp_path / "manifest.parquet").equals(SCHEMA, check_metadata=False)
    assert len(manifest) == len(rows) == 6
    assert set(manifest.status) == {"ok"} and manifest.id.is_unique
    for row in manifest.itertuples():
        audio, sr = sf.read(tmp_path / row.path, dtype="float32")
        assert sr == 16_000 and audio.ndim == 1 and len(audio) == 160_000
        assert row.duration_seconds == 10.0 and row.bytes > 0
        assert all(ontology.is_target(label) for label in row.labels)
    assert "6 ok" in summary(rows, ontology)


def test_rerun_is_identical_and_cleans_up(tmp_path, ontology):
    acquire(tiny(), tmp_path, ontology)
    first = {p.name: p.read_bytes() for p in (tmp_path / "clips").iterdir()}
    # A killed earlier run's leftovers: a partial temp file and a clip of another config.
    (tmp_path / "clips" / ".syn-00-0000.flac.abc.partial").write_bytes(b"half")
    (tmp_path / "clips" / "syn-09-0009.flac").write_bytes(b"stale")
    acquire(tiny(), tmp_path, ontology)
    assert {p.name: p.read_bytes() for p in (tmp_path / "clips").iterdir()} == first


def test_seed_changes_audio(tmp_path, ontology):
    acquire(tiny(seed=1), tmp_path / "a", ontology)
    acquire(tiny(seed=2), tmp_path / "b", ontology)
    a, _ = sf.read(tmp_path / "a" / "clips" / "syn-00-0000.flac")
    b, _ = sf.read(tmp_path / "b" / "clips" / "syn-00-0000.flac")
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
