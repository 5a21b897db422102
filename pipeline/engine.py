"""Where the data stages' partitions run: here, or as tasks on a Dask cluster (``engine.*``).

A stage hands :meth:`Engine.map` a function and its partitions and gets the results back in
partition order, whichever worker finished first, so what the stage writes from them is the
same bytes on any engine with any number of workers. On Dask, a task whose worker dies is
run again on another (``distributed.scheduler.allowed-failures`` times, 3 by default), so a
lost worker costs the partitions it held, not the run.

Dask rather than Ray: a pure-Python wheel, a local cluster up in about a second on a laptop,
and a scheduler the stage can start itself (no head node to run first) or reach by address.
"""

from __future__ import annotations

import contextlib
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pipeline.config.engine import EngineParams
from pipeline.errors import PipelineError


class EngineError(PipelineError, RuntimeError):
    """The cluster cannot be reached, or lost a task more often than it may retry."""


class LocalEngine:
    """The partitions in this process, one after another."""

    @staticmethod
    def map(function: Callable, partitions: Iterable) -> Iterator:
        return map(function, partitions)


class DaskEngine:
    """Partitions as Dask tasks, at most ``2 × workers`` in flight (the results wait in the
    scheduler's memory until read, so the window bounds it)."""

    def __init__(self, client):
        self.client = client

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def map(self, function: Callable, partitions: Iterable) -> Iterator:
        from distributed import KilledWorker

        window: deque = deque()
        partitions = iter(partitions)
        while True:
            in_flight = 2 * self.workers  # asked once a result: workers may come and go while it runs
            while len(window) < in_flight and (partition := next(partitions, _END)) is not _END:
                window.append(self.client.submit(function, partition, pure=False))
            if not window:
                return
            try:
                yield window.popleft().result()
            except KilledWorker as error:
                raise EngineError(f"a task killed its workers too often ({error}); see the workers' logs") from None


_END: Any = object()


@contextlib.contextmanager
def open_engine(params: EngineParams):
    """The engine ``params`` ask for, started (and stopped after the block) if it is a local
    cluster."""
    if params.kind == "local":
        yield LocalEngine()
        return
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        if params.address:
            try:
                client = stack.enter_context(Client(params.address, timeout="30s"))
            except OSError as error:
                raise EngineError(f"engine.address: no Dask scheduler answers at {params.address} "
                                  f"({error}); start one with `dask scheduler`, workers with "
                                  f"`dask worker {params.address}`") from None
        else:
            cluster = stack.enter_context(LocalCluster(
                n_workers=params.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None, silence_logs=40))
            client = stack.enter_context(Client(cluster))
        print(f"engine: dask, {len(client.scheduler_info(n_workers=-1)['workers'])} workers at "
              f"{client.scheduler.address}", file=sys.stderr)
        yield DaskEngine(client)
