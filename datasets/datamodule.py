"""The LightningDataModule that serves training batches to every method."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from .base import XrayDataset


class _Images(Dataset):
    def __init__(self, images: torch.Tensor, domains: torch.Tensor, ids: list[str]):
        self.images, self.domains, self.ids = images, domains, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "domain": self.domains[i], "id": self.ids[i]}


class _Unpaired(Dataset):
    """Item i: the i-th A image and a *random* B image (independent draws, so aligned pairs are broken)."""

    def __init__(self, a: _Images, b: _Images, seed: int):
        self.a, self.b = a, b
        self.generator = torch.Generator().manual_seed(seed + 1)

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, i: int) -> dict:
        ia = i % len(self.a)
        ib = int(torch.randint(0, len(self.b), (), generator=self.generator))
        return {"image_a": self.a.images[ia], "domain_a": self.a.domains[ia], "id_a": self.a.ids[ia],
                "image_b": self.b.images[ib], "domain_b": self.b.domains[ib], "id_b": self.b.ids[ib]}


class TranslationDataModule(L.LightningDataModule):
    """Batches `{"image": (B, 1, H, W) in [-1, 1], "domain": (B,) int64, "id": list[str]}`.

    Domain indices refer to `dataset.domains`, so one label space serves every task. Images are
    held in memory (the presets are small); loading is single-process, which suits 2-core machines.
    With `pairing="unpaired"` (methods that learn a two-sided mapping, e.g. CycleGAN) batches are
    `{"image_a", "domain_a", "id_a", "image_b", "domain_b", "id_b"}` with side A = the task's source
    domains and side B = its target, drawn independently.

    Args:
        dataset: The data.
        domains: Domains to serve (a method's training domains).
        batch_size: Batch size.
        split: Split to serve for training.
        seed: Seeds the shuffling order.
        pairing: "mixed" or "unpaired" (a method's declared `pairing`).
        target: The task's target domain (side B) for "unpaired".
        drop_last: Drop the incomplete last batch (a method's declared `drop_last`; False for one-pass statistics).
    """

    def __init__(self, dataset: XrayDataset, domains: tuple[str, ...], batch_size: int = 16,
                 split: str = "train", seed: int = 0, pairing: str = "mixed", target: str | None = None,
                 drop_last: bool = True):
        super().__init__()
        if pairing not in ("mixed", "unpaired"):
            raise ValueError(f"unknown pairing {pairing!r}; use mixed or unpaired")
        if pairing == "unpaired" and target not in domains:
            raise ValueError(f"unpaired batches need the target domain among {domains}, got {target!r}")
        self.dataset, self.domains, self.batch_size = dataset, tuple(domains), batch_size
        self.split, self.seed = split, seed
        self.pairing, self.target, self.drop_last = pairing, target, drop_last
        self._train: Dataset | None = None

    def _images(self, domains: tuple[str, ...]) -> _Images:
        rows = self.dataset.rows(domains, self.split)
        if rows.empty:
            raise ValueError(f"no {self.split} images for domains {domains} in {self.dataset.name}")
        labels = torch.tensor([self.dataset.domain_index(d) for d in rows["domain"]], dtype=torch.long)
        return _Images(self.dataset.load(rows), labels, list(rows["id"]))

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            if self.pairing == "mixed":
                self._train = self._images(self.domains)
            else:
                side_a = tuple(d for d in self.domains if d != self.target)
                self._train = _Unpaired(self._images(side_a), self._images((self.target,)), self.seed)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True,
                          drop_last=self.drop_last and len(self._train) > self.batch_size, generator=g, num_workers=0)
