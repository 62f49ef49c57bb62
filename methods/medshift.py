"""MedShift (Caetano et al., ICCV-W 2025, arXiv 2508.21435): class-conditional flow matching with
tau-controlled implicit transport between any two domains.

One velocity network v(x, t, c) is trained on every domain of the dataset, with the domain as class
label plus one null label for classifier-free guidance (labels dropped with p = 0.2). Training uses
the conditional OT path x_t = (1 - (1 - sigma_min) t) x_0 + t x_1 (t = 0 noise, t = 1 data) and plain
MSE on the velocity x_1 - (1 - sigma_min) x_0 (`components.paths.CondOTPath`).

Translation S -> R with knob tau (DDIB-style implicit bridge, ../shared/reference/medshift.md §1.4):
1. encode: integrate the guided ODE *backwards* from t = 1 to t = tau under label S;
2. decode: integrate *forwards* from tau to 1 under label R.
Guidance v = v(x, t, null) + w (v(x, t, c) - v(x, t, null)), one batched call for both branches.
tau = 1 is the identity; smaller tau restyles more. The authors' default Euler loop ignored tau;
here both legs honour it (tested), with `ceil((1 - tau) / step_size)` steps each.

Space: `space="pixel"` (default, what runs on a CPU) or `space="latent"`: the same flow in the latent
space of a diffusers `AutoencoderKL` - a user's pretrained folder (`autoencoder=PATH`, e.g. a local
copy of the paper's `sd-vae-ft-mse`, scale 0.18215, grey repeated to 3 channels) or, with no path, a
small KL autoencoder the suite trains on the training split at the start of the first fit and caches
(in the runner's `<results-dir>/cache`) for every later seed (`components.autoencoder`). tau = 1 returns the
input exactly in both spaces.

Our extension (off by default): `path="bridge"` trains on the Brownian-bridge stochastic interpolant
x_t = (1 - t) x_0 + t x_1 + bridge_sigma sqrt(t (1 - t)) z (a Schrodinger-bridge path, sigma > 0), and
`coupling="ot"` pairs each batch's noise with its data by minibatch OT (exact assignment; with the bridge path the
entropic plan with reg = 2 bridge_sigma^2, i.e. SB-CFM of Tong et al. 2024). Translation integrates the learned
velocity with the same ODE solvers in both cases (`components.paths`, `components.coupling`).

Deviations from the paper (documented choices):
* pixel space by default (the paper's SD-VAE weights cannot be fetched here);
* a small diffusers `UNet2DModel` instead of the ~36M ADM U-Net (sizes are config);
* t in [0, 1] is multiplied by `time_scale` inside the sinusoidal time embedding only, so the
  embedding's frequencies resolve t (`time_scale=1` feeds t literally, as the authors' ADM did);
* learning-rate schedule: linear warm-up then cosine decay (the authors used OneCycle cosine).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import FitData, TranslationMethod
from .components.autoencoder import FirstStage, cached_autoencoder, load_pretrained, make_autoencoder
from .components.coupling import couple
from .components.ema import EMA
from .components.paths import make_path
from .components.schedules import warmup_cosine
from .components.solvers import SOLVER_EVALS, integrate, n_steps
from .components.unet import make_unet


class MedShift(TranslationMethod):
    """Class-conditional flow matching translator (see module docstring)."""

    knob_name = "tau"
    knob_grid = (0.6, 0.45, 0.3)
    knob_bounds = (0.05, 0.95)  # tau = 0 starts from pure noise, tau = 1 is the identity
    knob_curve = (0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.3, 0.2, 0.1)
    round_trip = True
    sampling_settings = ("guidance", "solver", "step_size", "encode_guidance")
    #: chosen on validation: guidance 1 (no guidance branch) or the paper's 2, Euler or Heun, the suite's CPU step
    #: or the authors' 0.04
    sampling_grid = {"guidance": (2.0, 1.0), "solver": ("euler", "heun"), "step_size": (0.1, 0.04)}
    allowed = {**TranslationMethod.allowed, "step_size": "(0, 1]", "guidance": "[0, inf)", "sigma_min": "[0, 1)",
               "p_uncond": "[0, 1]", "time_scale": "(0, inf)", "solver": ("euler", "heun"),
               "encode_guidance": "[0, inf)", "space": ("pixel", "latent"), "ae_channels": "[1, inf)",
               "ae_latent_channels": "[1, inf)", "ae_steps": "[1, inf)",
               "path": ("condot", "bridge"), "bridge_sigma": "[0, inf)", "coupling": ("independent", "ot"),
               "train_on": ("all", "task")}
    style = dict(color="tab:red", marker="o", label="MedShift (τ)")
    smoke_settings = dict(base_channels=8, channel_mults=(1, 2), max_steps=3, step_size=0.25, batch_size=4,
                          warmup_steps=1)

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2),
                 layers_per_block: int = 1, attention: bool = False, sigma_min: float = 1e-4,
                 p_uncond: float = 0.2, guidance: float = 2.0, solver: str = "euler", step_size: float = 0.04,
                 lr: float = 1e-3, weight_decay: float = 0.0, warmup_steps: int = 100, max_steps: int = 2000,
                 batch_size: int = 16, ema_decay: float = 0.999, time_scale: float = 1000.0, space: str = "pixel",
                 autoencoder: str | None = None, ae_channels: tuple[int, ...] = (32, 64, 64),
                 ae_latent_channels: int = 4, ae_steps: int = 1000, path: str = "condot", bridge_sigma: float = 0.1,
                 coupling: str = "independent", encode_guidance: float | None = None, train_on: str = "all"):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        if solver not in SOLVER_EVALS:
            raise ValueError(f"unknown solver {solver!r}; available: {', '.join(SOLVER_EVALS)}")
        if coupling not in ("independent", "ot"):
            raise ValueError(f"unknown coupling {coupling!r}; use independent or ot")
        if space not in ("pixel", "latent"):
            raise ValueError(f"unknown space {space!r}; use pixel or latent")
        self.null_label = len(self.domains)
        self.first_stage, channels, size = None, 1, image_size
        if space == "latent":
            ae = load_pretrained(autoencoder) if autoencoder else make_autoencoder(1, ae_latent_channels,
                                                                                   tuple(ae_channels))
            self.first_stage = FirstStage(ae)
            self.register_buffer("first_stage_ready", torch.tensor(bool(autoencoder)))
            channels, size = int(ae.config.latent_channels), image_size // self.first_stage.factor
        self.net = make_unet(size, channels, channels, base_channels, tuple(channel_mults), layers_per_block, attention,
                             num_class_embeds=len(self.domains) + 1)
        self.ema = EMA(self.net, ema_decay)
        self.path = make_path(path, sigma_min, bridge_sigma)
        # minibatch OT pairing: exact on the OT path, entropic (reg 2 sigma^2, SB-CFM) on the bridge path
        self.coupling_reg = 2 * bridge_sigma**2 if path == "bridge" else 0.0

    @classmethod
    def training_domains(cls, domains, sources, target, config=None):
        """Every domain: one model for every pair, as the paper trains it; `train_on="task"` (an ablation: what one
        model for all pairs costs) the task's sources and target only."""
        if (config or {}).get("train_on", "all") == "task":
            return tuple(sources) + (target,)
        return tuple(domains)

    # ------------------------------------------------------------------ training
    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, use_ema: bool = False) -> torch.Tensor:
        net = self.ema.shadow if use_ema else self.net
        return net(x_t, t * self.hparams.time_scale, class_labels=labels).sample

    def prepare_fit(self, data: FitData) -> None:
        """Latent mode with a suite autoencoder: train it on the training images (or take it from the cache)."""
        if self.first_stage is None or bool(self.first_stage_ready):
            return
        hp = self.hparams
        settings = dict(channels=list(hp.ae_channels), latent_channels=hp.ae_latent_channels, steps=hp.ae_steps)
        ae, _ = cached_autoencoder(settings, data.identity, data.train_images(), data.cache_dir)
        self.first_stage.ae.load_state_dict(ae.state_dict())
        self.first_stage.scale.fill_(float(ae.config.scaling_factor))
        self.first_stage_ready.fill_(True)

    def training_step(self, batch, batch_idx):
        x_1, labels = batch["image"], batch["domain"]
        if self.first_stage is not None and not bool(self.first_stage_ready):
            raise RuntimeError("MedShift latent mode: call prepare_fit (the runner does) before training")
        if self.first_stage is not None:
            x_1 = self.first_stage.encode(x_1, sample=True)
        drop = torch.rand(labels.shape, device=labels.device) < self.hparams.p_uncond
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        t = torch.rand(x_1.shape[0], device=x_1.device)
        x_0 = torch.randn_like(x_1)
        if self.hparams.coupling == "ot":  # minibatch (entropic) OT pairing; the data and its labels stay in place
            x_0 = couple(x_0, x_1, reg=self.coupling_reg)
        sample = self.path.sample(x_0, x_1, t)
        loss = F.mse_loss(self(sample.x_t, t, labels), sample.dx_t)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def after_optimizer_step(self) -> None:
        self.ema.update(self.net)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.hparams.max_steps)}

    # ------------------------------------------------------------------ sampling
    def guided_velocity(self, x: torch.Tensor, t: float, label: int, guidance: float) -> torch.Tensor:
        """v(x,t,null) + w (v(x,t,c) - v(x,t,null)); w = 1 / w = 0 skip the branch they do not need."""
        b = x.shape[0]
        tt = torch.full((b,), t, device=x.device, dtype=x.dtype)
        cond = torch.full((b,), label, device=x.device, dtype=torch.long)
        null = torch.full_like(cond, self.null_label)
        if guidance == 1.0:
            return self(x, tt, cond, use_ema=True)
        if guidance == 0.0:
            return self(x, tt, null, use_ema=True)
        v = self(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, null]), use_ema=True)
        v_cond, v_null = v.chunk(2)
        return v_null + guidance * (v_cond - v_null)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None,
                  guidance: float | None = None) -> torch.Tensor:
        tau = float(self.knob(knob_value))
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if tau == 1.0:
            return images.clone()  # no part of the path is re-generated
        w = self.hparams.guidance if guidance is None else guidance
        w_enc = self._encode_guidance(w)
        s, r = self.domain_index(source), self.domain_index(target)
        h, method = self.hparams.step_size, self.hparams.solver
        x_1 = images.float() if self.first_stage is None else self.first_stage.encode(images.float())
        # 1. encode: x(1) = source image -> x(tau) under the source label (backwards in time)
        z = integrate(lambda x, t: self.guided_velocity(x, t, s, w_enc), x_1, 1.0, tau, h, method)
        # 2. decode: x(tau) -> x(1) under the target label
        x_hat = integrate(lambda x, t: self.guided_velocity(x, t, r, w), z, tau, 1.0, h, method)
        if self.first_stage is not None:
            x_hat = self.first_stage.decode(x_hat)
        return x_hat.clamp(-1.0, 1.0)

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor | None:
        """The autoencoder's reconstruction in latent space (None in pixel space)."""
        if self.first_stage is None:
            return None
        return self.first_stage.decode(self.first_stage.encode(images.float()))

    def _encode_guidance(self, w: float) -> float:
        """The encoding leg's guidance: `encode_guidance` where set (an ablation), else the decoding leg's, as in the
        authors' GenerativeZoo code."""
        e = self.hparams.get("encode_guidance")
        return w if e is None else float(e)

    def nfe(self, knob_value=None, guidance: float | None = None) -> int:
        tau = float(self.knob(knob_value))
        w = self.hparams.guidance if guidance is None else guidance
        branches = sum(1 if g in (0.0, 1.0) else 2 for g in (self._encode_guidance(w), w))  # encode + decode legs
        return n_steps(1.0, tau, self.hparams.step_size) * SOLVER_EVALS[self.hparams.solver] * branches
