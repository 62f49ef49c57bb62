"""CDM: the Cross-conditioned Diffusion Model (Xing et al., MICCAI 2024, arXiv 2409.08500), reimplemented in 2-D
from its public description (no code was published; ../shared/REFERENCE.md §3). A paired upper bound
(`pairing = "paired"`: each training source image with the aligned target image of its own scene).

The three parts of the paper, and what each is here:
1. Modality-specific Representation Model (MRM): an encoder/decoder trained on the *target* modality by
   reconstructing masked patches (L2 on the masked patches only), whose bottleneck is a compact representation
   z of a target image (`components.cdm_nets.RepresentationModel`; 8-px patches, half of them masked, z of
   `code_dim` = 64 entries normalised to zero mean and unit variance).
2. Modality-decoupled Diffusion Network (MDN): linear layers and residual blocks that denoise z
   (`components.cdm_nets.VectorDenoiser`, a DDPM on codes: T = 1000, linear betas, epsilon prediction), conditioned
   on a code of the *source* image from a second encoder, so that at translation a target representation
   compatible with the source is *sampled*: deterministic DDIM in `mdn_steps` = 10 steps from noise
   (`components.diffusion.DiffusionCore.ddim_sample`), the paper's "few steps on a compact vector".
3. Cross-conditioned U-Net: maps the source image to the target under that representation; the condition
   embedding module (an MLP) turns z into the width of the U-Net's time embedding, which every ResNet block
   receives as a scale and shift of its normalised features (FiLM/AdaGN: diffusers' `class_embed_type="identity"`
   with `resnet_time_scale_shift="scale_shift"`; the time input is constant, it is not a diffusion U-Net).
   Trained with the synthesis loss (L1) against the paired target.

Our choices where the paper's details are not public (documented, not tuned on any split):
* the three parts train jointly, one AdamW optimiser over all of them, loss = MRM + MDN + synthesis, with stop-
  gradients so that each part learns only from its own loss as in the paper's stages: the MDN learns the MRM's
  code of the *unmasked* target image (detached); warm-up then cosine decay; an EMA copy of every network is used
  for translation;
* the U-Net is conditioned in training on the MDN's own estimate of the target code (its one-step prediction of z
  from z_t at the step's random noise level, renormalised, detached), not on the true code: with the true code
  (teacher forcing) the U-Net learned to read the target from z (training L1 0.03 on `micro`) and failed on the
  MDN's samples at translation (SSIM to the aligned image 0.15, below no translation's 0.65), measured on the
  `micro` preset; sampled codes are renormalised like the MRM's (`normalize_code`);
* encoder widths, `code_dim`, patch size and mask ratio as above; the L1 synthesis loss;
* translation is seeded (a stored seed draws the MDN's starting noise), so it is reproducible.
nfe = `mdn_steps` evaluations of the MDN plus one of the source encoder and one of the U-Net per image (the MDN's
evaluations are of a small MLP, far cheaper than a U-Net's). No structure-realism knob: one point on every curve.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import TranslationMethod
from .components.cdm_nets import ImageEncoder, RepresentationModel, VectorDenoiser
from .components.diffusion import DiffusionCore
from .components.ema import EMA
from .components.schedules import warmup_cosine
from .components.unet import make_unet


def normalize_code(z: torch.Tensor) -> torch.Tensor:
    """Zero mean and unit variance over a code's entries: the scale of the MRM's codes (its final LayerNorm)."""
    return F.layer_norm(z, z.shape[-1:])


class CDM(TranslationMethod):
    """Masked-patch representation model + code diffusion + cross-conditioned U-Net, trained on aligned pairs."""

    pairing = "paired"
    sampling_settings = ("mdn_steps",)
    sampling_grid = {"mdn_steps": (10, 20)}  # code-sampling DDIM steps, chosen on validation
    style = dict(color="tab:pink", marker="h", label="CDM (paired)")
    smoke_settings = dict(base_channels=8, channel_mults=(1, 2), encoder_channels=4, code_dim=8, mdn_width=16,
                          mdn_blocks=1, mdn_steps=2, max_steps=3, batch_size=4, warmup_steps=1)
    allowed = {**TranslationMethod.allowed, "code_dim": "[2, inf)", "encoder_channels": "[1, inf)", "patch": "[1, inf)",
               "mask_ratio": "(0, 1)", "mdn_width": "[1, inf)", "mdn_blocks": "[0, inf)", "mdn_steps": "[1, 1000]"}

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, base_channels: int = 32, channel_mults: tuple[int, ...] = (1, 2, 2),
                 layers_per_block: int = 1, code_dim: int = 64, encoder_channels: int = 16, patch: int = 8,
                 mask_ratio: float = 0.5, mdn_width: int = 256, mdn_blocks: int = 3, mdn_steps: int = 10,
                 lr: float = 2e-4, warmup_steps: int = 100, max_steps: int = 2000, batch_size: int = 16,
                 ema_decay: float = 0.999):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        time_dim = base_channels * 4  # the width of UNet2DModel's time embedding
        self.nets = nn.ModuleDict(dict(
            mrm=RepresentationModel(image_size, encoder_channels, code_dim, patch, mask_ratio),
            source_encoder=ImageEncoder(image_size, encoder_channels, code_dim),
            mdn=VectorDenoiser(code_dim, mdn_width, mdn_blocks),
            cond_embed=nn.Sequential(nn.Linear(code_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)),
            unet=make_unet(image_size, 1, 1, base_channels, tuple(channel_mults), layers_per_block,
                           class_embed_type="identity", scale_shift=True),
        ))
        self.ema = EMA(self.nets, ema_decay)
        self.core = DiffusionCore(sampler="ddim", num_inference_steps=mdn_steps)
        self.register_buffer("sample_seed", torch.randint(0, 2**31 - 1, ()))

    # ------------------------------------------------------------------ the three parts
    @staticmethod
    def synthesize(nets: nn.ModuleDict, x_src: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The cross-conditioned U-Net: source images (B, 1, H, W) under target codes z (B, code_dim)."""
        t = torch.zeros(len(x_src), dtype=torch.long, device=x_src.device)
        return nets["unet"](x_src, t, class_labels=nets["cond_embed"](z)).sample

    def losses(self, x_src: torch.Tensor, x_tgt: torch.Tensor) -> dict:
        nets = self.nets
        # 1. MRM: reconstruct masked patches of the target
        loss_mrm = nets["mrm"].loss(x_tgt)
        # 2. the target's code, the MDN's training target (stop-gradient: the MRM learns from 1 only)
        z = nets["mrm"].encoder(x_tgt).detach()
        # 3. MDN: denoise the code at a random noise level, conditioned on the source's code
        c = nets["source_encoder"](x_src)
        t = torch.randint(0, self.core.T, (len(z),), device=z.device)
        noise = torch.randn_like(z)
        z_t = self.core.train_scheduler.add_noise(z, noise, t)
        eps = nets["mdn"](z_t, t, c)
        loss_mdn = F.mse_loss(eps, noise)
        # 4. the cross-conditioned U-Net: the paired target from the source under the MDN's own estimate of the code
        #    (its one-step prediction of z from z_t, renormalised, detached): codes of the quality the MDN delivers
        a = self.core.alphas_cumprod.to(z.device, z.dtype)[t][:, None]
        z_hat = normalize_code((z_t - (1 - a).sqrt() * eps) / a.sqrt()).detach()
        loss_syn = F.l1_loss(self.synthesize(nets, x_src, z_hat), x_tgt)
        return dict(mrm=loss_mrm, mdn=loss_mdn, syn=loss_syn)

    def training_step(self, batch, batch_idx):
        parts = self.losses(batch["image_a"], batch["image_b"])
        loss = parts["mrm"] + parts["mdn"] + parts["syn"]
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, prog_bar=True)
        return loss

    def after_optimizer_step(self) -> None:
        self.ema.update(self.nets)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.nets.parameters(), lr=self.hparams.lr)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, self.hparams.warmup_steps, self.hparams.max_steps)}

    # ------------------------------------------------------------------ translation
    @torch.no_grad()
    def sample_codes(self, nets: nn.ModuleDict, x_src: torch.Tensor) -> torch.Tensor:
        """Target codes sampled by the MDN for each source image (DDIM from seeded noise)."""
        c = nets["source_encoder"](x_src)
        g = torch.Generator().manual_seed(int(self.sample_seed))
        z_T = torch.randn((len(x_src), self.hparams.code_dim), generator=g).to(x_src.device, x_src.dtype)
        z = self.core.ddim_sample(lambda z_t, t: nets["mdn"](z_t, t, c), z_T, self.hparams.mdn_steps, clip=None)
        return normalize_code(z)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_knob(knob_value)
        self.check_direction(source, target)
        nets = self.ema.shadow
        x = images.float()
        return self.synthesize(nets, x, self.sample_codes(nets, x)).clamp(-1.0, 1.0)

    def nfe(self, knob_value=None) -> int:
        return self.hparams.mdn_steps + 2
