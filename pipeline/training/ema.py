"""The exponential moving average of a model's parameters, which is what gets sampled from.

Not diffusers' ``EMAModel``: its ``state_dict`` is a list of tensors with Python scalars
beside it, which our checkpoints (safetensors keyed by parameter name, nothing pickled) cannot
hold as they are; the average itself is the same (decay ``min(decay, (1 + t) / (10 + t))``).
"""

from __future__ import annotations

import copy

import torch


class EMA:
    """Exponential moving average of parameters, with the usual warm-up of the decay."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: p.detach().float().clone() for k, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, param in model.named_parameters():
            self.shadow[name].lerp_(param.detach().float(), 1 - decay)

    def restore(self, shadow: dict) -> None:
        """The average a checkpoint saved; ValueError unless it has this model's tensors."""
        if not isinstance(shadow, dict) or any(
                not isinstance(shadow.get(k), torch.Tensor) or shadow[k].shape != v.shape
                for k, v in self.shadow.items()):
            raise ValueError("its EMA weights are not this U-Net's")
        self.shadow = {k: shadow[k].float() for k in self.shadow}

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for name, param in model.named_parameters():
            param.copy_(self.shadow[name].to(param.dtype))


def with_ema(model: torch.nn.Module, ema: EMA | None) -> torch.nn.Module:
    """The weights to sample from: a copy carrying the EMA average, or the model itself."""
    if ema is None:
        return model
    averaged = copy.deepcopy(model)
    ema.copy_to(averaged)
    return averaged
