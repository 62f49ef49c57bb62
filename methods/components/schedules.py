"""Learning-rate schedules shared by the methods."""
from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """Linear warm-up to the base rate over `warmup_steps`, then cosine decay to 0 at `total_steps`.

    Returns:
        A Lightning `lr_scheduler` config dict stepped every optimisation step.
    """
    warm, total = max(1, warmup_steps), max(1, total_steps)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}


def constant_then_linear(optimizer: torch.optim.Optimizer, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The junyanz reference's `linear` policy: the base rate for the first half, then linear decay towards 0.

    The reference keeps the rate for `n_epochs` and decays it over `n_epochs_decay` (100 + 100 by default), stepped
    per epoch: factor 1 - max(0, k - half) / (half + 1). Here k counts iterations (the caller steps it once per
    iteration), half = total_steps // 2.
    """
    half = max(1, total_steps // 2)

    def factor(step: int) -> float:
        return 1.0 - max(0, step - half) / float(half + 1)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
