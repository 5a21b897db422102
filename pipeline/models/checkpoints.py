"""Training checkpoints: ``models/checkpoints/step-NNNNNN/``, written whole or not at all.

Each holds ``checkpoint.json`` (step, fingerprint, loss log), the training state as
safetensors + JSON (:mod:`pipeline.models.tensorstate`: nothing is unpickled, so a
checkpoint from a shared DVC remote cannot run code) and the (EMA) U-Net in diffusers
format for per-checkpoint evaluation.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.files import write_json
from pipeline.models.tensorstate import StateError, load_state, save_state

CHECKPOINT_RECORD = "checkpoint.json"
STATE_SUBDIR = "state"


class CheckpointError(PipelineError):
    """A checkpoint of this run is damaged; the message names the folder to delete."""


def checkpoints(directory: Path) -> list[Path]:
    """Finished checkpoints, oldest first: ``step-N`` folders holding a checkpoint record
    (written last). Anything else there is never read."""
    found = [p for p in directory.glob("step-*")
             if p.name[5:].isdigit() and (p / CHECKPOINT_RECORD).is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def save_checkpoint(directory: Path, record: dict, state: dict, unet_for_sampling, keep: int) -> Path:
    """``step-NNNNNN/``: the record (step, fingerprint, log), the training state
    (safetensors + JSON, see :mod:`pipeline.models.tensorstate`) and the (EMA) U-Net in diffusers
    format for per-checkpoint evaluation. Written to a staging folder, then renamed."""
    final = directory / f"step-{record['step']:06d}"
    staging = directory / f".{final.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_state(state, staging / STATE_SUBDIR)
    if unet_for_sampling is not None:  # the vocoder's checkpoints have nothing to sample
        unet_for_sampling.save_pretrained(staging / "unet", safe_serialization=True)
    write_json(staging / CHECKPOINT_RECORD, record)
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    for old in checkpoints(directory)[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(directory: Path, expected: str) -> tuple[Path, dict, dict] | None:
    """(folder, record, state) of the newest checkpoint with this run's fingerprint.

    Only the small JSON record is read to decide; the state is loaded without unpickling
    anything, and only for the checkpoint resumed from. Checkpoints of another
    configuration, data or code are deleted (they cannot be resumed, and would pollute the
    per-checkpoint FID curve). A damaged one stops the run with the path to delete; folders
    that are not checkpoints are left alone, as found.
    """
    for partial in directory.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
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
        try:
            return path, record, load_state(path / STATE_SUBDIR)
        except StateError as error:
            raise CheckpointError(f"{error}; delete {path} to resume from the checkpoint before it") from None
    return None
