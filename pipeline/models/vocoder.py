"""Log-mel -> waveform: Griffin-Lim, or the neural vocoder that ``train_vocoder`` trains.

The neural vocoder is Vocos (Siuzdak, 2023; the ``vocos`` package's modules, no weights):
a ConvNeXt backbone over mel frames and a head that predicts each frame's STFT, magnitude
and phase, which one inverse STFT turns into audio. No upsampling layers, so it runs many
times faster than Griffin-Lim's 64 STFT round trips. Our mel is coarse (hop 1250, 78 ms),
so, as for Griffin-Lim, it is first interpolated in time onto ``vocoder_hop_length``.

``models/vocoder/`` holds ``vocoder.safetensors`` and ``config.json`` (the architecture,
the SpectrogramSpec it was trained for, and its validation scores against Griffin-Lim);
:func:`load_vocoder` refuses one made for another spec. :func:`vocoder_for` is what the
``sample`` stage and ``specldm generate`` call.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from vocos.heads import ISTFTHead
from vocos.models import VocosBackbone

from pipeline.audio.spectrogram import (
    SpecError,
    SpectrogramSpec,
    interpolate_frames,
    log_mel_to_waveform,
    waveform_to_log_mel,
)
from pipeline.config.vocoder import VOCODER_LIMITS
from pipeline.errors import ModelError
from pipeline.files import atomic_path, is_finite_number

VOCODERS = ("griffin_lim", "neural")
WEIGHTS = "vocoder.safetensors"
CONFIG = "config.json"
# What a vocoder's input and output mean. The image geometry, and how Griffin-Lim runs, do not matter to it.
AUDIO_FIELDS = ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min", "f_max", "min_db", "max_db",
                "vocoder_hop_length")
STFT_RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop) of the multi-resolution STFT


@dataclass(frozen=True)
class VocoderShape:
    dim: int = 256
    intermediate_dim: int = 768
    num_layers: int = 8
    n_fft: int = 1024  # of the inverse STFT, at spec.vocoder_hop_length


class NeuralVocoder(torch.nn.Module):
    """``(B, n_mels, frames)`` dB -> ``(B, frames * hop_length)`` waveform."""

    def __init__(self, spec: SpectrogramSpec, shape: VocoderShape):
        super().__init__()
        self.spec, self.shape = spec, shape
        self.backbone = VocosBackbone(spec.n_mels, shape.dim, shape.intermediate_dim, shape.num_layers)
        self.head = ISTFTHead(shape.dim, shape.n_fft, spec.vocoder_hop_length, padding="same")

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        frames = log_mel.shape[-1]
        length = frames * spec.hop_length
        unit = (log_mel - spec.min_db) / (spec.max_db - spec.min_db)
        fine = interpolate_frames(unit, spec.vocoder_hop_length / spec.hop_length,
                                  -(-length // spec.vocoder_hop_length))
        audio = self.head(self.backbone(fine))
        return F.pad(audio, (0, max(0, length - audio.shape[-1])))[..., :length]

    def save(self, directory: Path, validation: dict | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / WEIGHTS) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict().items()}, tmp)
        config = {"architecture": "vocos", "shape": dataclasses.asdict(self.shape),
                  "spectrogram_spec": dataclasses.asdict(self.spec), "validation": validation or {}}
        with atomic_path(directory / CONFIG) as tmp:
            tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_vocoder_config(directory: Path) -> dict:
    try:
        config = json.loads((Path(directory) / CONFIG).read_text())
    except FileNotFoundError:
        raise ModelError(f"no neural vocoder at {directory}; run `dvc repro train_vocoder` "
                         "(or use the griffin_lim vocoder)") from None
    except ValueError as error:
        raise ModelError(f"{directory / CONFIG} is not valid JSON ({error})") from None
    if not isinstance(config, dict) or config.get("architecture") != "vocos":
        raise ModelError(f"{directory / CONFIG} does not describe a specldm vocoder")
    return config


def load_vocoder(directory: Path | str, spec: SpectrogramSpec | None = None) -> NeuralVocoder:
    """The vocoder saved in ``directory`` (safetensors: nothing is unpickled). With ``spec``,
    a vocoder trained for different audio settings is refused: it would misread every mel.
    The config's shape is checked against the bounds ``vocoder.*`` has in params.yaml, and the
    weight file's tensors against that shape before anything is allocated."""
    directory = Path(directory)
    config = read_vocoder_config(directory)
    try:
        trained_for = SpectrogramSpec.from_dict(config.get("spectrogram_spec"), str(directory / CONFIG))
        shape = vocoder_shape(config.get("shape"))
    except (SpecError, ValueError) as error:
        raise ModelError(f"{directory / CONFIG}: {error}") from None
    if spec is not None:
        differ = [f"{f}={getattr(trained_for, f)} (model: {getattr(spec, f)})"
                  for f in AUDIO_FIELDS if getattr(trained_for, f) != getattr(spec, f)]
        if differ:
            raise ModelError(f"the vocoder at {directory} was trained for another SpectrogramSpec: "
                             f"{', '.join(differ)}; retrain it (`dvc repro train_vocoder`) or use griffin_lim")
    unreadable = f"{directory / WEIGHTS}: unreadable or not the architecture {CONFIG} describes"
    with torch.device("meta"):  # shapes only: a config of absurd size allocates nothing
        expected = {k: tuple(v.shape) for k, v in NeuralVocoder(trained_for, shape).state_dict().items()}
    try:  # one handle: the shapes are read before any tensor, the tensors only if they fit
        with safe_open(directory / WEIGHTS, "pt") as weights:
            found = {k: tuple(weights.get_slice(k).get_shape()) for k in weights.keys()}
            tensors = {k: weights.get_tensor(k) for k in weights.keys()} if found == expected else None
    except (OSError, SafetensorError) as error:
        raise ModelError(f"{unreadable} ({error}); run `dvc repro train_vocoder`") from None
    if tensors is None:
        raise ModelError(f"{unreadable} (its tensors differ); run `dvc repro train_vocoder`")
    broken = sorted(k for k, v in tensors.items() if not torch.isfinite(v).all())
    if broken:
        raise ModelError(f"{directory / WEIGHTS}: {broken[0]} holds NaN or infinite weights; "
                         "run `dvc repro train_vocoder`")
    vocoder = NeuralVocoder(trained_for, shape)
    vocoder.load_state_dict(tensors)
    return vocoder.eval()


