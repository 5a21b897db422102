"""Checkpoints from a shared DVC remote or a user's folder are data, never trusted code or
trusted numbers: a record that disagrees with its folder, a link, a state of other shapes or
a full disk each stop the run with one line naming the folder, and never lose an older one."""

import errno
import json

import pytest
import torch

import pipeline.models.checkpoints as checkpoints_module
import pipeline.stages.train_vocoder as vocoder_stage
from pipeline.models.checkpoints import CheckpointError, checkpoints, latest_checkpoint, restoring, save_checkpoint

from conftest import tiny_audio

FINGERPRINT = "f" * 16


def write(directory, step, **record):
    state = {"weights": torch.arange(4.0)}
    return save_checkpoint(directory, {"step": step, "fingerprint": FINGERPRINT, "loss": 0.5, "history": [],
                                       **record}, state, None, keep=5)


def tamper(folder, **fields):
    record = json.loads((folder / "checkpoint.json").read_text())
    (folder / "checkpoint.json").write_text(json.dumps({**record, **fields}))


def test_an_honest_checkpoint_is_resumed(tmp_path):
    write(tmp_path, 2)
    folder, record, state = latest_checkpoint(tmp_path, FINGERPRINT, steps=4)
    assert folder.name == "step-000002" and record["step"] == 2 and torch.equal(state["weights"], torch.arange(4.0))


@pytest.mark.parametrize("step, message", [
    (1_000_000_000_000, r"step 1000000000000 is not the folder's \(2\)"),
    (-5, r"step -5 is not the folder's"),
    ("4", r"step is '4', not a whole number"),
    (2.5, r"step is 2\.5, not a whole number"),
    (True, r"step is True, not a whole number"),
    (None, r"step is None"),
])
def test_a_record_whose_step_is_not_its_folders_is_refused(tmp_path, step, message):
    tamper(write(tmp_path, 2), step=step)
    with pytest.raises(CheckpointError, match=message + r".*delete .*step-000002"):
        latest_checkpoint(tmp_path, FINGERPRINT, steps=4)


def test_a_checkpoint_beyond_the_runs_steps_is_refused(tmp_path):
    """Folder and record agree on a step this run never reaches: shipping it would skip training."""
    write(tmp_path, 10**12)
    with pytest.raises(CheckpointError, match=r"step 1000000000000 is outside this run's 1\.\.4"):
        latest_checkpoint(tmp_path, FINGERPRINT, steps=4)


@pytest.mark.parametrize("fields, message", [
    ({"loss": "nan"}, "loss is 'nan'"),
    ({"loss": float("inf")}, "loss is inf"),
    ({"history": {"a": 1}}, "history is not a list"),
])
def test_other_fields_of_the_wrong_type_are_refused(tmp_path, fields, message):
    tamper(write(tmp_path, 2), **fields)
    with pytest.raises(CheckpointError, match=message):
        latest_checkpoint(tmp_path, FINGERPRINT, steps=4)


@pytest.mark.parametrize("fingerprint", [FINGERPRINT, "another run"])
def test_a_linked_checkpoint_folder_is_refused_and_its_target_kept(tmp_path, fingerprint):
    elsewhere = tmp_path / "elsewhere"
    made = write(elsewhere, 2, fingerprint=fingerprint)
    mine = tmp_path / "checkpoints"
    mine.mkdir()
    (mine / "step-000002").symlink_to(made, target_is_directory=True)
    with pytest.raises(CheckpointError, match=r"step-000002 is a link.*delete it"):
        latest_checkpoint(mine, FINGERPRINT, steps=4)
    assert (made / "checkpoint.json").is_file()


def test_folders_that_only_look_like_steps_are_ignored(tmp_path):
    write(tmp_path, 2)
    for name in ("step-²", "step-٣", "step-", "step-1x"):  # "²".isdigit() is True, int("²") fails
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.json").write_text("{}")
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000002"]
    assert latest_checkpoint(tmp_path, FINGERPRINT, steps=4)[0].name == "step-000002"


def test_a_full_disk_keeps_the_checkpoints_before(tmp_path, monkeypatch):
    write(tmp_path, 2)

    def disk_full(state, directory):
        (directory / "half").parent.mkdir(parents=True, exist_ok=True)
        (directory / "half").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints_module, "save_state", disk_full)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint .*step-000004 \(No space left on "
                                              r"device\); free space"):
        write(tmp_path, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000002"]


def test_a_state_that_does_not_fit_the_model_is_a_checkpoint_error(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"step-000002 does not fit this run \(.*size mismatch"):
        with restoring(tmp_path / "step-000002"):
            model.load_state_dict({"weight": torch.zeros(5, 5), "bias": torch.zeros(2)})


@pytest.mark.parametrize("part", ["/vocoder/", "/optimizer/state/"])
def test_the_vocoder_stage_refuses_a_checkpoint_of_other_shapes(tmp_path, tiny_shards, part):
    from safetensors.torch import load_file, save_file

    shards, params = tiny_shards
    run = lambda: vocoder_stage.train_vocoder(params, *tiny_audio(shards), tmp_path / "vocoder",  # noqa: E731
                                              tmp_path / "checkpoints")
    run()
    last = checkpoints(tmp_path / "checkpoints")[-1]
    state = last / "state" / "state.safetensors"
    tensors = load_file(state)
    name = next(k for k in tensors if k.startswith(part) and tensors[k].dim() == 3)
    tensors[name] = torch.zeros(1, 1, 1)
    save_file(tensors, state)
    with pytest.raises(CheckpointError, match=f"{last.name} does not fit this run"):
        run()
