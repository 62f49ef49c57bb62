"""First-stage autoencoders for latent-space methods (diffusers `AutoencoderKL`).

Two sources: a user's pretrained folder (e.g. `sd-vae-ft-mse` saved with `save_pretrained`, loaded
offline, 3-channel input: grey is repeated and the decoded channels averaged; its `scaling_factor`,
0.18215 for the SD VAE, is used), or a small KL autoencoder the suite trains on the dataset's
training split (L1 reconstruction + a small KL term). A suite-trained autoencoder is cached under
`<cache>/autoencoders/<key>/` (safetensors via `save_pretrained`) and reused by every seed and method
run with the same data and settings; its scaling factor is 1 / std of the training latents (LDM).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .cache import cache_key


def default_cache_dir() -> Path:
    return Path(os.environ.get("XRAYBENCH_CACHE", "results/cache"))


def make_autoencoder(image_channels: int = 1, latent_channels: int = 4, channels: tuple[int, ...] = (32, 64, 64),
                     layers_per_block: int = 1, norm_groups: int = 8):
    """A small `AutoencoderKL`; spatial downsampling 2^(len(channels) - 1)."""
    from diffusers import AutoencoderKL

    n = len(channels)
    return AutoencoderKL(in_channels=image_channels, out_channels=image_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                         latent_channels=latent_channels, norm_num_groups=norm_groups)


def load_pretrained(path: str | Path):
    """A local diffusers AutoencoderKL folder (never downloads)."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"autoencoder {path} has no config.json; pass a folder written by "
                                "AutoencoderKL.save_pretrained (e.g. a local copy of stabilityai/sd-vae-ft-mse)")
    return AutoencoderKL.from_pretrained(path, local_files_only=True)


class FirstStage(nn.Module):
    """Frozen encoder/decoder between suite images (B, 1, H, W) in [-1, 1] and scaled latents."""

    def __init__(self, ae):
        super().__init__()
        self.ae = ae.eval().requires_grad_(False)
        self.register_buffer("scale", torch.tensor(float(getattr(ae.config, "scaling_factor", 1.0) or 1.0)))

    @property
    def channels(self) -> int:
        return int(self.ae.config.in_channels)

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, sample: bool = False) -> torch.Tensor:
        dist = self.ae.encode(x.repeat(1, self.channels, 1, 1) if self.channels != x.shape[1] else x).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        x = self.ae.decode(z / self.scale).sample
        return x.mean(dim=1, keepdim=True).clamp(-1, 1)


def train_autoencoder(ae, images: torch.Tensor, steps: int, batch_size: int = 16, lr: float = 1e-3,
                      kl_weight: float = 1e-6, seed: int = 0):
    """Fit `ae` to `images` (N, C, H, W) in [-1, 1]; sets config.scaling_factor = 1 / std(latents)."""
    g = torch.Generator().manual_seed(seed)
    ae.train().requires_grad_(True)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr)
    for _ in range(steps):
        x = images[torch.randint(0, len(images), (batch_size,), generator=g)].to(next(ae.parameters()).device)
        dist = ae.encode(x).latent_dist
        rec = ae.decode(dist.sample()).sample
        loss = F.l1_loss(rec, x) + kl_weight * dist.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ae.eval().requires_grad_(False)
    with torch.no_grad():
        z = torch.cat([ae.encode(images[i:i + 64]).latent_dist.mode() for i in range(0, len(images), 64)])
    ae.register_to_config(scaling_factor=float(1.0 / z.std().clamp_min(1e-6)))
    return ae


def cached_autoencoder(settings: dict, data_identity: dict, images: torch.Tensor, cache_dir: Path | None = None):
    """Train (or load from the cache) the suite autoencoder for this data and these settings."""
    from diffusers import AutoencoderKL

    key = cache_key([settings, data_identity])
    folder = Path(cache_dir or default_cache_dir()) / "autoencoders" / key
    if (folder / "config.json").is_file():
        return AutoencoderKL.from_pretrained(folder, local_files_only=True), folder
    ae = make_autoencoder(images.shape[1], settings["latent_channels"], tuple(settings["channels"]))
    train_autoencoder(ae, images, settings["steps"], seed=0)
    tmp = folder.with_name(f"{key}.tmp-{os.getpid()}")
    ae.save_pretrained(tmp)
    if folder.exists():  # another run finished the same autoencoder first
        shutil.rmtree(tmp)
    else:
        tmp.rename(folder)
    return ae, folder