def vocoder_shape(raw) -> VocoderShape:
    """A config's ``shape``, each field a whole number within the bounds of ``vocoder.*``."""
    fields = [f.name for f in dataclasses.fields(VocoderShape)]
    if not isinstance(raw, dict) or sorted(raw) != sorted(fields):
        raise ValueError(f"shape must have exactly the fields {', '.join(fields)}")
    for name in fields:
        value, most = raw[name], VOCODER_LIMITS[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise ValueError(f"shape.{name} is {value!r}, not a whole number in 1..{most}")
    return VocoderShape(**raw)


def better_vocoder(validation: dict) -> str:
    """Of ``{name: scores}`` on the validation clips, the vocoder whose audio is closest to their mels."""
    return min(VOCODERS, key=lambda name: validation[name]["mel_l1_db"])


def chosen_vocoder(directory: Path) -> str:
    """The vocoder that scored better on the validation clips when ``directory`` was trained."""
    validation = read_vocoder_config(directory).get("validation")
    scores = [validation.get(name) if isinstance(validation, dict) else None for name in VOCODERS]
    if not all(isinstance(score, dict) and is_finite_number(score.get("mel_l1_db")) for score in scores):
        raise ModelError(f"{directory / CONFIG} records no usable validation scores to choose a vocoder "
                         f"by (a finite mel_l1_db for each of {', '.join(VOCODERS)}); name one "
                         "(griffin_lim or neural), or run `dvc repro train_vocoder`")
    return better_vocoder(validation)


Vocode = Callable[[torch.Tensor, int], np.ndarray]


def vocoder_for(name: str, spec: SpectrogramSpec, directory: Path | str) -> tuple[str, Vocode]:
    """(the vocoder's name, a function ``(log_mel, seed) -> waveform``) for ``name`` in
    ``auto`` (the one chosen on validation), ``griffin_lim`` or ``neural``."""
    directory = Path(directory)
    if name == "auto":
        name = chosen_vocoder(directory)
    if name == "griffin_lim":
        return name, lambda log_mel, seed: griffin_lim(log_mel, spec, seed)
    if name == "neural":
        vocoder = load_vocoder(directory, spec)
        return name, lambda log_mel, seed: neural(vocoder, log_mel)
    raise ModelError(f"unknown vocoder {name!r}; choose auto, {' or '.join(VOCODERS)}")


def griffin_lim(log_mel: torch.Tensor, spec: SpectrogramSpec, seed: int = 0) -> np.ndarray:
    return np.clip(log_mel_to_waveform(log_mel, spec, seed=seed).numpy(), -1.0, 1.0)


@torch.inference_mode()
def neural(vocoder: NeuralVocoder, log_mel: torch.Tensor) -> np.ndarray:
    audio = vocoder(torch.as_tensor(log_mel, dtype=torch.float32).unsqueeze(0))[0]
    return np.clip(audio.numpy(), -1.0, 1.0)


def resynthesis_scores(vocode: Vocode, batches: Iterable[dict], spec: SpectrogramSpec,
                       listen: Callable[[torch.Tensor, dict], np.ndarray] | None = None) -> dict:
    """Each log-mel of a split's batches (:meth:`~pipeline.audio.waveforms.SplitAudio.batches`)
    vocoded one at a time (batch 1, timed, its place in the split as its seed) and its audio
    re-analysed with the spec: per clip, ``mel_l1_db`` (against the log-mel, in dB), ``mrstft``
    (against the real audio) and, given ``listen``, ``heard``: what ``listen(audio, batch)``
    makes of each batch's audio, which is then let go; ``real_time_factor`` (audio seconds per
    second of vocoding: a timing, for ``metrics/timings/`` and benchmarks, never a tracked metric)."""
    mel_errors, distances, heard, busy, seconds = [], [], [], 0.0, 0.0
    for batch in batches:
        audio = []
        for log_mel, real in zip(torch.from_numpy(batch["log_mel"]), batch["waveform"]):
            started = time.perf_counter()
            audio.append(torch.from_numpy(vocode(log_mel, len(mel_errors))))
            busy += time.perf_counter() - started
            mel_errors.append(float((waveform_to_log_mel(audio[-1], spec) - log_mel).abs().mean()))
            distances.append(float(stft_distance(audio[-1], real)))
            seconds += len(real) / spec.sample_rate
        if listen is not None:
            heard.append(listen(torch.stack(audio), batch))
    return {"mel_l1_db": np.array(mel_errors), "mrstft": np.array(distances),
            "heard": np.concatenate(heard) if heard else np.zeros(0), "real_time_factor": seconds / busy}


def stft_distance(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT distance (Yamamoto et al., 2020): spectral convergence plus
    log-magnitude L1, averaged over :data:`STFT_RESOLUTIONS`. Phase-blind, as hearing
    nearly is; the vocoder's training loss and its ``mrstft`` score."""
    total = 0.0
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=real.device)
        a, b = (torch.stft(x, n_fft, hop, window=window, return_complex=True).abs().clamp_min(1e-5)
                for x in (generated, real))
        convergence = torch.linalg.norm(b - a, dim=(-2, -1)) / torch.linalg.norm(b, dim=(-2, -1))
        total = total + convergence.mean() + (a.log() - b.log()).abs().mean()
    return total / len(STFT_RESOLUTIONS)
