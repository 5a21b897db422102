"""``spectrogram`` and ``render``: the SpectrogramSpec they make together, and the ``<H>x<W>`` geometries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipeline.audio.spectrogram import SpecError, SpectrogramSpec
from pipeline.config.core import ParamsError, require, show


@dataclass(frozen=True)
class SpectrogramParams:
    """Every SpectrogramSpec field except the image size, which is ``render.image_size``."""

    sample_rate: int = SpectrogramSpec.sample_rate
    clip_seconds: float = SpectrogramSpec.clip_seconds
    n_fft: int = SpectrogramSpec.n_fft
    hop_length: int = SpectrogramSpec.hop_length
    n_mels: int = SpectrogramSpec.n_mels
    f_min: float = SpectrogramSpec.f_min
    f_max: float = SpectrogramSpec.f_max
    min_db: float = SpectrogramSpec.min_db
    max_db: float = SpectrogramSpec.max_db
    resize_mode: str = SpectrogramSpec.resize_mode
    griffin_lim_iters: int = SpectrogramSpec.griffin_lim_iters
    vocoder_hop_length: int = SpectrogramSpec.vocoder_hop_length

    def check_against(self, sections) -> None:
        if "render" in vars(sections):
            spectrogram_spec(self, sections.render)


MAX_IMAGE_SIZE = 2048  # 4x the paper's 512; beyond it one image outgrows any GPU


@dataclass(frozen=True)
class RenderParams:
    # Training image side. The paper upsamples 128x128 mels to 512; the CPU default trains smaller.
    image_size: int = 128
    shard_rows: int = 256
    row_group_rows: int = 32
    workers: int = 2

    def __post_init__(self) -> None:
        require(8 <= self.image_size <= MAX_IMAGE_SIZE, "render.image_size",
                f"must be within [8, {MAX_IMAGE_SIZE}]")
        require(self.shard_rows >= 1, "render.shard_rows", "must be at least 1")
        require(1 <= self.row_group_rows <= self.shard_rows, "render.row_group_rows",
                "must be within [1, render.shard_rows]")
        require(self.workers >= 1, "render.workers", "must be at least 1")


def spectrogram_spec(spectrogram: SpectrogramParams, render: RenderParams) -> SpectrogramSpec:
    """The SpectrogramSpec the two sections describe; a combination it refuses is a ParamsError
    naming the key."""
    values = dataclasses.asdict(spectrogram) | {"image_size": render.image_size}
    try:
        return SpectrogramSpec(**values)
    except SpecError as error:
        key = str(error).split("=")[0].removeprefix("SpectrogramSpec.")
        group = "render" if key == "image_size" else "spectrogram"
        raise ParamsError(f"{group}.{key}: {error}") from None


def parse_resolution(text: str, key: str = "resolution") -> tuple[int, int]:
    """"64x400" -> (64, 400), both positive multiples of 8, written as ``format_resolution``
    writes them: the text names the sample folder, so "064x64" would name one nobody reads."""
    parts = text.split("x")
    ok = len(parts) == 2 and all(p.isdigit() and 0 < int(p) <= MAX_IMAGE_SIZE and int(p) % 8 == 0
                                 for p in parts)
    require(ok, key, f"{show(text)} is not '<H>x<W>' with H and W positive multiples of 8 "
                      f"up to {MAX_IMAGE_SIZE}")
    height, width = int(parts[0]), int(parts[1])
    require(text == format_resolution(height, width), key,
            f"write {show(text)} as {format_resolution(height, width)!r}")
    return height, width


def format_resolution(height: int, width: int) -> str:
    return f"{height}x{width}"
