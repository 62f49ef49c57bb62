"""`unet-regression`: a convolutional network regressing the target image from its aligned source with a pixel
loss (the seed overview's "CNN regression"; Nie et al. 2017, Wolterink et al. 2017 use such networks as the
baseline that adversarial training improves on).

A paired upper bound (`pairing = "paired"`: every training source image with the aligned target image of its own
scene). The network is pix2pix's U-Net generator without dropout (`components.gan_nets.UnetGenerator`), so that
this row and pix2pix's differ by the adversarial loss alone (Isola et al.'s "L1" ablation). The point of the row,
the overview's claim to test: a pixel loss predicts the conditional mean, which averages over what the source
does not determine (quantum noise, fine texture) and so over-smooths: the highest PSNR to the aligned image and
poor realism are the expected signature.

Settings: `loss` "l1" (default) or "l2"; Adam (lr 1e-3, betas 0.9/0.999) with linear warm-up and cosine decay,
batch 16. These are our choices (no single reference recipe exists for this baseline); training length is the
preset's FLOP budget. No knob: one point on every curve.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TranslationMethod
from .components.gan_nets import UnetGenerator, init_normal
from .components.schedules import warmup_cosine

LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


class UNetRegression(TranslationMethod):
    """U-Net trained with a pixel loss on aligned pairs."""

    pairing = "paired"
    style = dict(color="tab:olive", marker="X", label="U-Net regression (paired)")
    smoke_settings = dict(ngf=8, max_steps=3, batch_size=4, warmup_steps=1)
    allowed = {**TranslationMethod.allowed, "ngf": "[1, inf)", "loss": tuple(LOSSES)}

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, ngf: int = 64, loss: str = "l1", lr: float = 1e-3, warmup_steps: int = 50,
                 max_steps: int = 2000, batch_size: int = 16):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; use {' or '.join(LOSSES)}")
        self.net = init_normal(UnetGenerator(1, 1, image_size, ngf, dropout=False, affine_norm=True))

    def training_step(self, batch, batch_idx):
        loss = LOSSES[self.hparams.loss](self.net(batch["image_a"]), batch["image_b"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.hparams.max_steps)}

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_knob(knob_value)
        self.check_direction(source, target)
        return self.net(images.float()).clamp(-1.0, 1.0)

    def nfe(self, knob_value=None) -> int:
        return 1
