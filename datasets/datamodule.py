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


class TranslationDataModule(L.LightningDataModule):
    """Batches `{"image": (B, 1, H, W) in [-1, 1], "domain": (B,) int64, "id": list[str]}`.

    Domain indices refer to `dataset.domains`, so one label space serves every task. Images are
    held in memory (the presets are small); loading is single-process, which suits 2-core machines.

    Args:
        dataset: The data.
        domains: Domains to serve (a method's training domains).
        batch_size: Batch size.
        split: Split to serve for training.
        seed: Seeds the shuffling order.
    """

    def __init__(self, dataset: XrayDataset, domains: tuple[str, ...], batch_size: int = 16,
                 split: str = "train", seed: int = 0):
        super().__init__()
        self.dataset, self.domains, self.batch_size, self.split, self.seed = dataset, tuple(domains), batch_size, split, seed
        self._train: _Images | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            rows = self.dataset.rows(self.domains, self.split)
            if rows.empty:
                raise ValueError(f"no {self.split} images for domains {self.domains} in {self.dataset.name}")
            labels = torch.tensor([self.dataset.domain_index(d) for d in rows["domain"]], dtype=torch.long)
            self._train = _Images(self.dataset.load(rows), labels, list(rows["id"]))

    def train_dataloader(self) -> DataLoader:
        self.setup()
        g = torch.Generator().manual_seed(self.seed)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, drop_last=len(self._train) > self.batch_size,
                          generator=g, num_workers=0)

    def domain_images(self, domain: str, split: str | None = None) -> torch.Tensor:
        """All images of one domain in a split (default: the training split)."""
        return self.dataset.images(domain, split or self.split)[0]
