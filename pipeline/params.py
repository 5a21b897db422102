"""Typed, validated ``params.yaml``: every section together, for the ``specldm`` command,
profiles and tests. Stages load only the sections they read (:mod:`pipeline.config`).

The dataclass defaults in :mod:`pipeline.config` *are* the embedded default profile:
``params.yaml`` is their dump (a test keeps the two equal) and ``configs/<profile>.yaml`` files
hold only what a profile changes. ``specldm profile paper`` / ``specldm profile default``
rewrite ``params.yaml`` from them. ``python -m pipeline.params`` checks every section of
``params.yaml`` at once (``make run`` does, before ``dvc repro``).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.audio.spectrogram import SpectrogramSpec
from pipeline.config.core import PARAMS_YAML, SECTION_NAMES, ParamsError, Sections, build, read_params, read_yaml, show
from pipeline.config.engine import EngineParams
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.evaluator import EvaluatorParams
from pipeline.config.model import ModelParams, PretrainParams
from pipeline.config.sample import SCHEDULER_NAMES, VOCODER_CHOICES, SampleParams
from pipeline.config.source import DownloadParams, SourceParams
from pipeline.config.spectrogram import (
    RenderParams,
    SpectrogramParams,
    format_resolution,
    parse_resolution,
    spectrogram_spec,
)
from pipeline.config.subset import SubsetParams
from pipeline.config.train import TrainParams
from pipeline.config.vocoder import VocoderParams

__all__ = ["PARAMS_YAML", "SCHEDULER_NAMES", "VOCODER_CHOICES", "DownloadParams", "EngineParams", "EvaluateParams",
           "EvaluatorParams", "ModelParams", "Params", "ParamsError", "PretrainParams", "RenderParams", "SampleParams",
           "SourceParams", "SpectrogramParams", "SubsetParams", "TrainParams", "VocoderParams",
           "format_resolution", "load", "parse", "parse_resolution", "profile", "read_yaml",
           "render_profile", "write_profile"]

CONFIGS_DIR = Path("configs")


@dataclass(frozen=True)
class Params(Sections):
    source: SourceParams = field(default_factory=SourceParams)
    download: DownloadParams = field(default_factory=DownloadParams)
    engine: EngineParams = field(default_factory=EngineParams)
    spectrogram: SpectrogramParams = field(default_factory=SpectrogramParams)
    subset: SubsetParams = field(default_factory=SubsetParams)
    render: RenderParams = field(default_factory=RenderParams)
    model: ModelParams = field(default_factory=ModelParams)
    pretrain: PretrainParams = field(default_factory=PretrainParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluator: EvaluatorParams = field(default_factory=EvaluatorParams)
    vocoder: VocoderParams = field(default_factory=VocoderParams)
    sample: SampleParams = field(default_factory=SampleParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)

    def __post_init__(self) -> None:
        self.check_across()

    @property
    def spec(self) -> SpectrogramSpec:
        return spectrogram_spec(self.spectrogram, self.render)


def parse(raw: dict | None) -> Params:
    """Validate a params mapping; missing keys take the embedded defaults."""
    return build(Params, raw or {}, "")


def load(path: Path | str = PARAMS_YAML) -> Params:
    return parse(read_params(path))


def _merge(base: dict, overlay: dict, prefix: str = "") -> dict:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value, f"{prefix}{key}.")
        else:
            merged[key] = value
    return merged


PROFILE_HEADER = """\
# specldm parameters: profile '{name}'. Written by `specldm profile {name}`.
# Switch profile with `specldm profile paper` (the seed report's protocol) and back with
# `specldm profile default` (the offline CPU default). Edit values freely; each stage
# validates the sections it reads, and `make run` all of them first.
"""


PROFILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def profile(name: str) -> Params:
    """The embedded defaults with ``configs/<name>.yaml`` laid over them (``default``: none).
    A profile that begins ``extends: <other>`` is laid over that profile instead, so that a
    rehearsal of ``paper`` follows every later change to ``paper``."""
    return parse(_profile_dict(name, ()))


def _profile_dict(name: str, seen: tuple[str, ...]) -> dict:
    if name == "default":
        return Params().to_dict()
    if name in seen:
        raise ParamsError(f"profile {name!r} extends itself ({' -> '.join(seen + (name,))})")
    overlay_path = CONFIGS_DIR / f"{name}.yaml"
    # a name, never a path: "../../x/evil" would read a YAML from anywhere
    if not PROFILE_NAME.fullmatch(name) or not overlay_path.is_file():
        choices = ["default"] + sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise ParamsError(f"unknown profile {name!r}; choose from {', '.join(choices)}")
    overlay = read_yaml(overlay_path) or {}
    if not isinstance(overlay, dict):
        raise ParamsError(f"{overlay_path}: expected a mapping of sections, got {show(overlay)}")
    base = overlay.pop("extends", "default")
    if not isinstance(base, str):
        raise ParamsError(f"{overlay_path}: extends: must name one profile")
    return _merge(_profile_dict(base, seen + (name,)), overlay)


def render_profile(name: str) -> str:
    body = yaml.safe_dump(profile(name).to_dict(), sort_keys=False, default_flow_style=False)
    return PROFILE_HEADER.format(name=name) + body


def write_profile(name: str, path: Path | str) -> None:
    Path(path).write_text(render_profile(name))


if __name__ == "__main__":
    try:
        load()
    except ParamsError as error:
        sys.exit(f"params.yaml: {error}")
    print(f"{PARAMS_YAML}: every section valid ({', '.join(SECTION_NAMES)})", file=sys.stderr)
