"""Stage ``render``: subset rows -> mel images in ``data/shards/<split>/part-NNNNN.parquet``.

Shards are written by a pool of worker processes (:mod:`pipeline.audio.shard_writer`: each
shard atomically, then a record beside it), and a shard is kept only while it is intact, was
written by the same code and made from the same rows, clips, spec and layout. So a run killed half
way finishes the rest without redoing what is done (``data/shards`` is a persistent DVC
output), while a changed clip, changed code or a damaged shard is rendered again. Rows
whose audio is missing, unreadable, not 16 kHz mono, truncated, silent or not finite
(NaN, inf) are skipped and listed, by reason, in ``data/shards/report.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from pipeline.audio.shard_writer import is_reusable, plan_shards, record_path, render_shard
from pipeline.config.core import PARAMS_YAML, Sections, load_sections
from pipeline.config.engine import EngineParams
from pipeline.config.spectrogram import RenderParams, SpectrogramParams, spectrogram_spec
from pipeline.config.subset import SubsetParams
from pipeline.engine import open_engine
from pipeline.errors import stage_main
from pipeline.files import remove_partials, write_json
from pipeline.paths import RAW_DIR, SHARDS_DIR, SPLITS, SUBSET_DIR
from pipeline.processes import die_with_parent


def render(params: Sections, index_path: Path = SUBSET_DIR / "index.parquet",
           raw_dir: Path = RAW_DIR, out_dir: Path = SHARDS_DIR) -> dict:
    config = params.render
    tasks = plan_shards(pq.read_table(index_path), spectrogram_spec(params.spectrogram, config),
                        params.subset.mix_domain, config.shard_rows, config.row_group_rows, raw_dir, out_dir)
    for split in SPLITS:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
        remove_partials(out_dir / split)
    planned = {task.path for task in tasks} | {record_path(task.path) for task in tasks}
    for stale in out_dir.glob("*/part-*"):
        if stale not in planned:
            stale.unlink()
    reused, todo = [], []
    for task in tasks:
        (reused if is_reusable(task) else todo).append(task)
    report = {"rows": Counter(), "skipped": [], "bytes_written": 0,
              "shards": len(tasks), "shards_reused": len(reused)}
    earlier = _earlier_skips(out_dir) if reused else []
    for task in reused:
        report["rows"][task.split] += pq.read_metadata(task.path).num_rows
        report["skipped"] += [s for s in earlier if (s["split"], s["shard"]) == (task.split, task.path.name)]
    progress = tqdm(total=sum(len(t.rows) for t in todo), desc="render", unit="row", file=sys.stderr)
    if params.engine.kind == "local":
        pool, function = _shard_pool(min(params.render.workers, len(todo))), render_shard
    else:  # the cluster's workers read data/raw and write data/shards: a folder they all mount
        pool, function = open_engine(params.engine), render_shard_on_one_thread
    with pool as runner:
        for task, (split, written, skipped, size) in zip(todo, runner.map(function, todo)):
            report["rows"][split] += written
            report["skipped"] += [dict(id=i, split=split, reason=r, shard=task.path.name) for i, r in skipped]
            report["bytes_written"] += size
            progress.update(len(task.rows))
    progress.close()
    report["rows"] = dict(report["rows"])
    report["skipped_by_reason"] = dict(Counter(s["reason"] for s in report["skipped"]))
    # The file describes the data; how much this run reused or wrote is only returned, so a
    # re-run gives a byte-identical report.
    facts = {key: report[key] for key in ("rows", "shards", "skipped", "skipped_by_reason")}
    write_json(out_dir / "report.json", facts)
    return report


class _InProcess:
    """The pool interface without processes: one worker is not worth a spawn (~2 s of imports).
    It renders on one thread, as each pool worker does: the STFT's sums are grouped by thread
    count, so a shard rendered here must not differ in its last bits from one rendered there."""

    map = staticmethod(map)

    def __enter__(self):
        self.threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        return False


def render_shard_on_one_thread(task):
    """:func:`render_shard` as a cluster task: on one thread, as every local worker renders."""
    torch.set_num_threads(1)
    return render_shard(task)


def _start_worker(parent_pid: int) -> None:
    die_with_parent(parent_pid)
    torch.set_num_threads(1)  # one process per core beats threads fighting over cores


def _shard_pool(workers: int):
    if workers <= 1:
        return _InProcess()
    # spawn, not fork: forking a process whose torch/OpenMP threads have run can deadlock.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))


def _earlier_skips(out_dir: Path) -> list[dict]:
    """Skips the previous run recorded, kept for the shards this run reuses."""
    try:
        return json.loads((out_dir / "report.json").read_text())["skipped"]
    except (OSError, KeyError, ValueError):
        return []


@stage_main("render")
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(PARAMS_YAML))
    args = parser.parse_args(argv)
    report = render(load_sections(args.params, render=RenderParams, subset=SubsetParams,
                                  spectrogram=SpectrogramParams, engine=EngineParams))
    print(f"rows per split {report['rows']}; {len(report['skipped'])} skipped "
          f"{report['skipped_by_reason']}; {report['shards_reused']} of {report['shards']} shards "
          f"reused; {report['bytes_written'] / 1e6:.1f} MB written", file=sys.stderr)


if __name__ == "__main__":
    main()
