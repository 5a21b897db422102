"""``engine``: where ``acquire`` and ``render`` run their per-partition work."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require

ENGINE_KINDS = ("local", "dask")


@dataclass(frozen=True)
class EngineParams:
    """Where the data stages' partitions run. Not what they make: the outputs are the same
    bytes on any engine and any number of workers, so dvc.yaml does not list it."""

    # local: this machine's processes (download.workers, render.workers); dask: tasks on a
    # Dask cluster, the one at `address` (tcp://host:8786), or with no address one started
    # here on 127.0.0.1 with `workers` processes
    kind: str = "local"
    address: str = ""
    workers: int = 2
    # clips per task: a worker lost mid-task loses (and the cluster retries) at most these
    task_clips: int = 16

    def __post_init__(self) -> None:
        require(self.kind in ENGINE_KINDS, "engine.kind", f"must be one of {ENGINE_KINDS}")
        require(self.workers >= 1, "engine.workers", "must be at least 1")
        require(self.task_clips >= 1, "engine.task_clips", "must be at least 1")
        require(not self.address or self.kind == "dask", "engine.address", "is for engine.kind: dask")
