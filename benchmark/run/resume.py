"""Resume points: what a fit killed at any moment needs to continue exactly as if it had not been killed.

A resumed fit equals an uninterrupted one (to CPU floating-point noise) because every random stream it uses
restarts where the uninterrupted fit would be:
* the batches: `datasets.datamodule.BatchStream` serves batch k of one seeded stream, whatever the fit's start;
* torch's, numpy's and Python's global generators (noise, timesteps, dropout, CycleGAN's image-pool draws):
  saved with the checkpoint and restored before the first resumed step (`ResumePoint.state_dict`);
* the model, its EMA copy, optimiser and scheduler states: Lightning's checkpoint; a method's other state
  (CycleGAN's image pools) through its `on_save_checkpoint`/`on_load_checkpoint`.

A resume point is saved at the *start* of an iteration (`on_train_batch_start`), when everything the previous
iteration did is finished (the module's own `on_train_batch_end`, e.g. its EMA update, runs after the callbacks'
and so after Lightning's `ModelCheckpoint` would have saved) and nothing of the next has drawn a random number.
With gradient accumulation an iteration is several loader batches: the point is saved before the first of them
(no gradient accumulated yet; Lightning restores its batch count, so the micro-batches stay aligned).
"""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from methods.base import starts_optimizer_step


def rng_state() -> dict:
    """The global generators' states as tensors and plain values (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                           has_gauss=int(has_gauss), gauss=float(gauss))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumePoint(Callback):
    """Saves `path` (the full training state, written atomically next to its target) at the start of every
    `every`-th iteration, and carries the global random generators' states in every checkpoint.

    Args:
        path: The resume checkpoint (`checkpoints/last.ckpt`).
        every: Iterations between resume points.
        per_iteration: Optimizer steps per iteration (Lightning's `global_step` counts steps).
    """

    @property
    def state_key(self) -> str:
        return "ResumePoint"  # the key saved checkpoints hold its state under (Lightning's default when first saved)

    def __init__(self, path: Path, every: int, per_iteration: int = 1, seed: int = 0, stops=None,
                 handlers_before: dict | None = None):
        self.path, self.every, self.per_iteration = Path(path), max(1, int(every)), per_iteration
        self.seed = seed
        self._skip = None  # the iteration a resumed fit started at: its resume point exists already
        self.saved_at: int | None = None
        self.stops, self.handlers_before = stops, handlers_before  # `benchmark.run.stopping.StopRequests`

    def on_train_start(self, trainer, pl_module) -> None:
        self._skip = trainer.global_step // self.per_iteration
        self.saved_at = self._skip or None  # the iteration of the newest resume point on disk
        if self.stops is not None and trainer.world_size == 1:  # forked ranks do not see the parent's signals
            self.stops.arm(self.handlers_before)
        if trainer.world_size > 1:
            # forked ranks share the parent's generators, and a checkpoint holds the first rank's: give every rank
            # its own streams, a function of (run seed, rank, start iteration), so that their noise differs and a
            # resumed multi-device fit is reproducible (not bit-equal to an uninterrupted one: the streams restart)
            seed = int(np.random.SeedSequence([self.seed, trainer.global_rank, self._skip]).generate_state(1)[0])
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        it, rest = divmod(trainer.global_step, self.per_iteration)
        if rest or not starts_optimizer_step(trainer, batch_idx):  # not mid-way through an iteration
            return
        stop = self.stops.requested if self.stops is not None else None
        if it > 0 and it != self._skip and (it % self.every == 0 or stop):
            self._save(trainer)
        if stop:  # asked to stop (SIGTERM, Ctrl-C): at this iteration boundary, with its resume point on disk
            from benchmark.run.stopping import Stopped

            raise Stopped(stop, resume_step=self.saved_at)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stops is not None:
            self.stops.disarm()

    def _save(self, trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            trainer.save_checkpoint(tmp)  # collective: every rank takes part, the first writes
            if trainer.is_global_zero:
                tmp.replace(self.path)
            self.saved_at = trainer.global_step // self.per_iteration
        finally:
            tmp.unlink(missing_ok=True)

    def state_dict(self) -> dict:
        return {"rng": rng_state()}

    def load_state_dict(self, state_dict: dict) -> None:
        set_rng_state(state_dict["rng"])
