"""One-step MedShift baseline (issue 34): a generator G(x, source, target, tau) that regresses its teacher's
translations at the tau values of the table's grid, the "distil the coupling" step of rectified flow (Liu et al.
2023) applied to MedShift's two-leg translation.

Before training, the teacher (the finished headline MedShift fit of the same seed, data and budget, found by the
runner as for `medshift-fewstep`) translates every training image of the task's sources to its target at each tau
of the grid with the sampling settings its validation chose: the *coupling*, cached under the runner's cache folder
(`FitData.cache_dir`) and measured in FLOPs, which the records carry as `teacher_sampling_flops` beside the teacher's
training FLOPs (`teacher_train_flops`); the budget counts the generator's own steps. Training regresses the coupling
(mean squared error), one network evaluation per translated image.

It has no free tau: it translates at the grid's values only (a value it was not trained on is refused in one line),
and only from the task's sources to its target (the only pairs its coupling holds).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .base import FitData, TranslationMethod
from .components.cache import cache_key, save_whole
from .components.ema import EMA
from .components.schedules import warmup_cosine
from .medshift import MedShift

#: Images the teacher translates at once while building the coupling (a progress line after each chunk).
COUPLING_CHUNK = 64


class OneStepNet(nn.Module):
    """x + U(x | source, target, tau): a diffusers U-Net at timestep 0 whose class embedding is the sum of the
    source's, the target's and the tau index's embeddings (`class_embed_type="identity"`)."""

    def __init__(self, image_size: int, base_channels: int, channel_mults: tuple[int, ...], n_domains: int,
                 n_taus: int, layers_per_block: int = 1):
        super().__init__()
        from .components.unet import make_unet

        self.unet = make_unet(image_size, 1, 1, base_channels, tuple(channel_mults), layers_per_block,
                              class_embed_type="identity")
        dim = self.unet.time_embedding.linear_2.out_features
        self.source, self.target, self.tau = nn.Embedding(n_domains, dim), nn.Embedding(n_domains, dim), \
            nn.Embedding(n_taus, dim)

    def forward(self, x, source, target, tau_index):
        cond = self.source(source) + self.target(target) + self.tau(tau_index)
        return x + self.unet(x, torch.zeros(len(x), device=x.device), class_labels=cond).sample


