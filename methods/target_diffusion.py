"""The base of the methods that train a DDPM on the target domain only and translate by noising the source and
denoising it with that model (`components.target_ddpm.TargetDDPM`): SDEdit (unconditioned) and ContourDiff
(conditioned on the contour map of the image). A subclass declares its knob, its constructor (which calls
`save_hyperparameters` and then `build_ddpm`) and what conditions the model (`condition`); training, the EMA,
the optimiser and the target check are shared here."""
from __future__ import annotations

import torch

from .base import TranslationMethod
from .components.target_ddpm import TargetDDPM


class TargetDiffusion(TranslationMethod):
    """A target-domain DDPM; `condition` (None here) is what the model sees beside the noisy image."""

    #: channels `condition` returns (0: unconditioned)
    condition_channels = 0
    allowed = {**TranslationMethod.allowed, "sampler": ("ddpm", "ddim")}
    smoke_settings = dict(base_channels=8, channel_mults=(1, 2), max_steps=3, batch_size=4, num_inference_steps=10,
                          warmup_steps=1)

    def build_ddpm(self) -> None:
        """The DDPM from the saved hyperparameters (call after `save_hyperparameters`)."""
        h = self.hparams
        self.ddpm = TargetDDPM(h.image_size, self.condition_channels, h.base_channels, h.channel_mults,
                               h.layers_per_block, h.attention, h.sampler, h.num_inference_steps, h.ema_decay)
        TargetDDPM.adopt_legacy_keys(self, "ddpm")

    def apply_sampling(self) -> None:
        self.ddpm.core.sampler = self.hparams.sampler
        self.ddpm.core.num_inference_steps = self.hparams.num_inference_steps

    def condition(self, images: torch.Tensor) -> torch.Tensor | None:
        """What conditions the model for these images (in training: the target images; in translation: the source)."""
        return None

    @classmethod
    def training_domains(cls, domains, sources, target, config=None):
        return (target,)  # the DDPM never sees the source domain

    def training_step(self, batch, batch_idx):
        x_0 = batch["image"]
        loss = self.ddpm.loss(x_0, self.condition(x_0))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def after_optimizer_step(self) -> None:
        self.ddpm.update_ema()

    def configure_optimizers(self):
        return self.ddpm.optimizers(self.hparams.lr, self.hparams.warmup_steps, self.hparams.max_steps)

    def check_target(self, target: str) -> None:
        if target != self.target:
            raise KeyError(f"{type(self).__name__}'s DDPM was trained on {self.target!r}, not {target!r}")
