"""The LightningDataModule that serves training batches to every method."""
from __future__ import annotations

import itertools

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .base import XrayDataset

PAIRINGS = ("mixed", "unpaired", "paired")


def check_pairs(dataset: XrayDataset) -> None:
    """A dataset paired methods can train on (pixel-exact pairs across domains), else one line saying why not."""
    if not dataset.aligned:
        raise ValueError(f"dataset {dataset.name} ({dataset.root}) has no pixel-exact pairs (aligned: false), which "
                         "paired methods train on; use a dataset with aligned scenes (skull-sim without --jitter)")


class _Images(Dataset):
    def __init__(self, images: torch.Tensor, domains: torch.Tensor, ids: list[str]):
        self.images, self.domains, self.ids = images, domains, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "domain": self.domains[i], "id": self.ids[i]}


class _Unpaired(Dataset):
    """Item (i, j): the (i mod |A|)-th A image and the j-th B image; `BatchStream` draws j at random, independently
    of i, so aligned pairs are broken."""

    def __init__(self, a: _Images, b: _Images):
        self.a, self.b = a, b

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def __getitem__(self, item: tuple[int, int]) -> dict:
        ia, ib = item[0] % len(self.a), item[1]
        return {"image_a": self.a.images[ia], "domain_a": self.a.domains[ia], "id_a": self.a.ids[ia],
                "image_b": self.b.images[ib], "domain_b": self.b.domains[ib], "id_b": self.b.ids[ib]}


class _Paired(Dataset):
    """Item i: the i-th source image and the aligned image of the same scene in the target domain (side B)."""

    def __init__(self, a: _Images, b: _Images, partner: list[int]):
        self.a, self.b, self.partner = a, b, partner

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, i: int) -> dict:
        j = self.partner[i]
        return {"image_a": self.a.images[i], "domain_a": self.a.domains[i], "id_a": self.a.ids[i],
                "image_b": self.b.images[j], "domain_b": self.b.domains[j], "id_b": self.b.ids[j]}


class BatchStream(Sampler):
    """The training batches of a run as one stream that can start at any batch (what makes a resumed fit see the
    batches an uninterrupted one sees).

    Epoch after epoch it serves what Lightning's fit loop takes from `DataLoader(shuffle=True,
    generator=torch.Generator().manual_seed(seed), drop_last=drop_last)`: `len(loader)` batches per epoch, for
    which the loader draws its base seed, then RandomSampler a permutation (and a trailing one when the epoch
    ends in a partial batch), all from that generator. Tests pin the equality, through Lightning too.
    With `n_b`, each index becomes a pair (i, j) with j drawn uniformly from range(n_b)
    by a second generator seeded `seed + 1` (unpaired batches).

    Args:
        n: Items per epoch.
        batch_size: Batch size.
        drop_last: Drop each epoch's incomplete last batch.
        seed: Seeds the order.
        n_b: Size of side B for unpaired pairs, else None.
        iterations: Batches of the whole fit; None: each `iter()` serves the next epoch.
        start: First batch served (a resumed fit's iteration); only with `iterations`.
        rank, world: A fit over `world` devices: this rank serves items rank, rank + world, ... of every batch of
            the one stream (the global batch is the single-device batch, split evenly).
        micro: Gradient accumulation: each (rank's share of a) batch is served as `micro` consecutive micro-batches
            of equal size, so the stream serves `micro` loader batches per iteration; `start` counts iterations.
    """

    def __init__(self, n: int, batch_size: int, drop_last: bool, seed: int, n_b: int | None = None,
                 iterations: int | None = None, start: int = 0, rank: int = 0, world: int = 1, micro: int = 1):
        if iterations is None and start:
            raise ValueError("a BatchStream starts after batch 0 only with a fixed number of iterations")
        if world * micro > 1 and (batch_size % (world * micro) or not drop_last):
            raise ValueError(f"a batch of {batch_size} cannot be split evenly over {world} devices x {micro} "
                             "micro-batches" + ("" if drop_last else " (a method that sees every image once trains on "
                                                                     "one device, without accumulation)"))
        self.n, self.batch_size, self.drop_last, self.seed, self.n_b = n, batch_size, drop_last, seed, n_b
        self.iterations, self.start, self.rank, self.world, self.micro = iterations, start, rank, world, micro
        self._epochs = None

    def per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _stream(self):
        g = torch.Generator().manual_seed(self.seed)
        g_b = torch.Generator().manual_seed(self.seed + 1) if self.n_b is not None else None
        while True:
            torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's per-epoch base seed
            order = torch.randperm(self.n, generator=g).tolist()
            for k in range(self.per_epoch()):
                batch = order[k * self.batch_size:(k + 1) * self.batch_size]
                if g_b is not None:
                    batch = [(i, int(torch.randint(0, self.n_b, (), generator=g_b))) for i in batch]
                yield batch
            if not self.drop_last and self.n % self.batch_size:
                # a partial last batch is yielded only after RandomSampler is exhausted, which draws its trailing
                # `randperm(n)[:0]`; otherwise Lightning stops at len(loader) batches, before that draw
                torch.randperm(self.n, generator=g)

    def __len__(self) -> int:
        return (self.iterations if self.iterations is not None else self.per_epoch()) * self.micro

    def __iter__(self):
        for batch in self._batches():
            share = batch[self.rank::self.world] if self.world > 1 else batch
            size = len(share) // self.micro
            for k in range(self.micro):
                yield share[k * size:(k + 1) * size] if self.micro > 1 else share

    def _batches(self):
        if self.iterations is not None:
            yield from itertools.islice(self._stream(), self.start, self.iterations)
            return
        if self._epochs is None:
            self._epochs = self._stream()
        yield from itertools.islice(self._epochs, self.per_epoch())


