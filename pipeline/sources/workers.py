"""Worker processes with a wall-clock limit per task.

Each worker is ``python -m <module>``: it reads a setup line, answers ``ready`` once it
has loaded what it needs, then reads one JSON task a line and answers one JSON line per
task. A task past its deadline has its worker killed together with everything the
worker started (yt-dlp's ffmpeg), and the worker is replaced. Plain subprocesses rather than
multiprocessing: a killed worker cannot corrupt a shared queue, and starting one imports only
the worker's module, not the parent's (torch).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pipeline

TIMEOUT = "timeout"
CRASHED = "worker_crashed"


class WorkerStartError(RuntimeError):
    """A worker exited before it said ``ready``: it would fail the same way every time."""


@dataclass
class _Worker:
    process: subprocess.Popen
    ready: bool = False
    task: dict | None = None
    started: float = 0.0


class WorkerPool:
    def __init__(self, module: str, setup: str, processes: int, timeout_seconds: float,
                 log_dir: Path):
        self.module, self.setup, self.timeout = module, setup, timeout_seconds
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.selector = selectors.DefaultSelector()
        self.workers = [self._start(slot) for slot in range(processes)]

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self, slot: int) -> _Worker:
        log = self.log_dir / f"worker-{slot}.log"
        package_root = str(Path(pipeline.__file__).resolve().parents[1])
        env = os.environ | {"PYTHONPATH": os.pathsep.join(
            p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        with open(log, "a") as stderr:
            # its own session: Ctrl-C reaches only the parent, which stops workers itself,
            # and a kill of the process group takes ffmpeg along
            process = subprocess.Popen([sys.executable, "-m", self.module], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=stderr, text=True,
                                       start_new_session=True, env=env)
        process.stdin.write(self.setup + "\n")
        process.stdin.flush()
        worker = _Worker(process)
        self.selector.register(process.stdout, selectors.EVENT_READ, worker)
        return worker

    @property
    def idle(self) -> int:
        return sum(w.ready and w.task is None for w in self.workers)

    @property
    def busy(self) -> int:
        return sum(w.task is not None for w in self.workers)

    def submit(self, task: dict) -> None:
        worker = next(w for w in self.workers if w.ready and w.task is None)
        worker.task, worker.started = task, time.monotonic()
        worker.process.stdin.write(json.dumps(task) + "\n")
        worker.process.stdin.flush()

    def wait(self, timeout: float) -> list[tuple[dict, dict | None, str | None]]:
        """Finished tasks as (task, reply, None), or (task, None, TIMEOUT | CRASHED)."""
        done = []
        for key, _ in self.selector.select(timeout):
            worker = key.data
            line = worker.process.stdout.readline()
            if not worker.ready:
                if not line:
                    raise WorkerStartError(f"a {self.module} worker exited before it was ready; "
                                           f"see {self.log_dir}/worker-*.log")
                worker.ready = True
                continue
            task, worker.task = worker.task, None
            if line:
                done.append((task, json.loads(line), None))
            else:
                done.append((task, None, CRASHED))
                self._replace(worker)
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.task is not None and now - worker.started > self.timeout:
                done.append((worker.task, None, TIMEOUT))
                self._replace(worker)
        return [d for d in done if d[0] is not None]

    def crash_detail(self, lost: str) -> str:
        if lost == TIMEOUT:
            return f"no result within download.timeout_seconds={self.timeout:g}"
        return f"the worker process died; see {self.log_dir}/worker-*.log"

    def _replace(self, worker: _Worker) -> None:
        slot = self.workers.index(worker)
        self._stop(worker)
        self.workers[slot] = self._start(slot)

    def _stop(self, worker: _Worker) -> None:
        self.selector.unregister(worker.process.stdout)
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        worker.process.wait()
        for pipe in (worker.process.stdin, worker.process.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def close(self) -> None:
        for worker in self.workers:
            self._stop(worker)
        self.workers = []
        self.selector.close()
