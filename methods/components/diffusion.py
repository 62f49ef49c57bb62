"""Shared DDPM core for the diffusion baselines (SDEdit, ContourDiff): schedule, loss, img2img sampling.

Built on diffusers' `DDPMScheduler` / `DDIMScheduler` from config (no weights): T = 1000, linear
beta 1e-4 ... 0.02, epsilon prediction. `denoise_from` implements the img2img ("strength") loop of
diffusers' pipelines: keep the last `int(n_steps * strength)` of the sampler's timesteps, noise the
start image to the first of them with the forward process q(x_t | x_0), then run the sampler.
Strength 0 returns the start image; strength 1 starts (almost) from pure noise.
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
        from diffusers import DDIMScheduler, DDPMScheduler

        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; available: {', '.join(SAMPLERS)}")
        cfg = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                   beta_schedule="linear", prediction_type="epsilon", clip_sample=True)
        self.train_scheduler = DDPMScheduler(**cfg)
        self.scheduler = DDIMScheduler(**cfg) if sampler == "ddim" else DDPMScheduler(**cfg)
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
        """Sampler timesteps (descending) that an img2img run at `strength` visits."""
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        self.scheduler.set_timesteps(self.num_inference_steps)
        n_keep = min(int(self.num_inference_steps * strength), self.num_inference_steps)
        return self.scheduler.timesteps[self.num_inference_steps - n_keep:]

    @torch.no_grad()
    def denoise_from(self, eps_model: Callable, x_start: torch.Tensor, strength: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """img2img: noise `x_start` to the level of `strength`, then denoise to t = 0.

        Args:
            eps_model: (x_t, t) -> predicted noise; t a (B,) long tensor.
            x_start: (B, C, H, W) in [-1, 1].
            strength: Fraction of the sampler's steps re-generated (SDEdit's t0 / T).
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
        # 2. reverse process over the kept timesteps
        for t in timesteps:
            t_batch = torch.full((x.shape[0],), int(t), device=x.device, dtype=torch.long)
            eps = eps_model(x, t_batch)
            x = self.scheduler.step(eps, int(t), x, generator=generator).prev_sample
        return x.clamp(-1.0, 1.0)

    def nfe(self, strength: float) -> int:
        return len(self.timesteps_for(strength))
