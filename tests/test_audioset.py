"""source.kind: audioset against a localhost media server: real yt-dlp, real ffmpeg, no network."""

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.errors import AcquireError
from pipeline.params import parse
from pipeline.sources import audioset
from pipeline.sources.audioset import plan, segment_id
from pipeline.sources.clip_shards import STAGING_SUBDIR, ClipStore, held_clips
from pipeline.sources.download import classify, is_retryable
from pipeline.sources.manifest import SCHEMA, read_manifest
from pipeline.sources.workers import WorkerPool, WorkerStartError
from pipeline.stages.acquire import acquire, clip_rules, summary

from conftest import ROOT, make_tiny_repo, read_clip, run
from media_server import MediaServer, make_media, write_segments

DIAL, BUSY, RING = "/m/015jpf", "/m/01z47d", "/m/01hnzm"
WEBM, M4A = "tone_webm_1", "-tone_m4a_0"  # a YouTube id may start with "-"
SILENT, ENDS_EARLY, MISSING, FLAKY = "silence_001", "ends_early1", "missing_404", "flaky_50301"
GARBAGE = "garbage_web"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    # the frequency changes 15 s in, so a [10, 20] s section changes 5 s in
    make_media(folder / f"{WEBM}.webm", [(440, 15), (880, 15)])
    make_media(folder / f"{M4A}.m4a", [(660, 15), (330, 15)], codec="aac", sample_rate=44_100)
    make_media(folder / f"{SILENT}.webm", [(0, 12)])
    make_media(folder / f"{ENDS_EARLY}.webm", [(500, 14)])
    make_media(folder / f"{FLAKY}.webm", [(700, 12)])
    (folder / f"{GARBAGE}.webm").write_bytes(np.random.default_rng(0).bytes(100_000))
    return folder


def audioset_params(segments_csv, url_template, **download):
    return parse({"source": {"kind": "audioset", "segments": [str(segments_csv)],
                             "url_template": url_template},
                  "download": {"workers": 2, "backoff_seconds": 0.0, **download}})


