"""Fixed-step ODE solvers for dx/dt = v(x, t) between arbitrary times (forwards or backwards)."""
from __future__ import annotations

import math
from itertools import pairwise
from typing import Callable

import torch

SOLVER_EVALS = {"euler": 1, "heun": 2}


def n_steps(t_start: float, t_end: float, step_size: float) -> int:
    """Steps of size <= step_size covering [t_start, t_end] (0 if they coincide)."""
    span = abs(t_end - t_start)
    return 0 if span < 1e-12 else max(1, math.ceil(span / step_size - 1e-9))


def integrate(velocity: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, t_start: float,
              t_end: float, step_size: float, method: str = "euler") -> torch.Tensor:
    """Integrate from t_start to t_end with equal steps.

    Args:
        velocity: v(x, t) -> dx/dt, t a Python float.
        x: State at t_start.
        t_start, t_end: Times (t_end < t_start integrates backwards).
        step_size: Largest step; the span is split into `n_steps` equal steps.
        method: "euler" (order 1, one evaluation per step) or "heun" (order 2, two).

    Returns:
        State at t_end.
    """
    if method not in SOLVER_EVALS:
        raise ValueError(f"unknown solver {method!r}; available: {', '.join(SOLVER_EVALS)}")
    n = n_steps(t_start, t_end, step_size)
    ts = torch.linspace(t_start, t_end, n + 1, dtype=torch.float64).tolist()
    for t0, t1 in pairwise(ts):
        h = t1 - t0
        # 1. slope at the start of the step
        d0 = velocity(x, t0)
        if method == "euler":
            x = x + h * d0
            continue
        # 2. Heun: Euler predictor, then trapezoidal corrector with the slope at the end
        x_pred = x + h * d0
        d1 = velocity(x_pred, t1)
        x = x + 0.5 * h * (d0 + d1)
    return x
