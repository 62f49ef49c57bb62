"""Minibatch couplings of noise and data for flow matching (Tong et al. 2024; Pooladian et al. 2023).

Instead of pairing each data sample with an independent noise draw, the batch's noise is re-assigned to the
data by an optimal-transport plan on squared Euclidean cost: `reg = 0` is the exact assignment (OT-CFM),
`reg > 0` the entropic plan (Sinkhorn; with reg = 2 sigma^2 the static Schrodinger bridge that SB-CFM pairs with
the Brownian-bridge path). Straighter conditional paths make few-step ODE solves more accurate.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def sq_cost(x_0: torch.Tensor, x_1: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances between flattened samples."""
    return torch.cdist(x_0.flatten(1).double(), x_1.flatten(1).double()).pow(2)


def sinkhorn_plan(cost: torch.Tensor, reg: float, n_iter: int = 200, tol: float = 1e-9) -> torch.Tensor:
    """Entropic OT plan with uniform marginals: log-domain Sinkhorn with epsilon scaling (the regularisation
    decreases geometrically from the cost's scale to `reg`, carrying the potentials), stable for small reg."""
    n, m = cost.shape
    log_a = torch.full((n,), -np.log(n), dtype=cost.dtype)
    log_b = torch.full((m,), -np.log(m), dtype=cost.dtype)
    f, g = torch.zeros(n, dtype=cost.dtype), torch.zeros(m, dtype=cost.dtype)  # potentials in cost units
    start = max(float(cost.max()), reg)
    n_scales = int(np.ceil(np.log(start / reg) / np.log(4.0))) + 1
    for i, eps in enumerate(np.geomspace(start, reg, n_scales)):
        for it in range(n_iter if i == n_scales - 1 else 10):  # a warm start needs few iterations per scale
            f = eps * (log_a - torch.logsumexp((g[None, :] - cost) / eps, dim=1))
            g = eps * (log_b - torch.logsumexp((f[:, None] - cost) / eps, dim=0))
            if i == n_scales - 1 and it % 10 == 9:  # columns are exact after the g update; stop when rows are too
                rows = torch.logsumexp((f[:, None] + g[None, :] - cost) / eps, dim=1)
                if float((rows - log_a).abs().max()) < tol:
                    break
    return ((f[:, None] + g[None, :] - cost) / reg).exp()


@torch.no_grad()
def couple(x_0: torch.Tensor, x_1: torch.Tensor, reg: float = 0.0, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """Noise re-ordered (reg = 0) or re-sampled (reg > 0) so that row i is x_1[i]'s partner under the plan.

    Args:
        x_0: Noise batch (B, ...).
        x_1: Data batch (B, ...), kept in place (its labels stay valid).
        reg: Entropic regularisation in units of the squared distance; 0 = exact assignment.
    """
    cost = sq_cost(x_0, x_1).cpu()
    if reg == 0:
        rows, cols = linear_sum_assignment(cost.numpy())
        order = np.empty_like(rows)
        order[cols] = rows
        return x_0[torch.as_tensor(order, device=x_0.device)]
    plan = sinkhorn_plan(cost, reg)
    idx = torch.multinomial(plan.T.float(), 1, generator=generator).squeeze(1)  # x_0 partner of each x_1
    return x_0[idx.to(x_0.device)]