def dominant_hz(audio, sample_rate=16_000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * sample_rate / len(audio)


def test_sections_are_cut_at_the_right_time(tmp_path, media, ontology):
    csv = write_segments(tmp_path / "s.csv", [(WEBM, 10, 20, DIAL), (M4A, 10, 20, BUSY)])
    with MediaServer(media) as server:
        rows, _ = acquire(audioset_params(csv, server.url_template), tmp_path / "raw", ontology)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    for ytid, before, after in [(WEBM, 440, 880), (M4A, 660, 330)]:
        audio = read_clip(tmp_path / "raw", segment_id(ytid, 10))
        assert len(audio) == 160_000
        assert dominant_hz(audio[16_000:64_000]) == pytest.approx(before, abs=5)
        assert dominant_hz(audio[96_000:144_000]) == pytest.approx(after, abs=5)
        frames = audio[:len(audio) // 400 * 400].reshape(-1, 400)  # 25 ms frames
        switch = next(i for i, f in enumerate(frames)
                      if abs(dominant_hz(f) - after) < abs(dominant_hz(f) - before))
        assert switch * 0.025 == pytest.approx(5.0, abs=0.05)


def test_failures_are_classified_and_only_transient_ones_retried(tmp_path, media, ontology):
    csv = write_segments(tmp_path / "s.csv", [
        (WEBM, 10, 20, DIAL), (MISSING, 0, 10, DIAL), (SILENT, 0, 10, BUSY),
        (ENDS_EARLY, 5, 15, BUSY), (FLAKY, 0, 10, RING), ("bad id!", 0, 10, RING),
        ("unknownlbl1", 0, 10, "/m/not_a_class"), (GARBAGE, 0, 10, RING)])
    with MediaServer(media) as server:
        server.failures[FLAKY] = [503, 429]  # two transient failures, then the file
        rows, notes = acquire(audioset_params(csv, server.url_template, retries=2),
                              tmp_path / "raw", ontology)
        hits = dict(server.hits)
    by_ytid = {r["origin"]: r for r in rows}
    assert {y: (r["status"], r["error_kind"], r["attempts"]) for y, r in by_ytid.items()} == {
        WEBM: ("ok", None, 1), MISSING: ("failed", "not_found", 1),
        SILENT: ("failed", "silent", 1), ENDS_EARLY: ("failed", "short_section", 1),
        FLAKY: ("ok", None, 3), "bad id!": ("failed", "invalid_id", 0),
        "unknownlbl1": ("failed", "unknown_label", 0), GARBAGE: ("failed", "undecodable", 1)}
    assert "404" in by_ytid[MISSING]["error"] and "-60" in by_ytid[SILENT]["error"]
    assert "Invalid data found" in by_ytid[GARBAGE]["error"]  # ffmpeg's own words
    assert "bad id!" not in hits and "unknownlbl1" not in hits  # never requested
    assert by_ytid[MISSING]["updated_at"] is not None and by_ytid[WEBM]["bytes"] > 0
    manifest = tmp_path / "raw" / "manifest.parquet"
    assert pq.read_schema(manifest).equals(SCHEMA, check_metadata=False)
    assert read_manifest(manifest).status.tolist() == [r["status"] for r in rows]
    text = summary(rows, ontology, notes)
    assert "\n       2  downloaded\n" in text and "not_found" in text and "short_section" in text


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refused_connection_is_retryable_and_retried_next_run(tmp_path, media, ontology):
    csv = write_segments(tmp_path / "s.csv", [(WEBM, 10, 20, DIAL)])
    dead = f"http://127.0.0.1:{free_port()}/v/{{ytid}}"
    rows, _ = acquire(audioset_params(csv, dead, retries=1), tmp_path / "raw", ontology)
    assert (rows[0]["status"], rows[0]["error_kind"], rows[0]["attempts"]) == ("failed", "connection", 2)
    assert "refused" in rows[0]["error"].lower()
    with MediaServer(media) as server:  # the same segments, now served
        params = audioset_params(csv, server.url_template)
        rows, _ = acquire(params, tmp_path / "raw", ontology)
    assert (rows[0]["status"], rows[0]["attempts"]) == ("ok", 3)


def test_no_connection_at_all_stops_the_run_with_advice(tmp_path, media, ontology):
    ytids, csv = tone_copies(media, tmp_path / "s.csv", "dead", 30)
    dead = f"http://127.0.0.1:{free_port()}/v/{{ytid}}"
    with pytest.raises(AcquireError, match="all failed .connection.*download.proxy"):
        acquire(audioset_params(csv, dead, retries=0), tmp_path / "raw", ontology)
    manifest = read_manifest(tmp_path / "raw" / "manifest.parquet")
    assert len(manifest) == 30 and set(manifest.status) <= {"failed", "pending"}
    assert (manifest.status == "pending").sum() >= 30 - 20 - 2  # not every segment was tried


def test_rerun_skips_finished_clips_and_permanent_failures(tmp_path, media, ontology):
    csv = write_segments(tmp_path / "s.csv", [
        (WEBM, 10, 20, DIAL), (MISSING, 0, 10, DIAL), (FLAKY, 0, 10, RING)])
    with MediaServer(media) as server:
        server.failures[FLAKY] = [429] * 2
        params = audioset_params(csv, server.url_template, retries=1)
        first, _ = acquire(params, tmp_path / "raw", ontology)
        kept, hits = ClipStore(tmp_path / "raw").flac(first[0]["path"], first[0]["id"]), dict(server.hits)
        second, notes = acquire(params, tmp_path / "raw", ontology)
    assert [r["status"] for r in first] == ["ok", "failed", "failed"]
    assert [r["status"] for r in second] == ["ok", "failed", "ok"]
    assert server.hits[WEBM] == hits[WEBM] and server.hits[MISSING] == hits[MISSING]
    assert ClipStore(tmp_path / "raw").flac(second[0]["path"], second[0]["id"]) == kept
    assert second[0]["updated_at"] == first[0]["updated_at"]
    assert second[2]["attempts"] == 3
    lines = [note.strip() for note in notes]
    assert "1  downloaded" in lines and "1  skipped: already on disk" in lines


def test_a_hung_download_is_killed_at_the_timeout(tmp_path, media, ontology):
    csv = write_segments(tmp_path / "s.csv", [(WEBM, 10, 20, DIAL)])
    with MediaServer(media, latency_seconds=30) as server:
        params = audioset_params(csv, server.url_template, retries=0, timeout_seconds=2)
        rows, _ = acquire(params, tmp_path / "raw", ontology)
    assert (rows[0]["status"], rows[0]["error_kind"]) == ("failed", "timeout")
    assert "timeout_seconds=2" in rows[0]["error"] and is_retryable("timeout")


def tone_copies(media, csv, prefix, count):
    """``count`` videos, each the tone webm under its own id, and a CSV asking for them."""
    ytids = [f"{prefix}_{i:06d}"[:11] for i in range(count)]
    for ytid in ytids:
        if not (media / f"{ytid}.webm").exists():
            (media / f"{ytid}.webm").hardlink_to(media / f"{WEBM}.webm")
    return ytids, write_segments(csv, [(y, 10, 20, DIAL) for y in ytids])


def test_narrowing_and_widening_the_selection_downloads_nothing_again(tmp_path, media, ontology):
    ytids, csv = tone_copies(media, tmp_path / "s.csv", "narr", 4)
    raw = tmp_path / "raw"
    with MediaServer(media) as server:
        wide = audioset_params(csv, server.url_template, workers=1)
        wide = parse(wide.to_dict() | {"source": wide.to_dict()["source"] | {"shard_clips": 2}})
        first, _ = acquire(wide, raw, ontology)
        clips = {row["id"]: ClipStore(raw).flac(row["path"], row["id"]) for row in first}
        narrow = parse(wide.to_dict() | {"source": wide.to_dict()["source"] | {"limit": 2}})
        kept, _ = acquire(narrow, raw, ontology)
        assert sorted(held_clips(raw)) == sorted(row["id"] for row in kept)
        assert len(list((raw / STAGING_SUBDIR).glob("*.flac"))) == 2  # the other two, kept aside
        hits = dict(server.hits)
        again, _ = acquire(wide, raw, ontology)
    assert dict(server.hits) == hits
    assert {row["id"]: ClipStore(raw).flac(row["path"], row["id"]) for row in again} == clips
    assert not list((raw / STAGING_SUBDIR).glob("*.flac"))


def test_cookies_proxy_and_pace_reach_the_requests(tmp_path, media, ontology, monkeypatch):
    ytids, csv = tone_copies(media, tmp_path / "s.csv", "pace", 3)
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tabc123\n")
    paces = []

    class RecordedPacer(audioset.Pacer):  # the run's clock, read where the loop asks it
        def __init__(self, interval, clock=time.monotonic):
            super().__init__(interval, clock)
            self.starts = []
            paces.append(self)

        def started(self):
            self.starts.append(self.clock())
            super().started()

    monkeypatch.setattr(audioset, "Pacer", RecordedPacer)
    with MediaServer(media) as server:
        proxy = server.url_template.split("/v/")[0]
        # the URL goes nowhere; only the proxy (the media server itself) can answer it
        params = audioset_params(csv, f"http://127.0.0.1:{free_port()}/v/{{ytid}}", workers=3,
                                 cookies=str(cookies), proxy=proxy, sleep_seconds=0.5)
        rows, _ = acquire(params, tmp_path / "raw", ontology)
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert server.proxied > 0 and "session=abc123" in server.cookies
    # three idle workers, yet the loop started one every download.sleep_seconds
    (pace,) = paces
    assert pace.interval == 0.5 and len(pace.starts) == 3
    assert all(later - earlier >= 0.5 for earlier, later in zip(pace.starts, pace.starts[1:]))


def test_the_pacer_spaces_starts_and_holds_retries_until_due():
    now = [100.0]
    pace = audioset.Pacer(2.0, clock=lambda: now[0])
    assert pace.may_start()
    pace.started()
    assert not pace.may_start()
    now[0] += 1.9
    assert not pace.may_start()
    now[0] += 0.1
    assert pace.may_start()
    pace.retry_later("b", 5.0)
    pace.retry_later("a", 1.0)
    assert pace.due() == []
    now[0] += 1.0
    assert pace.due() == ["a"] and pace.waiting
    now[0] += 4.0
    assert pace.due() == ["b"] and not pace.waiting


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_a_killed_run_resumes_without_downloading_again(tmp_path, media, ontology, stop):
    ytids, csv = tone_copies(media, tmp_path / "s.csv", "clip", 6)
    raw = tmp_path / "raw"
    with MediaServer(media) as server:
        # two clips are served, the third is held: the run is stopped in that known state,
        # however loaded the machine (with a delay instead, it sometimes finished first)
        server.hold_after(2)
        params = audioset_params(csv, server.url_template, workers=1)
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.to_dict()))
        # as from a terminal: a test run started in the background (`make test &`) ignores
        # SIGINT, and a child inherits that, so Ctrl-C is given back its default
        process = subprocess.Popen([sys.executable, "-m", "pipeline.stages.acquire", "--params",
                                    str(params_file), "--out", str(raw)], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 120
        def finished_ids():
            staged = {p.stem for p in (raw / STAGING_SUBDIR).glob("*.flac")}
            return staged | set(held_clips(raw)) if (raw / "clips").exists() else staged

        while len(finished_ids()) < 2 or len(server.first_request) < 3:
            assert time.monotonic() < deadline and process.poll() is None, "the run never reached the third clip"
            time.sleep(0.05)
        process.send_signal(stop)
        server.release()  # nothing may wait on the held answer while the run stops
        _, stderr = process.communicate(timeout=120)
        finished = finished_ids()
        if stop == signal.SIGINT:
            assert process.returncode == 130 and "interrupted" in stderr
            manifest = read_manifest(raw / "manifest.parquet")
            recorded = set(manifest[manifest.status == "ok"].id)
            # a clip written in the instant before the interrupt is adopted by the next run
            assert recorded <= set(finished) and len(set(finished) - recorded) <= 1
            assert set(manifest.status) <= {"ok", "pending"}
        assert 2 <= len(finished) < len(ytids)  # the held third may finish as the run stops
        hits = dict(server.hits)
        rows, _ = acquire(params, raw, ontology)
    assert [r["status"] for r in rows] == ["ok"] * len(ytids)
    for row in rows:
        if row["id"] in finished:
            assert server.hits[row["origin"]] == hits[row["origin"]], row["id"]
        else:
            assert server.hits[row["origin"]] > hits.get(row["origin"], 0)


def test_selection_filter_cap_limit_and_duplicates(tmp_path, ontology):
    police, ambulance = "/m/04qvtq", "/m/012n7d"
    segments = [(f"seg_{i:07d}", 0, 10, [police, ambulance, DIAL][i % 3]) for i in range(30)]
    first = write_segments(tmp_path / "a.csv", segments)
    again = write_segments(tmp_path / "b.csv", segments[:2] + [("other_id_01", 0, 7, DIAL)])

    def chosen(**source):
        params = parse({"source": {"kind": "audioset", "segments": [str(first), str(again)],
                                   **source}})
        return plan(params.source, clip_rules(params), ontology)

    everything = chosen()
    assert len(everything.rows) == 31 and everything.duplicates == ["seg_0000000_0", "seg_0000001_0"]
    sirens = chosen(classes=["Siren"])  # a name, and the classes below it
    assert {r["labels"][0] for r in sirens.rows} == {police, ambulance} and len(sirens.rows) == 20
    capped = chosen(classes=["Siren"], max_per_class=4)
    assert sorted(r["labels"][0] for r in capped.rows) == [ambulance] * 4 + [police] * 4
    assert [r["id"] for r in capped.rows] == sorted(r["id"] for r in capped.rows)  # CSV order
    assert [r["id"] for r in chosen(limit=5, seed=1).rows] == [r["id"] for r in chosen(limit=5, seed=1).rows]
    assert chosen(limit=5, seed=1).rows != chosen(limit=5, seed=2).rows
    short = {r["id"]: r for r in chosen(short_clips="reject").rows}["other_id_01_0"]
    assert (short["status"], short["error_kind"]) == ("failed", "too_short")
    with pytest.raises(AcquireError, match="did you mean 'Siren'"):
        chosen(classes=["Sirens"])


def test_the_balanced_list_plans_without_network(ontology):
    params = parse({"source": {"kind": "audioset", "limit": 100}})
    rows = plan(params.source, clip_rules(params), ontology).rows
    assert len(rows) == 100 and {r["status"] for r in rows} == {"pending"}
    assert {r["path"] for r in rows} == {"clips/part-00000.parquet"}


def test_clear_errors_before_any_download(tmp_path, ontology):
    with pytest.raises(AcquireError, match="not found"):
        acquire(audioset_params(tmp_path / "none.csv", "http://x/{ytid}"), tmp_path, ontology)
    csv = write_segments(tmp_path / "s.csv", [(WEBM, 0, 10, DIAL)])
    with pytest.raises(AcquireError, match="download.cookies"):
        acquire(audioset_params(csv, "http://x/{ytid}", cookies=str(tmp_path / "c.txt")),
                tmp_path, ontology)
    truncated = tmp_path / "t.csv"
    truncated.write_text(csv.read_text().replace("num_segs=1", "num_segs=2"))
    with pytest.raises(AcquireError, match="truncated or edited"):
        acquire(audioset_params(truncated, "http://x/{ytid}"), tmp_path, ontology)


def test_a_worker_that_cannot_start_is_an_error_not_a_loop(tmp_path):
    with WorkerPool("pipeline.no_such_module", "{}", 1, 10, tmp_path) as pool:
        with pytest.raises(WorkerStartError, match="exited before it was ready"):
            for _ in range(100):
                pool.wait(timeout=0.5)
    assert "No module named" in (tmp_path / "worker-0.log").read_text()


class StatusError(Exception):
    def __init__(self, status):
        super().__init__(f"HTTP Error {status}")
        self.status = status


@pytest.mark.parametrize("error, kind", [
    (StatusError(404), "not_found"), (StatusError(410), "not_found"),
    (StatusError(429), "rate_limited"), (StatusError(502), "server_error"),
    (StatusError(403), "http_error"),
    (Exception("[youtube] x: Private video. Sign in if you've been granted access"), "private"),
    (Exception("[youtube] x: Sign in to confirm you\u2019re not a bot"), "bot_check"),
    (Exception("[youtube] x: Sign in to confirm your age"), "age_restricted"),
    (Exception("Video unavailable. The uploader has not made this video available in your "
               "country"), "region_blocked"),
    (Exception("[youtube] x: Video unavailable. This video has been removed by the uploader"),
     "unavailable"),
    (Exception("Join this channel to get access to members-only content"), "members_only"),
    (Exception("Read timed out."), "timeout"),
    (Exception("Connection reset by peer"), "connection"),
    (Exception("ERROR: ffmpeg exited with code 1"), "ffmpeg_failed"),
    (Exception("something new"), "other"),
])
def test_classify(error, kind):
    assert classify(error) == kind


def test_dvc_repro_acquire_downloads_records_and_resumes(tmp_path, media):
    repo = make_tiny_repo(tmp_path / "repo")
    write_segments(repo / "data" / "meta" / "my_segments.csv",
                   [(WEBM, 10, 20, DIAL), (MISSING, 0, 10, DIAL), (FLAKY, 0, 10, RING)])
    with MediaServer(media) as server:
        server.failures[FLAKY] = [503] * 10
        config = yaml.safe_load((repo / "params.yaml").read_text())
        config["source"].update(kind="audioset", segments=["data/meta/my_segments.csv"],
                                url_template=server.url_template)
        config["download"].update(retries=0, workers=2)
        (repo / "params.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        out = run(["dvc", "repro", "acquire"], repo)
        assert "1 ok" in out and "not_found" in out and "server_error" in out
        manifest = read_manifest(repo / "data/raw/manifest.parquet")
        assert dict(zip(manifest.origin, manifest.status)) == {
            WEBM: "ok", MISSING: "failed", FLAKY: "failed"}
        hits = dict(server.hits)
        server.failures.clear()
        assert "didn't change" in run(["dvc", "repro", "acquire"], repo)
        out = run(["dvc", "repro", "-f", "acquire"], repo)  # the documented way to retry
        assert "\n       1  downloaded\n" in out and "\n       1  skipped: already on disk" in out
    assert server.hits[WEBM] == hits[WEBM] and server.hits[MISSING] == hits[MISSING]
    assert "up to date" in run(["dvc", "status", "acquire"], repo)


@pytest.mark.parametrize("ffmpeg_says, kind", [
    ("[https @ 0x1] HTTP error 404 Not Found | Server returned 404 Not Found", "not_found"),
    ("Server returned 5XX Server Error reply", "server_error"),
    ("Server returned 403 Forbidden (access denied)", "http_error"),
    ("Connection reset by peer", "connection"),
    ("", "ffmpeg_failed"),
])
def test_classify_reads_what_ffmpeg_said(ffmpeg_says, kind):
    assert classify(Exception("ERROR: ffmpeg exited with code 1"), ffmpeg_says) == kind
