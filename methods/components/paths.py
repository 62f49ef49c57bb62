"""Probability paths for flow matching (Lipman et al. 2023; Tong et al. 2024), as plain tensor math.

Convention (as in MedShift/GenerativeZoo): t = 0 is noise x_0 ~ N(0, I), t = 1 is data x_1.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PathSample:
    """A point on the path: x_t and the conditional target velocity dx_t at time t (shape (B,))."""

    x_0: torch.Tensor
    x_1: torch.Tensor
    x_t: torch.Tensor
    dx_t: torch.Tensor
    t: torch.Tensor


@dataclass(frozen=True)
class CondOTPath:
    """Conditional optimal-transport path with minimal noise sigma_min (Lipman et al. 2023, Eq. 20-23).

    x_t = (1 - (1 - sigma_min) t) x_0 + t x_1,  dx_t/dt = x_1 - (1 - sigma_min) x_0.
    """

    sigma_min: float = 1e-4

    def sample(self, x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor) -> PathSample:
        tt = t.view(-1, *([1] * (x_1.dim() - 1))).to(x_1.dtype)
        x_t = (1 - (1 - self.sigma_min) * tt) * x_0 + tt * x_1
        dx_t = x_1 - (1 - self.sigma_min) * x_0
        return PathSample(x_0, x_1, x_t, dx_t, t)
