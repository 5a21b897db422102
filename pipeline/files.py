"""Atomic writes: a killed stage leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf

TMP_SUFFIX = ".partial"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_flac(path: Path | str, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit mono FLAC, written atomically."""
    with atomic_path(path) as tmp:
        sf.write(tmp, audio, sample_rate, format="FLAC", subtype="PCM_16")


def remove_partials(folder: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    partials = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    for partial in partials:
        partial.unlink()
    return len(partials)
