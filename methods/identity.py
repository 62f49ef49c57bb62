"""`identity`: no translation. The structure end of every curve (SSIM to the source = 1) and the
"no translation" row of the MedShift paper's table: its realism numbers are the raw domain gap."""
from __future__ import annotations

import torch

from .base import TranslationMethod


class Identity(TranslationMethod):
    """Returns the source image unchanged."""

    reference_row = True  # the tables show it unranked
    style = dict(color="black", marker="s", label="no translation")
    train_batch_size = 64  # nothing is trained; the fit loop still builds a loader

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()

    def trainer_settings(self, max_steps: int | None = None) -> dict:
        return {"max_steps": 0}  # nothing to learn

    def training_step(self, batch, batch_idx):
        return None

    def configure_optimizers(self):
        return None

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_knob(knob_value)
        return images.clone()
