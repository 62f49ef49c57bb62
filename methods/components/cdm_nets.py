"""Networks of the cross-conditioned diffusion model (CDM, Xing et al., MICCAI 2024) in 2-D: an image encoder to a
compact vector, the masked-patch representation model, the vector denoiser, and the condition embedding.

Plain `nn.Module`s; `methods/cdm.py` composes them and documents the choices.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _levels(image_size: int, min_side: int = 4) -> int:
    n = int(round(math.log2(image_size / min_side)))
    if min_side * 2**n != image_size or n < 1:
        raise ValueError(f"CDM's encoders need image_size = 4 * 2^k (k >= 1), got {image_size}")
    return n


class ImageEncoder(nn.Module):
    """(B, 1, H, W) -> (B, dim): stride-2 convolutions down to 4x4 (GroupNorm, SiLU), flatten, linear, then a
    LayerNorm without affine parameters, so every code has zero mean and unit variance over its entries (a scale
    the vector diffusion model can assume).

    Args:
        image_size: Input side (4 * 2^k).
        channels: Filters of the first level; doubled per level up to 8x.
        dim: Code length.
    """

    def __init__(self, image_size: int, channels: int = 16, dim: int = 64):
        super().__init__()
        layers, c_in = [], 1
        for i in range(_levels(image_size)):
            c_out = channels * min(2**i, 8)
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out), nn.SiLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * 16, dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.head(self.features(x).flatten(1)))


class ImageDecoder(nn.Module):
    """(B, dim) -> (B, 1, H, W) in [-1, 1]: linear to 4x4 features, transposed convolutions up, tanh."""

    def __init__(self, image_size: int, channels: int = 16, dim: int = 64):
        super().__init__()
        n = _levels(image_size)
        widths = [channels * min(2**i, 8) for i in range(n)]
        self.c0 = widths[-1]
        self.head = nn.Linear(dim, self.c0 * 16)
        layers = []
        for i in reversed(range(n)):
            c_out = widths[i - 1] if i > 0 else channels
            layers += [nn.ConvTranspose2d(widths[i], c_out, 4, stride=2, padding=1), nn.GroupNorm(min(8, c_out), c_out),
                       nn.SiLU()]
        layers += [nn.Conv2d(channels, 1, 3, padding=1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(z).view(len(z), self.c0, 4, 4))


def patch_mask(shape: tuple[int, ...], patch: int, ratio: float, generator: torch.Generator | None = None,
               device=None) -> torch.Tensor:
    """A (B, 1, H, W) mask, 1 on a random `ratio` of the non-overlapping `patch` x `patch` tiles of each image."""
    b, _, h, w = shape
    gh, gw = h // patch, w // patch
    n_mask = max(1, round(ratio * gh * gw))
    scores = torch.rand(b, gh * gw, generator=generator, device="cpu")
    tiles = torch.zeros(b, gh * gw)
    tiles.scatter_(1, scores.argsort(dim=1)[:, :n_mask], 1.0)
    mask = tiles.view(b, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
    return mask.to(device) if device is not None else mask


class RepresentationModel(nn.Module):
    """The Modality-specific Representation Model: a masked-patch autoencoder of one modality whose bottleneck is
    the compact representation z of an image. Trained by reconstructing masked patches (L2 on them only)."""

    def __init__(self, image_size: int, channels: int = 16, dim: int = 64, patch: int = 8, mask_ratio: float = 0.5):
        super().__init__()
        if patch < 1 or image_size % patch:
            fits = max(d for d in range(1, max(1, min(patch, image_size)) + 1) if image_size % d == 0)
            raise ValueError(f"patch={patch} does not tile {image_size}x{image_size} images: the patch size must "
                             f"divide the image size (e.g. patch={fits})")
        self.encoder = ImageEncoder(image_size, channels, dim)
        self.decoder = ImageDecoder(image_size, channels, dim)
        self.patch, self.mask_ratio = patch, mask_ratio

    def loss(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean squared error on the masked patches of `x` reconstructed from its visible ones (masked pixels
        set to 0, the mid grey of [-1, 1])."""
        mask = patch_mask(x.shape, self.patch, self.mask_ratio, device=x.device) if mask is None else mask
        x_rec = self.decoder(self.encoder(x * (1 - mask)))
        return ((x_rec - x) ** 2 * mask).sum() / mask.sum().clamp(min=1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, width), nn.Linear(width, width)
        self.emb = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.silu(self.fc1(nn.functional.silu(self.norm(h))) + self.emb(emb)))


class VectorDenoiser(nn.Module):
    """The Modality-decoupled Diffusion Network: eps(z_t, t, c) for codes z (B, dim), conditioned on a source code c,
    built of linear layers and residual blocks (the time and condition embeddings added in every block)."""

    def __init__(self, dim: int = 64, width: int = 256, n_blocks: int = 3):
        super().__init__()
        self.width = width
        self.inp = nn.Linear(dim, width)
        self.time = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.cond = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width))
        self.blocks = nn.ModuleList(_ResidualBlock(width) for _ in range(n_blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.width)) + self.cond(c)
        h = self.inp(z_t)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
