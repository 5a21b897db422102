"""Data order: each micro-batch's rows and random generator from ``(seed, index)`` alone."""

from __future__ import annotations

import functools

import numpy as np
import torch


def micro_batch_rows(index: int, rows: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of micro-batch ``index``: consecutive slices of one seeded permutation per epoch."""
    start = index * batch_size
    picked: list[int] = []
    while len(picked) < batch_size:
        epoch, offset = divmod(start + len(picked), rows)
        picked.extend(_epoch_order(rows, seed, epoch)[offset:offset + batch_size - len(picked)])
    return np.asarray(picked)


@functools.lru_cache(maxsize=4)
def _epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(rows)


def micro_batch_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)
