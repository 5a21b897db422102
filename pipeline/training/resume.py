"""One resumable training run, as ``train`` and ``train_vocoder`` share it.

A run is known by its fingerprint: the settings that change what is trained (logging and
checkpoint cadence left out), the code that trains (its import closure) and digests of its
data. A checkpoint resumes only the run with its fingerprint; checkpoints of changed
settings, data or code are not continued but retrained (see
:func:`pipeline.models.checkpoints.latest_checkpoint`). Every random draw of a step must come
from ``(seed, step)`` for a resumed run to reach an unbroken one's weights: that part is the
loop's (:mod:`pipeline.training.order`).
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.models.checkpoints import checkpoints, latest_checkpoint, restoring, save_checkpoint
from pipeline.provenance import code_digest

# Settings that change how a run is logged and checkpointed, not what it trains.
CADENCE_KEYS = ("checkpoint_every", "keep_checkpoints", "log_every")


class TrainingError(PipelineError, RuntimeError):
    """Training cannot go on; the message says why and what to change."""


def run_fingerprint(settings: dict, code_module: str, data: Iterable[str | bytes]) -> str:
    """The run's identity: ``settings`` without :data:`CADENCE_KEYS`, the code closure of
    ``code_module`` and each part of ``data`` (file digests, or bytes)."""
    kept = {k: v for k, v in settings.items() if k not in CADENCE_KEYS}
    digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode())
    digest.update(code_digest(code_module).encode())
    for part in data:
        digest.update(part if isinstance(part, bytes) else part.encode())
    return digest.hexdigest()[:16]


@dataclass
class Progress:
    """Where the run stands: the step reached, the last loss and the log so far."""

    step: int = 0
    loss: float = float("nan")
    history: list[dict] = field(default_factory=list)


class ResumableRun:
    """A run of ``steps`` optimiser steps checkpointed into ``directory`` every ``every`` steps
    (and at the end), keeping the newest ``keep``; it starts from this fingerprint's newest
    checkpoint, if there is one."""

    def __init__(self, directory: Path, fingerprint: str, steps: int, every: int, keep: int):
        self.directory, self.fingerprint = directory, fingerprint
        self.steps, self.every, self.keep = steps, every, keep
        self.resumed = latest_checkpoint(directory, fingerprint, steps)  # (folder, record, state)
        self.progress = Progress()
        if self.resumed is not None:
            _, record, _ = self.resumed
            self.progress = Progress(record["step"], record["loss"], record["history"])
            print(f"resuming from {self.resumed[0]} (step {self.progress.step})", file=sys.stderr)
        self.start_step = self.progress.step

    def restore(self, load: Callable[[dict], None]) -> None:
        """``load(state)`` of the checkpoint resumed from, if any: a state that does not fit the
        run's model and optimiser stops it with the folder to delete."""
        if self.resumed is None:
            return
        path, _, state = self.resumed
        with restoring(path):
            load(state)

    def record(self, step: int, loss: float, advice: str) -> None:
        """Step ``step`` (counted from 1) ended with ``loss``; a loss that is not finite stops
        the run, naming the last good checkpoint and ``advice``."""
        self.progress.step, self.progress.loss = step, loss
        if not math.isfinite(loss):
            last = checkpoints(self.directory)
            raise TrainingError(f"loss became {loss} at step {step}; stopped. The last good checkpoint is "
                                f"{last[-1] if last else 'none (no checkpoint yet)'}. {advice}")

    def due(self, every: int | None = None) -> bool:
        """Whether the step just recorded is one to act on every ``every`` steps (checkpoints by
        default); the last step always is."""
        step = self.progress.step
        return step % (every or self.every) == 0 or step == self.steps

    def save(self, state: dict, unet_for_sampling=None) -> Path:
        record = {"step": self.progress.step, "fingerprint": self.fingerprint, "loss": self.progress.loss,
                  "history": self.progress.history}
        return save_checkpoint(self.directory, record, state, unet_for_sampling, self.keep)
