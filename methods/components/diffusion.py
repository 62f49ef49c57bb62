"""Shared DDPM core for the diffusion baselines (SDEdit, ContourDiff): schedule, loss, img2img sampling.

Built on diffusers' `DDPMScheduler` from config (no weights): T = 1000, linear beta 1e-4 ... 0.02,
epsilon prediction. `denoise_from` is SDEdit's img2img loop: noise the start image with the forward
process q(x_t0 | x_0) to exactly t0 = round(strength * T) (capped at T - 1), then denoise from t0 to the
clean image in round(n_steps * strength) evenly spaced steps t0 = s_1 > s_2 > ... > s_n > 0, the last step
landing on x_0 (alpha_bar = 1). Strength 0 returns the start image; strength 1 starts from pure noise.

Why not diffusers' pipelines: their img2img keeps the last int(n_steps * strength) timesteps of the
"leading" grid (980, 960, ..., 0 for 50 steps), so strength 0.1 / 0.2 / 0.3 noised to t = 80 / 180 / 280,
one stride below t0 * T (`tests/methods/test_diffusion.py` pins both grids). Ancestral steps run through
`DDPMScheduler.step` with these custom timesteps (its posterior uses the next listed timestep);
`DDIMScheduler` accepts no custom timesteps, so the DDIM (eta = 0) update is written out here (eq. 12 of
Song et al. 2021, with the predicted x_0 clipped to [-1, 1] as diffusers does).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

SAMPLERS = ("ddim", "ddpm")


class DiffusionCore:
    """Noise schedule plus sampler (plain object; the LightningModules own the networks).

    Args:
        num_train_timesteps: T.
        beta_start, beta_end: Linear beta schedule.
        sampler: "ddim" (deterministic, eta = 0) or "ddpm" (ancestral, fixed-small variance).
        num_inference_steps: Sampler steps over the whole [0, T) range.
    """

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
                 sampler: str = "ddim", num_inference_steps: int = 50):
        from diffusers import DDPMScheduler

        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")
        cfg = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                   beta_schedule="linear", prediction_type="epsilon", clip_sample=True)
        self.train_scheduler = DDPMScheduler(**cfg)
        self.scheduler = DDPMScheduler(**cfg)  # ancestral steps over custom timesteps (DDIM: `_ddim_step`)
        self.sampler, self.num_inference_steps, self.T = sampler, num_inference_steps, num_train_timesteps

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self.train_scheduler.alphas_cumprod

    def loss(self, eps_model: Callable, x_0: torch.Tensor) -> torch.Tensor:
        """Simple DDPM loss: || eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t) ||^2, t ~ U{0..T-1}."""
        t = torch.randint(0, self.T, (x_0.shape[0],), device=x_0.device)
        noise = torch.randn_like(x_0)
        x_t = self.train_scheduler.add_noise(x_0, noise, t)
        return F.mse_loss(eps_model(x_t, t), noise)

    def timesteps_for(self, strength: float) -> torch.Tensor:
        """Timesteps (descending, long) an img2img run at `strength` evaluates; the first is round(strength * T)."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        t_start = min(round(strength * self.T), self.T - 1)
        n = min(round(self.num_inference_steps * strength), t_start)
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.linspace(t_start, 0, n + 1, dtype=torch.float64).round().long()[:-1]

    def _ddim_step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor,
                   clip: float | None = 1.0) -> torch.Tensor:
        """x_{t_prev} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev) eps, x0_hat = clip((x - sqrt(1 - a) eps) / sqrt(a))
        (`clip` None: x0_hat unclipped, for data that is not an image in [-1, 1])."""
        ab = self.alphas_cumprod.to(x.device, torch.float64)
        a, a_prev = ab[t], (ab[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64, device=x.device))
        x0 = (x.double() - (1 - a).sqrt() * eps.double()) / a.sqrt()
        x0 = x0.clamp(-clip, clip) if clip is not None else x0
        return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps.double()).to(x.dtype)

    @torch.no_grad()
    def ddim_sample(self, eps_model: Callable, x_T: torch.Tensor, n_steps: int,
                    clip: float | None = None) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from pure noise `x_T` at t = T - 1 to x_0 in `n_steps` evenly spaced steps
        (any shape: images or code vectors; `clip` bounds the predicted x_0 as in `_ddim_step`)."""
        timesteps = torch.linspace(self.T - 1, 0, n_steps + 1, dtype=torch.float64).round().long()[:-1].tolist()
        x = x_T
        for i, t in enumerate(timesteps):
            eps = eps_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            x = self._ddim_step(eps, t, timesteps[i + 1] if i + 1 < len(timesteps) else -1, x, clip)
        return x

    @torch.no_grad()
    def denoise_from(self, eps_model: Callable, x_start: torch.Tensor, strength: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """img2img: noise `x_start` to t0 = round(strength * T), then denoise to the clean image.

        Args:
            eps_model: (x_t, t) -> predicted noise; t a (B,) long tensor.
            x_start: (B, C, H, W) in [-1, 1].
            strength: SDEdit's t0 / T.
            generator: Noise source (same generator state -> same output).

        Returns:
            (B, C, H, W) in [-1, 1].
        """
        timesteps = self.timesteps_for(strength)
        if len(timesteps) == 0:
            return x_start.clone()
        noise = torch.randn(x_start.shape, generator=generator, device="cpu").to(x_start.device, x_start.dtype)
        # 1. forward process q(x_t0 | x_0)
        x = self.train_scheduler.add_noise(x_start, noise, timesteps[:1].repeat(x_start.shape[0]).to(x_start.device))
        # 2. reverse process over the listed timesteps; the step after the last lands on x_0
        self.scheduler.set_timesteps(timesteps=timesteps.tolist())
        for i, t in enumerate(timesteps.tolist()):
            eps = eps_model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
            if self.sampler == "ddim":
                x = self._ddim_step(eps, t, int(timesteps[i + 1]) if i + 1 < len(timesteps) else -1, x)
            else:
                x = self.scheduler.step(eps, t, x, generator=generator).prev_sample
        return x.clamp(-1.0, 1.0)

    def nfe(self, strength: float) -> int:
        return len(self.timesteps_for(strength))
