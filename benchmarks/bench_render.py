"""Render and read throughput, each against a baseline measured in the same run.

1. `render` with render.workers processes against one process: rows/s and MB/s written.
2. Reading training images through `iter_batches` from the shards, against decoding the
   same PNGs from one file per image in a folder.

    python benchmarks/bench_render.py [--classes 12] [--clips 10] [--image-size 512]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.audio.shards import iter_batches, shard_files
from pipeline.ontology import Ontology
from pipeline.params import parse
from pipeline.sources.manifest import read_manifest
from pipeline.sources.subset import build_index, write_subset
from pipeline.stages.acquire import acquire
from pipeline.stages.render import render


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    ontology = Ontology.load()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def params(workers):
            return parse({"source": {"num_classes": args.classes, "clips_per_class": args.clips},
                          "subset": {"mixtures": args.classes * 2, "min_per_class": 1},
                          "render": {"image_size": args.image_size, "workers": workers,
                                     "shard_rows": 32, "row_group_rows": 16}})

        acquire(params(1), tmp / "raw", ontology)
        table, report = build_index(read_manifest(tmp / "raw" / "manifest.parquet"), params(1).subset, ontology)
        write_subset(table, report, tmp / "subset")
        timings = {}
        for workers in (1, args.workers):
            start = time.perf_counter()
            result = render(params(workers), tmp / "subset" / "index.parquet", tmp / "raw",
                            tmp / f"shards{workers}")
            timings[workers] = (time.perf_counter() - start, result)
        rows = sum(timings[1][1]["rows"].values())
        print(f"rows={rows} image={args.image_size}x{args.image_size}")
        for workers, (seconds, result) in timings.items():
            print(f"render, {workers} process(es): {rows / seconds:7.1f} rows/s "
                  f"{result['bytes_written'] / 1e6 / seconds:6.1f} MB/s")
        print(f"render speed-up: {timings[1][0] / timings[args.workers][0]:.2f}x")

        shards = tmp / "shards1"
        folder = tmp / "png"
        folder.mkdir()
        count = 0
        for batch in iter_batches("train", ["id", "image"], root=shards):
            for image_id, image in zip(batch["id"], batch["image"]):
                Image.fromarray(image).save(folder / f"{image_id}.png", compress_level=3)
                count += 1
        start = time.perf_counter()
        from_folder = np.stack([np.asarray(Image.open(p).convert("L")) for p in sorted(folder.iterdir())])
        folder_seconds = time.perf_counter() - start
        start = time.perf_counter()
        from_shards = sum(len(b["image"]) for b in iter_batches("train", ["image"], batch_size=32, root=shards))
        shard_seconds = time.perf_counter() - start
        assert from_shards == len(from_folder) == count
        shard_bytes = sum(f.stat().st_size for f in shard_files("train", shards))
        print(f"read {count} images: shards {count / shard_seconds:7.1f} img/s "
              f"({shard_bytes / 1e6:.1f} MB incl. log-mels), PNG folder {count / folder_seconds:7.1f} img/s, "
              f"ratio {folder_seconds / shard_seconds:.2f}x")


if __name__ == "__main__":
    main()
