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


@dataclass(frozen=True)
class BridgePath:
    """Brownian-bridge stochastic interpolant between noise and data (Tong et al. 2024, SB-CFM; Albergo et al. 2023).

    x_t = (1 - t) x_0 + t x_1 + sigma sqrt(t (1 - t)) z,  z ~ N(0, I) drawn per sample,
    dx_t/dt = x_1 - x_0 + sigma (1 - 2t) / (2 sqrt(t (1 - t))) z.

    The regression target's expectation given x_t is the velocity of an ODE with the same marginals, so the
    network trained on it is integrated by the same solvers as the OT path. sigma = 0 is the linear interpolant
    (CondOTPath with sigma_min = 0). The z coefficient diverges at t in {0, 1}; it is evaluated at t clipped to
    [T_CLIP, 1 - T_CLIP] (x_t itself is exact).
    """

    sigma: float = 0.1
    T_CLIP = 1e-5

    def sample(self, x_0: torch.Tensor, x_1: torch.Tensor, t: torch.Tensor,
               z: torch.Tensor | None = None) -> PathSample:
        z = torch.randn_like(x_1) if z is None else z
        tt = t.view(-1, *([1] * (x_1.dim() - 1))).to(x_1.dtype)
        x_t = (1 - tt) * x_0 + tt * x_1 + self.sigma * (tt * (1 - tt)).sqrt() * z
        tc = tt.clamp(self.T_CLIP, 1 - self.T_CLIP)
        dx_t = x_1 - x_0 + self.sigma * (1 - 2 * tc) / (2 * (tc * (1 - tc)).sqrt()) * z
        return PathSample(x_0, x_1, x_t, dx_t, t)


def make_path(name: str, sigma_min: float = 1e-4, bridge_sigma: float = 0.1):
    """`condot` (the paper's path) or `bridge` (our Schrodinger-bridge extension)."""
    if name == "condot":
        return CondOTPath(sigma_min)
    if name == "bridge":
        if bridge_sigma < 0:
            raise ValueError(f"bridge_sigma must be >= 0, got {bridge_sigma}")
        return BridgePath(bridge_sigma)
    raise ValueError(f"unknown path {name!r}; use condot or bridge")
