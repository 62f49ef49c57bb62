"""Exponential moving average of a module's weights (kept as a submodule, so checkpoints carry it)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """`shadow` follows `model` as shadow <- d * shadow + (1 - d) * model, d = min(decay, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        n = float(self.num_updates)
        d = min(self.decay, (1 + n) / (10 + n))
        for p_ema, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1 - d)
        for b_ema, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)
