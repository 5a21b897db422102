"""AudioSet download throughput against a localhost media server: several workers against one,
measured in the same run on the same segments.

The server (tests/media_server.py) serves 30 s opus/webm files; each clip is a real yt-dlp
section download, an ffmpeg re-encode at the cuts, a decode and a FLAC write.
``--latency`` delays every HTTP answer, standing in for the round trips to YouTube that
dominate a real download and that workers overlap.

    python benchmarks/bench_acquire.py [--clips 24] [--workers 4] [--latency 0.2]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pipeline.ontology import Ontology
from pipeline.params import parse
from pipeline.sources.download import DownloadSettings, Section, ytdlp_options
from pipeline.sources.ffmpeg_binary import ffmpeg_executable
from pipeline.stages.acquire import acquire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_server import MediaServer, make_media, write_segments  # the tests' stand-in server


def timed_run(server, csv, out: Path, workers: int, ontology) -> float:
    params = parse({"source": {"kind": "audioset", "segments": [str(csv)],
                               "url_template": server.url_template},
                    "download": {"workers": workers, "retries": 0}})
    start = time.perf_counter()
    rows, _ = acquire(params, out, ontology)
    elapsed = time.perf_counter() - start
    failed = [r for r in rows if r["status"] != "ok"]
    if failed:
        raise SystemExit(f"{len(failed)} downloads failed: {failed[0]['error']}")
    return len(rows) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to each HTTP answer")
    args = parser.parse_args()
    ontology = Ontology.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        media = tmp / "media"
        media.mkdir()
        original = make_media(media / "original.webm", [(440, 15), (880, 15)])
        ytids = [f"bench_{i:05d}" for i in range(args.clips)]
        for ytid in ytids:
            (media / f"{ytid}.webm").hardlink_to(original)
        csv = write_segments(tmp / "segments.csv", [(y, 10, 20, "/m/015jpf") for y in ytids])
        with MediaServer(media, latency_seconds=args.latency) as server:
            timed_run(server, csv, tmp / "warm-up", 1, ontology)  # page cache, imports
            one = timed_run(server, csv, tmp / "one", 1, ontology)
            many = timed_run(server, csv, tmp / "many", args.workers, ontology)
    print(f"{args.clips} clips, latency {args.latency:g} s per HTTP answer")
    print(f"  1 worker:   {one:6.2f} clips/s")
    print(f"  {args.workers} workers:  {many:6.2f} clips/s   ({many / one:.2f}x)")
    options = ytdlp_options(Section("id", "YTID", 10.0, 20.0, "f.flac"),
                            DownloadSettings("", "", "", None, ffmpeg_executable()), Path("<work>"), None)
    print("yt-dlp options:", {k: v for k, v in options.items() if k not in ("logger",)})


if __name__ == "__main__":
    main()
