"""``vocoder``: the neural vocoder's architecture and training."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require

# Far beyond any vocoder that fits a GPU (Vocos: dim 512, 8 layers, n_fft 1024): a typo past
# these would allocate until the machine gives up, so it is refused here.
VOCODER_LIMITS = {"dim": 8192, "intermediate_dim": 32768, "num_layers": 128, "n_fft": 65536,
                  "batch_size": 65536, "crop_frames": 65536}


@dataclass(frozen=True)
class VocoderParams:
    seed: int = 0
    steps: int = 4000
    batch_size: int = 16
    crop_frames: int = 16  # mel frames per training crop (16 x 78 ms = 1.25 s at the default spec)
    learning_rate: float = 2e-3  # AdamW, cosine decay to zero
    mel_weight: float = 2.0  # of the mel error in dB, beside the multi-resolution STFT distance
    dim: int = 128
    intermediate_dim: int = 384
    num_layers: int = 6
    n_fft: int = 1024  # of the inverse STFT head, at spectrogram.vocoder_hop_length
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 50

    def __post_init__(self) -> None:
        require(self.seed >= 0, "vocoder.seed", "must not be negative")
        for key in ("steps", "batch_size", "crop_frames", "dim", "intermediate_dim", "num_layers",
                    "checkpoint_every", "keep_checkpoints", "log_every"):
            require(getattr(self, key) >= 1, f"vocoder.{key}", "must be at least 1")
        require(self.learning_rate > 0, "vocoder.learning_rate", "must be positive")
        require(self.mel_weight >= 0, "vocoder.mel_weight", "must not be negative")
        require(self.n_fft >= 16 and self.n_fft % 2 == 0, "vocoder.n_fft", "must be an even number, at least 16")
        for key, most in VOCODER_LIMITS.items():
            require(getattr(self, key) <= most, f"vocoder.{key}", f"must be at most {most}")

    def check_against(self, sections) -> None:
        if "spectrogram" in vars(sections):
            hop = sections.spectrogram.vocoder_hop_length
            require(self.n_fft > hop, "vocoder.n_fft", f"must exceed spectrogram.vocoder_hop_length={hop} "
                    "(the inverse STFT's frames must overlap)")
