"""Atomic writes: a killed stage leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

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


def write_json(path: Path | str, value) -> None:
    """Indented JSON with a final newline, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2) + "\n")


def is_finite_number(value) -> bool:
    """Whether a value read from JSON is a number we can compute with: not a bool (JSON's
    ``true`` is an int to Python), not NaN and not infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """16-bit mono FLAC, as the bytes of a file."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def write_flac(path: Path | str, audio: np.ndarray, sample_rate: int) -> None:
    """:func:`flac_bytes`, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(flac_bytes(audio, sample_rate))


def remove_partials(folder: Path) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
    partials = list(Path(folder).glob(f".*{TMP_SUFFIX}"))
    for partial in partials:
        partial.unlink()
    return len(partials)


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
