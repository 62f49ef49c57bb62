"""A complete minimal method to copy when adding one (not registered; the contract test fits it).

`AffineIntensity` learns one gain and one offset per (source domain) that map source intensities onto the
target domain's first two moments: each training step matches the mean and standard deviation of a translated
source batch to those of a target batch (`pairing = "unpaired"`: independent A/B batches). Everything the runner
reads is declared here; copy the file, rename the class, change the model, register it in `methods/__init__.py`.
"""
from __future__ import annotations

import torch
from torch import nn

from .base import TranslationMethod


class AffineIntensity(TranslationMethod):
    """x_hat = gain[source] * x + offset[source]; knob `blend` mixes it with the input (1 = full map)."""

    knob_name = "blend"  # the structure <-> realism knob; None for a single point
    knob_grid = (1.0, 0.5)  # table values; the first is the default
    knob_curve = (0.0, 0.25, 0.5, 0.75, 1.0)  # `--curve` values
    pairing = "unpaired"  # batches {"image_a", "domain_a", "image_b", ...}: A = task sources, B = target
    sampling_settings = ()  # settings that only change translation (none here)
    style = dict(color="tab:olive", marker="x", label="affine intensity (template)")
    smoke_settings = dict(max_steps=3, batch_size=4)

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, lr: float = 0.05, max_steps: int = 200, batch_size: int = 16):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.gain = nn.Parameter(torch.ones(max(len(domains), 1)))
        self.offset = nn.Parameter(torch.zeros(max(len(domains), 1)))

    def _map(self, x: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        return self.gain[domain].view(-1, 1, 1, 1) * x + self.offset[domain].view(-1, 1, 1, 1)

    def training_step(self, batch, batch_idx):
        x_hat, x_b = self._map(batch["image_a"], batch["domain_a"]), batch["image_b"]
        loss = (x_hat.mean() - x_b.mean()) ** 2 + (x_hat.std() - x_b.std()) ** 2
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        if target != self.target:
            raise KeyError(f"AffineIntensity was trained towards {self.target!r}, not {target!r}")
        blend = float(self.knob(knob_value))
        mapped = self._map(images, self.labels(source, len(images)))
        return ((1 - blend) * images + blend * mapped).clamp(-1, 1)

    def nfe(self, knob_value=None) -> int:
        return 0  # no network evaluation
