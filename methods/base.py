"""`TranslationMethod`: the one interface between the benchmark and every method.

The runner calls only Lightning's fit hooks and `translate`, reads the declared knob, and never asks
which method it holds. Methods never compute benchmark metrics.

Contract for a subclass:
* constructor: typed keyword arguments with defaults (its config), first the four the runner fills
  in from the data - `domains` (the dataset's domain names; domain index = position), `sources`,
  `target` (the task) and `image_size` - then `save_hyperparameters()`;
* `knob_name` / `knob_grid` (table values, first = headline) / `knob_curve` (dense values for
  curves) as class attributes; `knob_name = None` means a single point; `pairing` (batch layout);
* `training_domains(domains, sources, target)` (classmethod): what it trains on;
* Lightning's `training_step` / `configure_optimizers`; `trainer_settings()` for its training budget;
* `translate(images, source, target, knob_value)` and `nfe(knob_value)` (network evaluations per image);
* `sampling_settings`: config keys that only change translation, not training (the runner reuses a
  finished fit when a run differs from it only in these).
"""
from __future__ import annotations

from typing import ClassVar

import lightning as L
import torch


class TranslationMethod(L.LightningModule):
    """A trainable translator between X-ray domains (base class; see module docstring)."""

    knob_name: ClassVar[str | None] = None
    knob_grid: ClassVar[tuple] = (None,)
    knob_curve: ClassVar[tuple] = ()
    #: Batch layout the method trains on: "mixed" or "unpaired" (see datasets.datamodule).
    pairing: ClassVar[str] = "mixed"
    #: Config keys used only by `translate` (a change reuses the trained weights).
    sampling_settings: ClassVar[tuple[str, ...]] = ()
    #: `optimizer.step()` calls per `training_step`. Lightning counts every optimizer step of manual
    #: optimisation in `global_step` (and so in `max_steps`); a budget counts iterations of the method's loop.
    optimizer_steps_per_iteration: ClassVar[int] = 1
    #: A reference row of the tables (no translation, a classical baseline): shown, never ranked.
    reference_row: ClassVar[bool] = False
    #: Whether training batches drop the incomplete last batch (False for one-pass statistics: every image counts).
    drop_last: ClassVar[bool] = True

    def __init__(self, domains: tuple[str, ...], sources: tuple[str, ...], target: str, image_size: int):
        super().__init__()
        self.domains, self.sources, self.target, self.image_size = tuple(domains), tuple(sources), target, image_size

    # ------------------------------------------------------------------ declared by every method
    @classmethod
    def training_domains(cls, domains: tuple[str, ...], sources: tuple[str, ...], target: str) -> tuple[str, ...]:
        """Domains whose training images the method sees (default: the task's)."""
        return tuple(sources) + (target,)

    def trainer_settings(self, max_steps: int | None = None) -> dict:
        """Keyword arguments for `lightning.Trainer` that bound this method's training.

        Args:
            max_steps: Training iterations (`training_step` calls); None: the method's `max_steps` setting.
        """
        steps = max_steps if max_steps is not None else int(self.hparams.get("max_steps", 0))
        return {"max_steps": steps * self.optimizer_steps_per_iteration}

    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        """Translate images of domain `source` to domain `target`.

        Args:
            images: (B, 1, H, W) float32 in [-1, 1].
            source: Source domain name.
            target: Target domain name.
            knob_value: One value of the method's knob (None for methods without one).

        Returns:
            (B, 1, H, W) float32 in [-1, 1].
        """
        raise NotImplementedError

    def nfe(self, knob_value=None) -> int:
        """Network evaluations per translated image at `knob_value` (0 for analytic methods)."""
        return 0

    # ------------------------------------------------------------------ shared helpers
    @property
    def n_params(self) -> int:
        """Trained parameters (EMA copies and frozen modules excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise KeyError(f"{type(self).__name__}: unknown domain {domain!r}; trained with {', '.join(self.domains)}")
        return self.domains.index(domain)

    def labels(self, domain: str, n: int) -> torch.Tensor:
        return torch.full((n,), self.domain_index(domain), dtype=torch.long, device=self.device)

    def check_knob(self, knob_value) -> None:
        if self.knob_name is None and knob_value is not None:
            raise ValueError(f"{type(self).__name__} has no knob; got {knob_value!r}")