def _on_cuda(trainer) -> bool:
    """Whether `trainer` (or None) trains on CUDA devices: its batches are then copied from page-locked memory."""
    from lightning.pytorch.accelerators import CUDAAccelerator

    return trainer is not None and isinstance(getattr(trainer, "accelerator", None), CUDAAccelerator)


class TranslationDataModule(L.LightningDataModule):
    """Batches `{"image": (B, 1, H, W) in [-1, 1], "domain": (B,) int64, "id": list[str]}`.

    Domain indices refer to `dataset.domains`, so one label space serves every task. Images are
    held in memory (the presets are small); loading is single-process, which suits 2-core machines.
    With `pairing="unpaired"` (methods that learn a two-sided mapping, e.g. CycleGAN) batches are
    `{"image_a", "domain_a", "id_a", "image_b", "domain_b", "id_b"}` with side A = the task's source
    domains and side B = its target, drawn independently. With `pairing="paired"` (the paired upper bounds)
    the same keys hold aligned pairs: every source image of the split with the target image of its own scene
    (a dataset without pixel-exact pairs is refused).

    Args:
        dataset: The data.
        domains: Domains to serve (a method's training domains).
        batch_size: Batch size.
        split: Split to serve for training.
        seed: Seeds the shuffling order.
        pairing: "mixed", "unpaired" or "paired" (a method's declared `pairing`).
        target: The task's target domain (side B) for "unpaired" and "paired".
        drop_last: Drop the incomplete last batch (a method's declared `drop_last`; False for one-pass statistics).
        iterations: Batches of the whole fit (its `max_steps` iterations), or None (epochs until the trainer stops).
        start: The first batch to serve: a fit resumed at iteration k serves batches k, k+1, ... of the stream
            an uninterrupted fit serves (`BatchStream`).
        accumulate: Gradient accumulation: every batch (every rank's share of it) served as this many micro-batches.
    """

    def __init__(self, dataset: XrayDataset, domains: tuple[str, ...], batch_size: int = 16,
                 split: str = "train", seed: int = 0, pairing: str = "mixed", target: str | None = None,
                 drop_last: bool = True, iterations: int | None = None, start: int = 0, accumulate: int = 1):
        super().__init__()
        if pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {pairing!r}; use {', '.join(PAIRINGS)}")
        if pairing != "mixed" and target not in domains:
            raise ValueError(f"{pairing} batches need the target domain among {domains}, got {target!r}")
        if pairing == "paired":
            check_pairs(dataset)
        self.dataset, self.domains, self.batch_size = dataset, tuple(domains), batch_size
        self.split, self.seed = split, seed
        self.pairing, self.target, self.drop_last = pairing, target, drop_last
        self.iterations, self.start, self.accumulate = iterations, start, accumulate
        self._train: Dataset | None = None

    def _images(self, domains: tuple[str, ...]) -> _Images:
        rows = self.dataset.rows(domains, self.split)
        if rows.empty:
            raise ValueError(f"no {self.split} images for domains {domains} in {self.dataset.name}")
        labels = torch.tensor([self.dataset.domain_index(d) for d in rows["domain"]], dtype=torch.long)
        return _Images(self.dataset.load(rows), labels, list(rows["id"]))

    def sampled_domains(self) -> tuple[str, ...]:
        """The domains whose images set the training set's size (one item per image of them): all of them for mixed
        batches, side A (every training domain but the target) for unpaired and paired ones."""
        return self.domains if self.pairing == "mixed" else tuple(d for d in self.domains if d != self.target)

    def setup(self, stage: str | None = None) -> None:
        if self._train is None:
            sampled = self.sampled_domains()
            if self.pairing == "mixed":
                self._train = self._images(sampled)
            elif self.pairing == "unpaired":
                self._train = _Unpaired(self._images(sampled), self._images((self.target,)))
            else:
                self._train = self._paired(sampled)

    def _paired(self, side_a: tuple[str, ...]) -> _Paired:
        a, b = self._images(side_a), self._images((self.target,))
        rows_a, rows_b = self.dataset.rows(side_a, self.split), self.dataset.rows(self.target, self.split)
        where = {scene: j for j, scene in enumerate(rows_b["scene"])}
        missing = [s for s in rows_a["scene"] if s not in where]
        if missing:
            raise ValueError(f"{self.dataset.name}: {len(missing)} {self.split} scene(s) of {'+'.join(side_a)} have no "
                             f"{self.target} counterpart (e.g. {missing[0]}); paired methods need every pair")
        return _Paired(a, b, [where[s] for s in rows_a["scene"]])

    def train_dataloader(self) -> DataLoader:
        self.setup()
        n = len(self._train)
        trainer = getattr(self, "trainer", None)  # a fit over several devices: this rank's share of each batch
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        stream = BatchStream(n, self.batch_size, self.drop_last and n > self.batch_size, self.seed,
                             n_b=len(self._train.b) if isinstance(self._train, _Unpaired) else None,
                             iterations=self.iterations, start=self.start, rank=rank, world=world,
                             micro=self.accumulate)
        # the stream owns the order; this generator only keeps the loader's base-seed draw off torch's global one.
        # The images are in memory, so batches are gathered in this process (no workers); page-locked for a CUDA fit
        return DataLoader(self._train, batch_sampler=stream, num_workers=0, generator=torch.Generator(),
                          pin_memory=_on_cuda(trainer))