class MedShiftOneStep(TranslationMethod):
    """One network evaluation per image, trained on its teacher's translations at the grid's tau (module docstring)."""

    knob_name = "tau"
    knob_grid = MedShift.knob_grid
    teacher = "medshift"
    allowed = {**TranslationMethod.allowed, "coupling_images": "[1, inf)"}
    style = dict(color="tab:brown", marker="p", label="MedShift one-step (τ grid)")
    smoke_settings = dict(base_channels=8, channel_mults=(1, 2), max_steps=3, batch_size=4, warmup_steps=1,
                          coupling_images=4)

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, base_channels: int = 16, channel_mults: tuple[int, ...] = (1, 2, 2),
                 layers_per_block: int = 1, lr: float = 5e-4, weight_decay: float = 0.0, warmup_steps: int = 100,
                 max_steps: int = 2000, batch_size: int = 16, ema_decay: float = 0.999,
                 coupling_images: int | None = None):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.net = OneStepNet(image_size, base_channels, tuple(channel_mults), len(self.domains), len(self.knob_grid),
                              layers_per_block)
        self.ema = EMA(self.net, ema_decay)
        object.__setattr__(self, "_coupling", None)  # (x, source index, tau index, teacher's y): not in checkpoints

    @classmethod
    def training_domains(cls, domains, sources, target, config=None):
        """The task's sources: the images the coupling translates."""
        return tuple(sources)

    # ------------------------------------------------------------------ the coupling
    def prepare_fit(self, data: FitData) -> None:
        """The teacher's translations of the sources' training images at each tau of the grid (cached)."""
        teacher, info = self.handed_teacher(data), data.teacher_info if data.teacher_info is not None else {}
        sampling = dict(info.get("sampling") or {})
        key = cache_key(dict(teacher=info.get("run_id"), sampling=sampling, data=data.identity,
                             sources=list(self.sources), target=self.target, grid=list(self.knob_grid),
                             n=self.hparams.coupling_images))
        path = data.cache_dir / f"onestep-coupling-{key}.pt"
        if path.is_file():
            coupling = torch.load(path, weights_only=True)
        else:
            coupling = self._translate_coupling(teacher, sampling, data)
            save_whole(coupling, path)
        info["sampling_flops"] = int(coupling["flops"])
        object.__setattr__(self, "_coupling", coupling)

    def _translate_coupling(self, teacher, sampling: dict, data: FitData) -> dict:
        """Translate in chunks of `COUPLING_CHUNK` images, reporting progress in images (`FitData.progress`). The
        FLOPs: the teacher's cost per image at a tau is fixed (its steps and guidance do not depend on the image, and
        every layer's cost is linear in the batch), so one image per (source, tau) is translated again under torch's
        counter and its count scaled by the number of images (the counter slows what it watches several-fold)."""
        from torch.utils.flop_counter import FlopCounterMode

        images, domains = data.train_images(), list(data.train_domains())
        teacher = teacher.eval()
        for k, v in sampling.items():  # the teacher's validation-chosen sampling (its guidance is passed below)
            if k != "guidance":
                teacher.hparams[k] = v
        w = sampling.get("guidance")
        per_source = {s: images[[i for i, d in enumerate(domains) if d == s]][: self.hparams.coupling_images]
                      for s in self.sources}
        total, done, flops = sum(len(x) for x in per_source.values()) * len(self.knob_grid), 0, 0
        xs, src, taus, ys = [], [], [], []
        if data.progress is not None:
            data.progress(0, total)  # the clock starts before the first chunk
        with torch.no_grad():
            for source, x in per_source.items():
                for j, tau in enumerate(self.knob_grid):
                    with FlopCounterMode(display=False) as counter:
                        teacher.translate(x[:1], source, self.target, tau, guidance=w)
                    flops += counter.get_total_flops() * len(x)
                    for chunk in x.split(COUPLING_CHUNK):
                        ys.append(teacher.translate(chunk, source, self.target, tau, guidance=w))
                        done += len(chunk)
                        if data.progress is not None:
                            data.progress(done, total)
                    xs.append(x)
                    src += [self.domain_index(source)] * len(x)
                    taus += [j] * len(x)
        return dict(x=torch.cat(xs), source=torch.tensor(src), tau=torch.tensor(taus), y=torch.cat(ys),
                    flops=torch.tensor(flops))

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx):
        b = batch["image"].shape[0]
        if self._coupling is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_fit with the teacher (the runner does) first")
        c = self._coupling
        # draws from the coupling, seeded by the optimizer step, the loader batch (micro-batches of one accumulated
        # step differ) and the rank (devices differ): a resumed fit draws the same; the loader's batch sets the size
        g = torch.Generator().manual_seed((int(self.global_step) * 1_000_003 + int(batch_idx)) * 1_009
                                          + int(self.global_rank))
        idx = torch.randint(len(c["x"]), (b,), generator=g)
        dev = batch["image"].device
        x, y = c["x"][idx].to(dev), c["y"][idx].to(dev)
        target = torch.full((b,), self.domain_index(self.target), dtype=torch.long, device=dev)
        out = self.net(x, c["source"][idx].to(dev), target, c["tau"][idx].to(dev))
        loss = (out.float() - y.float()).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def after_optimizer_step(self) -> None:
        self.ema.update(self.net)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, hp.warmup_steps, hp.max_steps)}

    # ------------------------------------------------------------------ sampling
    def tau_index(self, knob_value) -> int:
        tau = float(self.knob(knob_value))
        for j, t in enumerate(self.knob_grid):
            if abs(tau - t) < 1e-9:
                return j
        raise ValueError(f"{type(self).__name__} was trained at tau in {self.knob_grid}, not {tau:g}: it has no "
                         "free tau (medshift-fewstep has)")

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_direction(source, target)
        b = images.shape[0]
        j = self.tau_index(knob_value)

        def full(v):
            return torch.full((b,), v, dtype=torch.long, device=images.device)

        out = self.ema.shadow(images.float(), full(self.domain_index(source)), full(self.domain_index(target)),
                              full(j))
        return out.clamp(-1.0, 1.0)

    def nfe(self, knob_value=None) -> int:
        return 1
