"""`histmatch`: classical intensity histogram matching of the source to the target domain.

"Training" is one pass over the training images that accumulates a fine intensity histogram per
domain (a running sufficient statistic, kept as a buffer so checkpoints restore it). Translation
maps each source pixel through F_target^{-1}(F_source(v)), the monotone map that makes the source
domain's pooled intensity distribution equal the target's (as `skimage.exposure.match_histograms`
does per image, here against the whole domain).

Knob `blend` in [0, 1]: x_hat = (1 - blend) x + blend * match(x); 0 is the identity, 1 full matching.
"""
from __future__ import annotations

import torch

from .base import TranslationMethod


class HistMatch(TranslationMethod):
    """Domain-level histogram matching with a blend knob."""

    reference_row = True  # the tables show it unranked
    allowed = {**TranslationMethod.allowed, "n_bins": "[2, inf)"}
    style = dict(color="tab:gray", marker="D", label="histogram matching")
    train_batch_size = 16  # one pass; the batch size only sets how images are grouped

    knob_name = "blend"
    knob_grid = (1.0, 0.5)
    knob_bounds = (0.0, 1.0)  # the blend of the matched image with the source
    knob_curve = (0.0, 0.25, 0.5, 0.75, 1.0)
    drop_last = False  # the histograms count every training image

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, n_bins: int = 4096):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.register_buffer("counts", torch.zeros(max(len(domains), 1), n_bins, dtype=torch.float64))

    def trainer_settings(self, max_steps: int | None = None) -> dict:
        return {"max_epochs": 1}  # one pass collects the histograms

    def _bins(self, x: torch.Tensor) -> torch.Tensor:
        n = self.hparams.n_bins
        return ((x.clamp(-1, 1) + 1) * 0.5 * (n - 1)).round().long()

    def training_step(self, batch, batch_idx):
        n = self.hparams.n_bins
        idx = batch["domain"][:, None] * n + self._bins(batch["image"]).flatten(1)
        self.counts.view(-1).index_add_(0, idx.flatten(), torch.ones(idx.numel(), dtype=torch.float64,
                                                                      device=self.counts.device))
        return None

    def configure_optimizers(self):
        return None

    def _cdf(self, domain: str) -> torch.Tensor:
        c = self.counts[self.domain_index(domain)]
        if c.sum() == 0:
            raise RuntimeError(f"histmatch saw no training images of domain {domain!r}; fit it first")
        return torch.cumsum(c, 0) / c.sum()

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        blend = float(self.knob(knob_value))
        cdf_src, cdf_tgt = self._cdf(source), self._cdf(target)
        n = self.hparams.n_bins
        levels = torch.linspace(-1, 1, n, dtype=torch.float64, device=images.device)
        p = cdf_src[self._bins(images)]  # F_source(v)
        # F_target^{-1}(p): first bin whose cdf reaches p
        j = torch.searchsorted(cdf_tgt, p.contiguous()).clamp(max=n - 1)
        matched = levels[j].to(images.dtype)
        return ((1 - blend) * images + blend * matched).clamp(-1, 1)
