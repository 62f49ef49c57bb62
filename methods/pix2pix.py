"""pix2pix (Isola, Zhu, Zhou, Efros, CVPR 2017): a conditional GAN trained on aligned (source, target) pairs,
following junyanz/pytorch-CycleGAN-and-pix2pix `models/pix2pix_model.py` (../shared/reference/baselines.md).

A paired upper bound: it sees the answer (each source image with the aligned target image of its own scene,
`pairing = "paired"`), which no unpaired method does; the tables list it in its own group.

Generator: the reference's U-Net with skip connections and dropout as noise (`components.gan_nets.UnetGenerator`,
n_down = log2(image size), the analogue of `unet_256` at other sizes). Discriminator: the 70x70 PatchGAN on the
channel-concatenated (source, image) pair, so it judges whether an output belongs to its input. Losses: vanilla
GAN (BCE with logits), D loss halved, generator loss GAN + lambda_L1 * L1(output, target) with lambda_L1 = 100.
Adam 2e-4, betas (0.5, 0.999) for both networks, batch 1, learning rate constant for the first half of the
iterations then linearly decayed to 0 (the reference's 100 + 100 epochs, `constant_then_linear`), init N(0, 0.02).
Update order as the reference's `optimize_parameters`: discriminator first, then generator (manual optimisation,
two optimizer steps per iteration). No image pool (the reference's pix2pix sets pool_size 0).

Deviations (documented):
* norms: the reference's default BatchNorm runs at batch 1 in training mode, at training and at test time alike
  (its test script does not call eval() unless `--eval`), i.e. each image is normalised by its own statistics with
  a learned scale and shift: that is an affine InstanceNorm, used here so that translating in batches gives the
  same per-image result;
* dropout: kept active at translation, as in the reference's default test (the "noise" of pix2pix), with a fixed
  seed per call so that translations are reproducible;
* sizes: `ngf`, `ndf` are config (CPU-sized on `tiny`, `benchmark/configs/pix2pix.yaml`), and so is the batch:
  1 by default as the reference, 4 on `tiny` (the paper used 1 to 10 depending on the dataset), where batch 1 is
  overhead-bound on a CPU (3x the wall time for the same FLOPs, measured); training length is the preset's FLOP
  budget; no random jitter/crop augmentation.
No structure-realism knob: one point on every curve.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TranslationMethod
from .components.gan_nets import PatchDiscriminator, UnetGenerator, init_normal
from .components.schedules import constant_then_linear


def run_with_dropout(net: torch.nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """`net(x)` with its Dropout layers active and the dropout masks drawn from `seed` (the global generator is left
    as it was), everything else in eval mode."""
    dropouts = [m for m in net.modules() if isinstance(m, torch.nn.Dropout)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in dropouts:
            m.train()
        try:
            return net(x)
        finally:
            for m in dropouts:
                m.eval()


class Pix2Pix(TranslationMethod):
    """U-Net generator + (source, image) PatchGAN, trained on aligned pairs."""

    pairing = "paired"
    manual_optimization = True
    optimizer_steps_per_iteration = 2  # discriminator, then generator
    style = dict(color="tab:cyan", marker="*", label="pix2pix (paired)")
    smoke_settings = dict(ngf=8, ndf=8, max_steps=3)
    allowed = {**TranslationMethod.allowed, "ngf": "[1, inf)", "ndf": "[1, inf)", "lambda_l1": "[0, inf)",
               "beta1": "[0, 1)"}

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, ngf: int = 64, ndf: int = 64, lambda_l1: float = 100.0, lr: float = 2e-4,
                 beta1: float = 0.5, max_steps: int = 2000, batch_size: int = 1, dropout: bool = True):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.g = init_normal(UnetGenerator(1, 1, image_size, ngf, dropout=dropout, affine_norm=True))
        self.d = init_normal(PatchDiscriminator(2, ndf, 3, affine_norm=True))
        # the dropout seed of translation: drawn from the run's seeded generator, kept in checkpoints
        self.register_buffer("sample_seed", torch.randint(0, 2**31 - 1, ()))

    @staticmethod
    def _gan_loss(logits: torch.Tensor, is_real: bool) -> torch.Tensor:
        """Vanilla GAN: BCE with logits against 1 (real) or 0 (fake) over the patch map."""
        return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, 1.0 if is_real else 0.0))

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        real_a, real_b = batch["image_a"], batch["image_b"]
        fake_b = self.g(real_a)
        # 1. discriminator on (source, real target) vs (source, output)
        self.toggle_optimizer(opt_d)
        loss_d = 0.5 * (self._gan_loss(self.d(torch.cat([real_a, fake_b.detach()], 1)), False)
                        + self._gan_loss(self.d(torch.cat([real_a, real_b], 1)), True))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        # 2. generator: fool the discriminator and stay close to the aligned target
        self.toggle_optimizer(opt_g)
        loss_gan = self._gan_loss(self.d(torch.cat([real_a, fake_b], 1)), True)
        loss_l1 = self.hparams.lambda_l1 * F.l1_loss(fake_b, real_b)
        opt_g.zero_grad()
        self.manual_backward(loss_gan + loss_l1)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        for sched in self.lr_schedulers():
            sched.step()
        self.log_dict({"train/loss_d": loss_d, "train/loss_g_gan": loss_gan, "train/loss_l1": loss_l1}, prog_bar=True)
        return {"loss_d": loss_d.detach(), "loss_g": (loss_gan + loss_l1).detach()}

    def configure_optimizers(self):
        betas = (self.hparams.beta1, 0.999)
        opt_g = torch.optim.Adam(self.g.parameters(), self.hparams.lr, betas=betas)
        opt_d = torch.optim.Adam(self.d.parameters(), self.hparams.lr, betas=betas)
        return [opt_g, opt_d], [constant_then_linear(o, self.hparams.max_steps) for o in (opt_g, opt_d)]

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_knob(knob_value)
        self.check_direction(source, target)
        return run_with_dropout(self.g, images.float(), int(self.sample_seed))

    def nfe(self, knob_value=None) -> int:
        return 1
