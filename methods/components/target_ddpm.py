"""A DDPM of the target domain, trained and sampled the same way for every method that uses one (SDEdit,
ContourDiff): a diffusers U-Net noise predictor, its EMA copy, the noise schedule and sampler
(`DiffusionCore`) and the sampling seed. A method composes one and keeps only what is its own: the
conditioning it feeds the network (ContourDiff's contour map; none for SDEdit) and its knob.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .diffusion import DiffusionCore
from .ema import EMA
from .schedules import warmup_cosine
from .unet import make_unet


class TargetDDPM(nn.Module):
    """Noise predictor eps(x_t, t [, condition]) with EMA, DDPM loss, and noise-then-denoise sampling.

    Args:
        image_size: Side of the images.
        condition_channels: Channels concatenated to x_t as conditioning (0: unconditional).
        base_channels, channel_mults, layers_per_block, attention: The U-Net (`make_unet`).
        sampler, num_inference_steps: The sampler (`DiffusionCore`).
        ema_decay: EMA decay of the weights used for sampling.
    """

    _LEGACY = ("net.", "ema.", "sample_seed")  # keys of checkpoints from before this component (method level)

    def __init__(self, image_size: int, condition_channels: int = 0, base_channels: int = 32,
                 channel_mults: tuple[int, ...] = (1, 2, 2), layers_per_block: int = 1, attention: bool = False,
                 sampler: str = "ddpm", num_inference_steps: int = 50, ema_decay: float = 0.999):
        super().__init__()
        self.net = make_unet(image_size, 1 + condition_channels, 1, base_channels, tuple(channel_mults),
                             layers_per_block, attention)
        self.ema = EMA(self.net, ema_decay)
        self.core = DiffusionCore(sampler=sampler, num_inference_steps=num_inference_steps)
        # sampling noise seed: drawn from the run's seeded global RNG, stored so checkpoints reproduce it, and
        # reused for every knob value so that a sweep differs only in the knob
        self.register_buffer("sample_seed", torch.randint(0, 2**31 - 1, ()))

    @classmethod
    def adopt_legacy_keys(cls, owner: nn.Module, name: str) -> None:
        """Let `owner` (which holds this component as `owner.<name>`) load checkpoints written before the component
        existed, whose tensors sat on the method itself (`net.*`, `ema.*`, `sample_seed`). Registered on the owner:
        torch hands a child's hook only the keys under the child's own prefix."""
        def hook(state_dict, prefix, *args):
            for key in [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].startswith(cls._LEGACY)]:
                state_dict[f"{prefix}{name}.{key[len(prefix):]}"] = state_dict.pop(key)

        owner._register_load_state_dict_pre_hook(hook)

    def eps(self, ema: bool = False, condition: torch.Tensor | None = None) -> Callable:
        """The noise predictor (the EMA copy with `ema`), conditioned on `condition` if given."""
        net = self.ema.shadow if ema else self.net
        if condition is None:
            return lambda x_t, t: net(x_t, t).sample
        return lambda x_t, t: net(torch.cat([x_t, condition], dim=1), t).sample

    def loss(self, x_0: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return self.core.loss(self.eps(condition=condition), x_0)

    def update_ema(self) -> None:
        self.ema.update(self.net)

    def optimizers(self, lr: float, warmup_steps: int, max_steps: int) -> dict:
        """AdamW with linear warm-up and cosine decay, stepped every iteration (Lightning's config dict)."""
        opt = torch.optim.AdamW(self.net.parameters(), lr=lr)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, warmup_steps, max_steps)}

    def generator(self) -> torch.Generator:
        """A fresh sampling generator from the stored seed (the same noise for every call and knob value)."""
        return torch.Generator().manual_seed(int(self.sample_seed))

    @torch.no_grad()
    def denoise_from(self, x: torch.Tensor, level: float, condition: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise `x` to timestep round(level * T), then denoise to 0 with the EMA network."""
        return self.core.denoise_from(self.eps(ema=True, condition=condition), x.float(), level,
                                      generator if generator is not None else self.generator())

    def nfe(self, level: float) -> int:
        return self.core.nfe(level)
