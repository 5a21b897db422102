"""`accelerate launch` of the train stage in 2 CPU processes (gloo), as a multi-GPU run would
go: the weights of one process taking the same micro-batches, and a kill survived."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import ROOT, tiny_params

pytestmark = pytest.mark.slow  # every test here reproduces or trains

STEPS, CHECKPOINT_EVERY = 24, 2
# Two processes average their gradients in another order than one process accumulating them:
# float rounding at most (the weights themselves move by ~1e-2 over these steps).
TOLERANCE = 1e-5


def stage_folder(path: Path, shards: Path, base: Path, gradient_accumulation: int) -> Path:
    """A repository as the train stage sees it: shards, base model and params.yaml."""
    (path / "data").mkdir(parents=True)
    (path / "data" / "shards").symlink_to(shards)
    (path / "models").mkdir()
    (path / "models" / "pretrained").symlink_to(base)
    params = tiny_params(train={"steps": STEPS, "batch_size": 2, "gradient_accumulation": gradient_accumulation,
                                "checkpoint_every": CHECKPOINT_EVERY, "log_every": 1, "vae_steps": 2})
    (path / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    return path


def train_command(processes: int) -> list[str]:
    stage = ["-m", "pipeline.stages.train"]
    if processes == 1:
        return [sys.executable, *stage]
    with socket.socket() as probe:  # a free port for the processes to meet at
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(port), *stage]


def start(folder: Path, processes: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(train_command(processes), cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(run: subprocess.Popen) -> None:
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output


def unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "models" / "finetuned" / "unet" / "diffusion_pytorch_model.safetensors")


def test_two_processes_train_what_one_does_and_resume_after_a_kill(tmp_path, tiny_shards, tiny_base):
    shards, _ = tiny_shards
    # one process accumulating 2 micro-batches of 2 = two processes taking 2 each
    single = stage_folder(tmp_path / "single", shards, tiny_base, gradient_accumulation=2)
    double = stage_folder(tmp_path / "double", shards, tiny_base, gradient_accumulation=1)
    reference = start(single, 1)

    run = start(double, 2)
    first = double / "models" / "checkpoints" / f"step-{CHECKPOINT_EVERY:06d}" / "checkpoint.json"
    while not first.exists() and run.poll() is None:
        time.sleep(0.02)
    # the launcher and its workers (torch's elastic agent starts them in sessions of their own),
    # as when the machine goes down
    for process in [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]:
        process.kill()
    output, _ = run.communicate()
    assert first.exists() and not (double / "models" / "finetuned").exists(), f"not killed mid-run:\n{output}"

    finish(start(double, 2))
    finish(reference)
    report = json.loads((double / "metrics" / "train.json").read_text())
    assert report["processes"] == 2 and "resumed_from_step" not in report  # how it ran: not tracked
    assert json.loads((double / "metrics" / "timings" / "train.json").read_text())["resumed_from_step"] \
        >= CHECKPOINT_EVERY
    assert json.loads((single / "metrics" / "timings" / "train.json").read_text())["resumed_from_step"] == 0
    one, two = unet(single), unet(double)
    start_weights = load_file(tiny_base / "unet" / "diffusion_pytorch_model.safetensors")
    moved = max(float((one[k] - start_weights[k]).abs().max()) for k in one)
    gap = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert moved > 100 * TOLERANCE and gap < TOLERANCE, (moved, gap)
    # the same learning-rate schedule step by step (accelerate would step it once per process)
    logs = [json.loads((f / "models" / "checkpoints" / f"step-{STEPS:06d}" / "checkpoint.json").read_text())
            for f in (single, double)]
    assert [r["lr"] for r in logs[0]["history"]] == [r["lr"] for r in logs[1]["history"]]
