"""The diffusion model's parts, generation, the evaluator network and training checkpoints."""

import torch


def compute_device() -> torch.device:
    """Where models run outside training (accelerate places those): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
