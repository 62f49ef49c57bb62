"""Few-step students of a flow-matching teacher: guidance distillation and a two-time flow map (issue 34).

The teacher is MedShift's guided velocity v_w(x, t, c) = v(x, t, null) + w (v(x, t, c) - v(x, t, null))
(`MedShift.guided_velocity`), whose ODE translates in two legs: encode from t = 1 down to tau under the source
label, decode from tau back to 1 under the target label.

The student is one network u(x, s, t, c, w), the *average velocity* of the teacher's ODE from time s to time t:

    X(x, s -> t) = x + (t - s) u(x, s, t, c, w)              (a jump of any length, in either direction)

* At t = s it is the velocity itself, u(x, s, s, c, w) = v_w(x, s, c): **guidance distillation** (Meng et al., CVPR
  2023) is this network trained on zero-length jumps (`velocity_loss`), one evaluation where the teacher makes two.
* For s != t it is trained with the **MeanFlow identity** (Geng et al. 2025), with the teacher's velocity as the
  instantaneous one: differentiating (s - t) u(x_s, s, t) = x_s - x_t along the teacher's trajectory through x_s gives

      u(x, s, t) = v_w(x, s) - (s - t) d/ds u(x_s, s, t),   d/ds u = v_w(x, s) . d_x u + d_s u

  (a Jacobian-vector product with tangent (v_w, 1, 0) in (x, s, t)); `flowmap_loss` regresses u on the right-hand
  side with its gradient stopped. Nothing in it assumes s < t: the encode leg (backwards in time) and the decode
  leg are the same identity.
* Translation is then `jumps` evaluations per leg (`jump`): 2 to 4 network evaluations per image.

The states the student is trained on must include what translation asks it about: the decode leg starts from a state
of the *source* class under the *target* label, so training draws states from one class's marginal and the label
independently (`training_states`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

#: teacher(x, t, labels, w) -> the guided velocity (t, labels, w: (B,) tensors)
Teacher = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: student(x, s, t, labels, w) -> the average velocity from s to t
Student = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.dim() - 1)))


def velocity_loss(student: Student, teacher: Teacher, x: torch.Tensor, s: torch.Tensor, labels: torch.Tensor,
                  w: torch.Tensor) -> torch.Tensor:
    """Guidance distillation: the zero-length jump's average velocity against the teacher's guided velocity."""
    with torch.no_grad():
        target = teacher(x, s, labels, w)
    return (student(x, s, s, labels, w) - target).pow(2).mean()


def flowmap_loss(student: Student, teacher: Teacher, x: torch.Tensor, s: torch.Tensor, t: torch.Tensor,
                 labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The MeanFlow identity with the teacher's velocity (module docstring): MSE between u(x, s, t) and
    v_w(x, s) - (s - t) (v_w . d_x u + d_s u), the latter without gradient."""
    with torch.no_grad():
        v = teacher(x, s, labels, w)

    def u_of(x_, s_):
        return student(x_, s_, t, labels, w)

    u, du_ds = torch.func.jvp(u_of, (x, s), (v, torch.ones_like(s)))
    target = (v - _per_sample(s - t, x) * du_ds).detach()
    return (u - target).pow(2).mean()


@torch.no_grad()
def jump(student: Student, x: torch.Tensor, s: float, t: float, label: int, w: float, jumps: int = 1) -> torch.Tensor:
    """X(x, s -> t) in `jumps` equal jumps (one student evaluation each)."""
    b = x.shape[0]
    labels = torch.full((b,), label, dtype=torch.long, device=x.device)
    ww = torch.full((b,), float(w), dtype=x.dtype, device=x.device)
    times = torch.linspace(s, t, jumps + 1, dtype=torch.float64).tolist()
    for a, z in zip(times[:-1], times[1:], strict=True):
        sa = torch.full((b,), a, dtype=x.dtype, device=x.device)
        sz = torch.full((b,), z, dtype=x.dtype, device=x.device)
        x = x + (z - a) * student(x, sa, sz, labels, ww)
    return x


def training_states(x_1: torch.Tensor, n_labels: int, sigma_min: float, generator: torch.Generator | None = None,
                    times: str = "both") -> tuple:
    """(x_s, s, t, labels) for a batch of data `x_1`: x_s on the teacher's (conditional OT) path at s ~ U[0, 1] from
    the data's own class marginal, t ~ U[0, 1] (`times="both"`: either side of s; "zero": t = s), and labels drawn
    independently of the data's domain (the decode leg's state of one class under another label)."""
    b = x_1.shape[0]
    g = dict(generator=generator, device=x_1.device)
    s = torch.rand(b, **g)
    t = s.clone() if times == "zero" else torch.rand(b, **g)
    x_0 = torch.randn(x_1.shape, **g)
    a = _per_sample(1 - (1 - sigma_min) * s, x_1)
    x_s = a * x_0 + _per_sample(s, x_1) * x_1
    labels = torch.randint(0, n_labels, (b,), **g)
    return x_s, s, t, labels


class ScalarEmbedding(nn.Module):
    """A scalar (a time, a guidance weight) as sinusoidal features at `scale` then a two-layer MLP to `dim`."""

    def __init__(self, dim: int, scale: float = 1000.0, features: int = 32):
        super().__init__()
        self.scale, self.features = scale, features
        self.mlp = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        half = self.features // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=v.device, dtype=torch.float32) / half)
        arg = (v.float() * self.scale)[:, None] * freqs[None]
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=1))


class FlowMapNet(nn.Module):
    """u(x, s, t, c, w) on a diffusers U-Net: s is its timestep; the label (incl. the null label), the end time t and
    the guidance weight w are embedded and added to the time embedding (`class_embed_type="identity"`)."""

    def __init__(self, image_size: int, channels: int, base_channels: int, channel_mults: tuple[int, ...],
                 n_labels: int, layers_per_block: int = 1, time_scale: float = 1000.0):
        super().__init__()
        from diffusers.models.attention_processor import Attention, AttnProcessor

        from .unet import make_unet

        self.unet = make_unet(image_size, channels, channels, base_channels, tuple(channel_mults), layers_per_block,
                              class_embed_type="identity")
        # attention written out (torch's fused attention on CPU has no forward-mode derivative, which the
        # Jacobian-vector product of `flowmap_loss` needs); the same maths
        for module in self.unet.modules():
            if isinstance(module, Attention):
                module.set_processor(AttnProcessor())
        dim = self.unet.time_embedding.linear_2.out_features
        self.time_scale = time_scale
        self.label = nn.Embedding(n_labels, dim)
        self.end = ScalarEmbedding(dim, time_scale)
        self.weight = ScalarEmbedding(dim, 100.0)

    def forward(self, x, s, t, labels, w):
        cond = self.label(labels) + self.end(t) + self.weight(w)
        return self.unet(x, s * self.time_scale, class_labels=cond).sample
