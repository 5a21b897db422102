"""What the data stages cost as the data grows, each part measured in the same run:

1. **download** through the Dask engine against the tests' localhost media server, every HTTP
   answer delayed by ``--latency`` (YouTube's round trips, which workers overlap), with 1, 2,
   4 and 8 worker processes: clips/s and the efficiency against 1 worker × N;
2. **render** rows/s, in this process and on a 2-worker local cluster;
3. **DVC bookkeeping**: ``dvc add``, ``dvc status`` and ``dvc push`` (to a local-folder remote)
   of N small clips as one file each against the same bytes in clip shards.

    python benchmarks/bench_scale.py [--latency 1] [--workers 1 2 4 8] [--clips-per-worker 8]
                                     [--bookkeeping 10000 100000] [--skip download render dvc]

The figures feed docs/scale.md's projection for AudioSet's 2 M segments.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.ontology import Ontology
from pipeline.params import parse
from pipeline.sources.clip_shards import write_shard
from pipeline.stages.acquire import acquire

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import build_subset, render_into  # noqa: E402 (the tests' tiny dataset helpers)
from media_server import MediaServer, make_media, write_segments  # noqa: E402 (the tests' stand-in server)

SHARD_CLIPS = 4096
DVC = [sys.executable, "-m", "dvc"]


def download(latency: float, counts: list[int], per_worker: int, ontology) -> list[tuple[int, int, float]]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        media = tmp / "media"
        media.mkdir()
        original = make_media(media / "original.webm", [(440, 15), (880, 15)])
        for workers in counts:
            clips = per_worker * workers
            ytids = [f"sc{workers:02d}_{i:06d}"[:11] for i in range(clips)]
            for ytid in ytids:
                (media / f"{ytid}.webm").hardlink_to(original)
            csv = write_segments(tmp / f"segments-{workers}.csv", [(y, 10, 20, "/m/015jpf") for y in ytids])
            with MediaServer(media, latency_seconds=latency) as server:
                params = parse({"source": {"kind": "audioset", "segments": [str(csv)],
                                           "url_template": server.url_template},
                                "download": {"retries": 0},
                                "engine": {"kind": "dask", "workers": workers, "task_clips": 1}})
                start = time.perf_counter()
                rows, _ = acquire(params, tmp / f"raw-{workers}", ontology)
                elapsed = time.perf_counter() - start
            failed = [r for r in rows if r["status"] != "ok"]
            if failed:
                raise SystemExit(f"{len(failed)} downloads failed: {failed[0]['error']}")
            results.append((workers, clips, elapsed))
            print(f"  download, {workers} workers: {clips} clips in {elapsed:.1f} s", file=sys.stderr)
    return results


def render_rates(ontology) -> list[tuple[str, int, float]]:
    """Rows/s in this process and on a 2-worker cluster, each timed on its second run, when
    the cluster is up and its workers have imported torch."""
    from distributed import LocalCluster

    results = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None) as cluster:
        root = Path(tmp)
        for name, engine in [("in-process, 1 worker", {}),
                             ("dask, 2 workers", {"kind": "dask", "address": cluster.scheduler_address})]:
            params = build_subset(root, ontology, source={"num_classes": 24, "clips_per_class": 24},
                                  subset={"max_per_class": 24}, engine=engine,
                                  render={"image_size": 128, "workers": 1, "shard_rows": 64})
            for _ in range(2):  # a warm-up, then the timed run
                shutil.rmtree(root / "shards", ignore_errors=True)
                start = time.perf_counter()
                report = render_into(root, params)
            results.append((name, sum(report["rows"].values()), time.perf_counter() - start))
    return results


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start


def bookkeeping(count: int) -> dict[str, dict[str, float]]:
    """dvc add/status/push of ``count`` 16 KB clips, one file each vs in shards."""
    results = {}
    for layout in ("one file per clip", f"shards of {SHARD_CLIPS}"):
        with tempfile.TemporaryDirectory() as tmp:
            repo, remote = Path(tmp) / "repo", Path(tmp) / "remote"
            clips = repo / "clips"
            clips.mkdir(parents=True)
            subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
            subprocess.run([*DVC, "init", "-q"], cwd=repo, check=True)
            subprocess.run([*DVC, "remote", "add", "-q", "-d", "store", str(remote)], cwd=repo, check=True)
            payload = [os.urandom(16_384) for _ in range(count)]
            if layout.startswith("one"):
                for number, data in enumerate(payload):
                    (clips / f"{number:07d}.flac").write_bytes(data)
            else:
                for shard, start in enumerate(range(0, count, SHARD_CLIPS)):
                    part = payload[start:start + SHARD_CLIPS]
                    write_shard(clips / f"part-{shard:05d}.parquet",
                                ((f"{start + i:07d}", data) for i, data in enumerate(part)))
            results[layout] = {"files": len(list(clips.iterdir())),
                               "add": timed([*DVC, "add", "-q", "clips"], repo),
                               "status": timed([*DVC, "status", "-q"], repo),
                               "push": timed([*DVC, "push", "-q"], repo)}
            print(f"  dvc, {count} clips, {layout}: {results[layout]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--latency", type=float, default=1.0, help="seconds added to each HTTP answer")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--clips-per-worker", type=int, default=8)
    parser.add_argument("--bookkeeping", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--skip", nargs="*", default=[], choices=["download", "render", "dvc"])
    args = parser.parse_args()
    ontology = Ontology.load()
    print(f"{os.cpu_count()} CPUs")
    if "download" not in args.skip:
        runs = download(args.latency, args.workers, args.clips_per_worker, ontology)
        one = runs[0][1] / runs[0][2] / runs[0][0]
        print(f"\ndownload through the engine, {args.latency:g} s per HTTP answer:")
        print("| workers | clips | seconds | clips/s | efficiency |\n|---|---|---|---|---|")
        for workers, clips, seconds in runs:
            rate = clips / seconds
            print(f"| {workers} | {clips} | {seconds:.1f} | {rate:.2f} | {rate / (one * workers):.0%} |")
    if "render" not in args.skip:
        print("\nrender (128 px, shards of 64 rows; second run of each):")
        print("| engine | rows | seconds | rows/s | rows/s per worker |\n|---|---|---|---|---|")
        for name, rows, seconds in render_rates(ontology):
            workers = 2 if "2" in name else 1
            print(f"| {name} | {rows} | {seconds:.1f} | {rows / seconds:.1f} | {rows / seconds / workers:.1f} |")
    if "dvc" not in args.skip:
        print("\nDVC bookkeeping (16 KB clips, local-folder remote), seconds:")
        print("| clips | layout | files | add | status | push |\n|---|---|---|---|---|---|")
        for count in args.bookkeeping:
            for layout, t in bookkeeping(count).items():
                print(f"| {count} | {layout} | {t['files']} | {t['add']:.1f} | {t['status']:.1f} | {t['push']:.1f} |")


if __name__ == "__main__":
    main()
