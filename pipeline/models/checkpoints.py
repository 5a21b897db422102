"""Training checkpoints: ``models/checkpoints/step-NNNNNN/``, written whole or not at all.

Each holds ``checkpoint.json`` (step, fingerprint, loss log), the training state as
safetensors + JSON (:mod:`pipeline.models.tensorstate`: nothing is unpickled, so a
checkpoint from a shared DVC remote cannot run code) and the (EMA) U-Net in diffusers
format for per-checkpoint evaluation.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from pathlib import Path

import torch

from pipeline.errors import PipelineError
from pipeline.files import is_finite_number, write_json
from pipeline.models.tensorstate import StateError, load_state, save_state

CHECKPOINT_RECORD = "checkpoint.json"
STATE_SUBDIR = "state"
FOLDER = re.compile(r"step-([0-9]+)")  # ASCII digits only: "step-²" is not a checkpoint


class CheckpointError(PipelineError):
    """A checkpoint of this run is damaged; the message names the folder to delete."""


def folder_step(path: Path) -> int | None:
    """N of a ``step-N`` folder name, or None for any other name."""
    match = FOLDER.fullmatch(path.name)
    return int(match[1]) if match else None


def checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints, oldest first: ``step-N`` folders holding a checkpoint record
    (written last). Anything else there is never read."""
    found = [p for p in directory.glob("step-*")
             if folder_step(p) is not None and (p / CHECKPOINT_RECORD).is_file()]
    return sorted(found, key=folder_step)


def save_checkpoint(directory: Path, record: dict, state: dict, unet_for_sampling, keep: int) -> Path:
    """``step-NNNNNN/``: the record (step, fingerprint, log), the training state
    (safetensors + JSON, see :mod:`pipeline.models.tensorstate`) and the (EMA) U-Net in diffusers
    format for per-checkpoint evaluation. Written to a staging folder, then renamed."""
    final = directory / f"step-{record['step']:06d}"
    staging = directory / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        save_state(state, staging / STATE_SUBDIR)
        if unet_for_sampling is not None:  # the vocoder's checkpoints have nothing to sample
            unet_for_sampling.save_pretrained(staging / "unet", safe_serialization=True)
        write_json(staging / CHECKPOINT_RECORD, record)
    except OSError as error:  # a full disk, most often: the checkpoints before this one stay
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(f"could not write the checkpoint {final} ({error.strerror or error}); "
                              f"free space under {directory} and run again: it resumes from the "
                              "last checkpoint written") from None
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(directory: Path, expected: str, steps: int) -> tuple[Path, dict, dict] | None:
    """(folder, record, state) of the newest checkpoint with this run's fingerprint, for a run
    of ``steps`` steps.

    Only the small JSON record is read to decide; the state is loaded without unpickling
    anything, and only for the checkpoint resumed from. Checkpoints of another
    configuration, data or code are deleted (they cannot be resumed, and would pollute the
    per-checkpoint FID curve). A damaged one, or one whose record disagrees with its folder
    (a step that is not the folder's, or beyond this run's), stops the run with the path to
    delete; so does a ``step-N`` link, which would ship weights made elsewhere. Folders that
    are not checkpoints are left alone, as found.
    """
    for partial in directory.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    linked = sorted(p for p in directory.glob("step-*") if p.is_symlink())
    if linked:
        raise CheckpointError(f"{linked[0]} is a link; this run writes its checkpoints there itself "
                              "and never follows links: delete it")
    finished = checkpoints(directory)
    strangers = sorted(set(directory.glob("step-*")) - set(finished))
    if strangers:
        print(f"ignoring {', '.join(map(str, strangers))}: not checkpoints of this "
              "pipeline (no checkpoint record)", file=sys.stderr)
    for path in reversed(finished):
        try:
            record = json.loads((path / CHECKPOINT_RECORD).read_text())
        except ValueError as error:
            raise CheckpointError(f"{path / CHECKPOINT_RECORD} is damaged ({error}); delete {path} "
                                  "to resume from the checkpoint before it") from None
        if not isinstance(record, dict) or record.get("fingerprint") != expected:
            shutil.rmtree(path)
            continue
        problem = record_problem(record, folder_step(path), steps)
        if problem:
            raise CheckpointError(f"{path / CHECKPOINT_RECORD}: {problem}; delete {path} to resume "
                                  "from the checkpoint before it")
        try:
            return path, record, load_state(path / STATE_SUBDIR)
        except StateError as error:
            raise CheckpointError(f"{error}; delete {path} to resume from the checkpoint before it") from None
    return None


def record_problem(record: dict, folder: int, steps: int) -> str | None:
    """Why a checkpoint record with this run's fingerprint cannot be trusted, or None."""
    step, loss, history = record.get("step"), record.get("loss"), record.get("history")
    if not isinstance(step, int) or isinstance(step, bool):
        return f"step is {step!r}, not a whole number"
    if step != folder:
        return f"step {step} is not the folder's ({folder})"
    if not 0 < step <= steps:
        return f"step {step} is outside this run's 1..{steps}"
    if not is_finite_number(loss):
        return f"loss is {loss!r}, not a finite number"
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "history is not a list of log rows"
    return None


@contextlib.contextmanager
def restoring(path: Path):
    """Around loading a checkpoint's state into the run's model, optimiser and schedule: a
    state that does not fit them (missing tensors, other shapes or types) stops the run with
    the folder to delete, not a traceback."""
    try:
        yield
    except (KeyError, RuntimeError, TypeError, ValueError, IndexError) as error:
        reason = " ".join(str(error).split())[:300] or type(error).__name__
        raise CheckpointError(f"{path} does not fit this run ({reason}); delete {path} to resume "
                              "from the checkpoint before it") from None


def load_optimizer(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` and the check it leaves out: each moment has its
    parameter's shape (a wrong one would only fail at the next step, as a traceback)."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            for name, value in optimizer.state.get(parameter, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != parameter.shape:
                    raise ValueError(f"optimizer {name} of shape {tuple(value.shape)} for a parameter "
                                     f"of shape {tuple(parameter.shape)}")
