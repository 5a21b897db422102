"""source.kind: local: your own recordings and a path,labels CSV."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.errors import AcquireError
from pipeline.params import parse
from pipeline.sources.clips import ClipRules, clip_windows
from pipeline.sources.manifest import SCHEMA, read_manifest
from pipeline.stages.acquire import acquire

from conftest import read_clip

DIAL, BUSY = "/m/015jpf", "/m/01z47d"


def tone(seconds, rate, frequency=1000.0, channels=1, level=0.3):
    t = np.arange(int(seconds * rate)) / rate
    audio = (level * np.sin(2 * np.pi * frequency * t)).astype(np.float32)
    return np.repeat(audio[:, None], channels, axis=1) if channels > 1 else audio


def local_params(folder, csv, **source):
    return parse({"source": {"kind": "local", "dir": str(folder), "labels_csv": str(csv),
                             **source}})


@pytest.fixture
def recordings(tmp_path):
    folder = tmp_path / "audio"
    (folder / "field").mkdir(parents=True)
    sf.write(folder / "field" / "long stereo.wav", tone(25, 44_100, channels=2), 44_100)
    sf.write(folder / "short.flac", tone(6, 8_000, frequency=1000), 8_000)
    sf.write(folder / "quiet.wav", tone(10, 16_000, level=1e-5), 16_000)
    sf.write(folder / "surround.wav", tone(10, 16_000, channels=6), 16_000)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "loop.wav").symlink_to(folder / "loop.wav")
    sf.write(folder / "huge rate.wav", tone(1, 16_000), 16_000, subtype="PCM_16")
    header = bytearray((folder / "huge rate.wav").read_bytes())
    header[24:28] = (2**31 - 1).to_bytes(4, "little")  # the WAV header's sample rate
    (folder / "huge rate.wav").write_bytes(bytes(header))
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    one_nan = tone(10, 16_000)
    one_nan[5000] = np.nan
    sf.write(folder / "nan.wav", one_nan, 16_000, subtype="FLOAT")
    sf.write(folder / "inf.wav", np.full(160_000, np.inf, np.float32), 16_000, subtype="FLOAT")
    sf.write(folder / "one sample.wav", np.array([0.5], np.float32), 16_000, subtype="FLOAT")
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,labels\n"
        'field/long stereo.wav,"/m/015jpf,/m/01z47d"\n'  # AudioSet's comma-separated ids
        "short.flac,dial tone;Busy signal\n"  # display names, any case
        f"quiet.wav,{DIAL}\n"
        f"surround.wav,{DIAL}\n"
        f"empty.wav,{DIAL}\n"
        f"loop.wav,{DIAL}\n"
        f"huge rate.wav,{DIAL}\n"
        f"corrupt.wav,{DIAL}\n"
        f"nan.wav,{DIAL}\n"
        f"inf.wav,{DIAL}\n"
        f"one sample.wav,{DIAL}\n"
        f"gone.wav,{DIAL}\n")
    return folder, csv


def by_origin(rows):
    found = {}
    for row in rows:
        found.setdefault(row["origin"], []).append(row)
    return found


def test_recordings_become_clips_and_bad_files_are_recorded(tmp_path, recordings, ontology):
    rows, _ = acquire(local_params(*recordings), tmp_path / "raw", ontology)
    files = by_origin(rows)
    long = files["field/long stereo.wav"]
    # 25 s split: two whole clips and the 5 s tail padded (it is at least half a clip)
    assert [(r["start_seconds"], r["end_seconds"]) for r in long] == [(0, 10), (10, 20), (20, 25)]
    assert {r["status"] for r in long} == {"ok"} and long[0]["labels"] == [DIAL, BUSY]
    assert files["short.flac"][0]["labels"] == [DIAL, BUSY]
    failures = {origin: (rs[0]["status"], rs[0]["error_kind"]) for origin, rs in files.items()
                if rs[0]["status"] != "ok"}
    assert failures == {"quiet.wav": ("failed", "silent"), "surround.wav": ("failed", "channels"),
                        "empty.wav": ("failed", "empty"), "corrupt.wav": ("failed", "corrupt"),
                        "gone.wav": ("failed", "missing"), "nan.wav": ("failed", "non_finite"),
                        "inf.wav": ("failed", "non_finite"),
                        "one sample.wav": ("failed", "too_short"),
                        # each used to abort the whole acquire (OSError, ArrayMemoryError)
                        "loop.wav": ("failed", "missing"), "huge rate.wav": ("failed", "corrupt")}
    assert pq.read_schema(tmp_path / "raw" / "manifest.parquet").equals(SCHEMA, check_metadata=False)
    for row in rows:
        if row["status"] == "ok":
            assert len(read_clip(tmp_path / "raw", row["id"])) == 160_000
    short = read_clip(tmp_path / "raw", files["short.flac"][0]["id"])
    spectrum = np.abs(np.fft.rfft(short[:96_000]))  # resampled from 8 kHz, then padded
    assert np.argmax(spectrum) * 16_000 / 96_000 == pytest.approx(1000, abs=2)
    assert np.abs(short[96_000:]).max() == 0


def test_short_and_long_rules(tmp_path, recordings, ontology):
    rows, _ = acquire(local_params(*recordings, short_clips="reject", long_clips="trim"),
                      tmp_path / "raw", ontology)
    files = by_origin(rows)
    assert [(r["start_seconds"], r["end_seconds"]) for r in files["field/long stereo.wav"]] == [(0, 10)]
    assert files["short.flac"][0]["error_kind"] == "too_short"


def test_rerun_gives_identical_files(tmp_path, recordings, ontology):
    acquire(local_params(*recordings), tmp_path / "raw", ontology)
    first = {p.name: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()}
    acquire(local_params(*recordings), tmp_path / "raw", ontology)
    assert {p.name: p.read_bytes() for p in (tmp_path / "raw").rglob("*") if p.is_file()} == first


def test_every_bad_csv_line_is_listed(tmp_path, recordings, ontology):
    folder, _ = recordings
    outside = tmp_path / "outside.wav"
    sf.write(outside, tone(10, 16_000), 16_000)
    (folder / "link.wav").symlink_to(outside)
    csv = tmp_path / "bad.csv"
    csv.write_text("path,labels\n"
                   "short.flac,Dial tones\n"
                   "short.flac,\n"
                   "../outside.wav,Dial tone\n"
                   f"{outside},Dial tone\n"
                   "link.wav,Dial tone\n"
                   "quiet.wav,Dial tone,extra\n"
                   "quiet.wav,Dial tone\n"
                   "./quiet.wav,Dial tone\n")
    with pytest.raises(AcquireError) as error:
        acquire(local_params(folder, csv), tmp_path / "raw", ontology)
    message = str(error.value)
    for expected in ["7 bad lines", "line 2: unknown AudioSet class 'Dial tones'; did you mean 'Dial tone'",
                     "line 3: empty labels", "line 4: '../outside.wav' is outside source.dir",
                     f"line 5: '{outside}' is outside", "line 6: 'link.wav' is outside",
                     "line 7: expected 2 fields",
                     "line 9: 'quiet.wav' is listed again (first on line 8)"]:
        assert expected in message
    assert not (tmp_path / "raw" / "manifest.parquet").exists()


def test_a_huge_garbage_csv_searches_close_names_only_for_the_lines_it_lists(tmp_path, recordings, ontology,
                                                                              monkeypatch):
    """10^5 rows of unknown labels took 99 s to report: each searched every class name for a hint."""
    import difflib

    from pipeline.sources.local import MAX_LISTED_PROBLEMS

    folder, _ = recordings
    searches = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches", lambda *a, **k: searches.append(a) or real(*a, **k))
    csv = tmp_path / "garbage.csv"
    csv.write_text("path,labels\n" + "".join(f"r{i}.wav,Not a class {i}\n" for i in range(10_000)))
    with pytest.raises(AcquireError, match=r"10000 bad lines") as error:
        acquire(local_params(folder, csv), tmp_path / "raw", ontology)
    assert len(searches) == MAX_LISTED_PROBLEMS and "... and" in str(error.value)


def test_header_is_required(tmp_path, recordings, ontology):
    folder, _ = recordings
    csv = tmp_path / "noheader.csv"
    csv.write_text(f"short.flac,{DIAL}\n")
    with pytest.raises(AcquireError, match="header 'path,labels'"):
        acquire(local_params(folder, csv), tmp_path / "raw", ontology)


@pytest.mark.parametrize("seconds, short, long, windows", [
    (10, "pad", "split", [(0, 10)]),
    (14, "pad", "split", [(0, 10)]),  # a 4 s tail is under half a clip: dropped
    (15, "pad", "split", [(0, 10), (10, 15)]),
    (15, "reject", "split", [(0, 10)]),  # tails are never padded when short clips are rejected
    (35, "pad", "trim", [(0, 10)]),
    (3, "pad", "split", [(0, 3)]),  # one short window, for fit_to_clip to pad or reject
])
def test_clip_windows(seconds, short, long, windows):
    rules = ClipRules(100, 10.0, short, long, -60.0)
    assert clip_windows(seconds * 100, rules) == [(a * 100, b * 100) for a, b in windows]


def test_a_replaced_recording_is_rendered_anew(tmp_path, ontology):
    """`dvc repro -f acquire` after replacing a recording: the new audio reaches the shards,
    though the clip keeps its id and path."""
    from pipeline.audio.shards import read_split
    from pipeline.sources.subset import build_index, write_subset
    from pipeline.stages.render import render

    folder = tmp_path / "audio"
    folder.mkdir()
    lines = ["path,labels"]
    for n in range(4):
        for label, frequency in ((DIAL, 400), (BUSY, 2500)):
            sf.write(folder / f"{label[3:]}-{n}.wav", tone(10, 16_000, frequency + 50 * n), 16_000)
            lines.append(f"{label[3:]}-{n}.wav,{label}")
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join(lines) + "\n")
    params = parse({"source": {"kind": "local", "dir": str(folder), "labels_csv": str(csv)},
                    "subset": {"mixtures": 0, "min_per_class": 1, "val_fraction": 0.0, "test_fraction": 0.0},
                    "render": {"image_size": 64, "workers": 1}})

    def acquire_and_render():
        acquire(params, tmp_path / "raw", ontology)
        table, report = build_index(read_manifest(tmp_path / "raw" / "manifest.parquet"), params.subset, ontology)
        write_subset(table, report, tmp_path / "subset")
        render(params, tmp_path / "subset" / "index.parquet", tmp_path / "raw", tmp_path / "shards")
        rows = read_split("train", ["source_ids", "log_mel"], tmp_path / "shards")
        return {ids[0]: mel for ids, mel in zip(rows["source_ids"], rows["log_mel"])}

    before = acquire_and_render()
    sf.write(folder / f"{DIAL[3:]}-0.wav", tone(10, 16_000, 3000), 16_000)
    after = acquire_and_render()
    changed = next(i for i in before if "015jpf_0" in i)
    assert np.abs(after[changed] - before[changed]).max() > 10  # dB: another tone entirely
    assert all(np.array_equal(after[i], before[i]) for i in before if i != changed)
