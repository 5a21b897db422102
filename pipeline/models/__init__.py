"""The diffusion model's parts, generation, the evaluator network and training checkpoints."""

import contextlib

import torch

from pipeline.errors import PipelineError


class OutOfMemory(PipelineError):
    """Training ran out of memory; the message names the settings that lower it."""


def compute_device() -> torch.device:
    """Where models run outside training (accelerate places those): the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def is_out_of_memory(error: BaseException) -> bool:
    """A GPU's OutOfMemoryError, or the CPU allocator's plain RuntimeError saying the same."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    message = str(error)
    return "DefaultCPUAllocator" in message or "can't allocate memory" in message


@contextlib.contextmanager
def advice_when_out_of_memory(advice: str):
    """Around a training loop: running out of memory ends it with ``advice`` (the settings to
    lower), not an allocator's traceback."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(f"out of memory: {advice}") from None
