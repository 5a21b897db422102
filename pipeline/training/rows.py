"""Rows too many for memory, in a temporary file: what the training loops draw batches from."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import torch


class RowFile:
    """Fixed-shape float32 rows written once to an unnamed temporary file (in ``TMPDIR``) and
    read back by index: memory holds only the rows a batch asks for, however many there are.
    Plain reads, not a memory map, whose pages would stay resident."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape, self.count = tuple(shape), 0
        self.row_bytes = 4 * int(np.prod(shape))
        self.file = tempfile.TemporaryFile()

    def append(self, rows: torch.Tensor) -> None:
        self.file.write(rows.float().contiguous().numpy().tobytes())
        self.count += len(rows)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, rows) -> torch.Tensor:
        self.file.flush()
        data = b"".join(os.pread(self.file.fileno(), self.row_bytes, int(i) * self.row_bytes) for i in rows)
        return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(len(rows), *self.shape).copy())
