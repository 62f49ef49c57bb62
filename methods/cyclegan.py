"""CycleGAN (Zhu, Park, Isola, Efros, ICCV 2017), following the junyanz/pytorch-CycleGAN-and-pix2pix
defaults (../shared/reference/baselines.md §A1).

Domain A = the task's source domain(s), B = its target. Generators g_ab (the reference's netG_A)
and g_ba (netG_B), discriminators d_b (netD_A, judges B images) and d_a (netD_B). Losses: least-
squares GAN, cycle consistency lambda = 10 both ways, identity 0.5 * lambda, a 50-image history pool per
discriminator, Adam 2e-4 with betas (0.5, 0.999), learning rate constant for the first half of the
iterations then linearly decayed to 0, batch 1. `max_steps` counts iterations (one generator and one
discriminator update; Lightning's `global_step` counts both, `optimizer_steps_per_iteration`). Manual
optimisation: one generator step, then one step of both discriminators (Lightning's GAN pattern). A and B
images are drawn independently (`pairing = "unpaired"`), so skull-sim's aligned pairs are never seen together.

No structure-realism knob: CycleGAN is one point on every curve. `translate` maps A -> B, and B -> A
when asked for the reverse direction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import TranslationMethod
from .components.gan_nets import PatchDiscriminator, ResnetGenerator, init_normal
from .components.image_pool import ImagePool
from .components.schedules import constant_then_linear


class CycleGAN(TranslationMethod):
    """Two generators and two PatchGAN discriminators trained with cycle consistency."""

    pairing = "unpaired"
    manual_optimization = True
    optimizer_steps_per_iteration = 2  # generators, then discriminators: max_steps iterations = 2 * max_steps steps
    style = dict(color="tab:blue", marker="^", label="CycleGAN")
    smoke_settings = dict(ngf=8, ndf=8, n_blocks=1, max_steps=3)
    allowed = {**TranslationMethod.allowed, "ngf": "[1, inf)", "ndf": "[1, inf)", "n_blocks": "[0, inf)",
               "lambda_cycle": "[0, inf)", "lambda_identity": "[0, inf)", "pool_size": "[0, inf)", "beta1": "[0, 1)"}

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, ngf: int = 64, ndf: int = 64, n_blocks: int | None = None,
                 lambda_cycle: float = 10.0, lambda_identity: float = 0.5, pool_size: int = 50, lr: float = 2e-4,
                 beta1: float = 0.5, max_steps: int = 2000, batch_size: int = 1):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        blocks = n_blocks if n_blocks is not None else (9 if image_size >= 256 else 6)
        self.g_ab, self.g_ba = (init_normal(ResnetGenerator(1, 1, ngf, blocks)) for _ in range(2))
        self.d_a, self.d_b = (init_normal(PatchDiscriminator(1, ndf, 3)) for _ in range(2))
        # the pools draw from torch's global generator, which the runner seeds per run and every resume point saves
        self.pool_a, self.pool_b = ImagePool(pool_size), ImagePool(pool_size)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The pools' images are training state: a resumed fit continues with the history it had."""
        checkpoint["image_pools"] = {"a": [t.cpu() for t in self.pool_a.images],
                                     "b": [t.cpu() for t in self.pool_b.images]}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pools = checkpoint.get("image_pools", {})
        self.pool_a.images = [t.to(self.device) for t in pools.get("a", [])]
        self.pool_b.images = [t.to(self.device) for t in pools.get("b", [])]

    # ------------------------------------------------------------------ training
    @staticmethod
    def _gan_loss(prediction: torch.Tensor, is_real: bool) -> torch.Tensor:
        """LSGAN: MSE against 1 (real) or 0 (fake) over the patch map."""
        return F.mse_loss(prediction, torch.full_like(prediction, 1.0 if is_real else 0.0))

    def _discriminator_loss(self, net, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self._gan_loss(net(real), True) + self._gan_loss(net(fake.detach()), False))

    def _generator_loss(self, real_a, real_b):
        lam, lam_idt = self.hparams.lambda_cycle, self.hparams.lambda_identity * self.hparams.lambda_cycle
        fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
        loss_gan = self._gan_loss(self.d_b(fake_b), True) + self._gan_loss(self.d_a(fake_a), True)
        loss_cycle = lam * (F.l1_loss(self.g_ba(fake_b), real_a) + F.l1_loss(self.g_ab(fake_a), real_b))
        loss_idt = 0
        if lam_idt:
            loss_idt = lam_idt * (F.l1_loss(self.g_ab(real_b), real_b) + F.l1_loss(self.g_ba(real_a), real_a))
        return loss_gan + loss_cycle + loss_idt, fake_a, fake_b, dict(gan=loss_gan, cycle=loss_cycle)

    def training_step(self, batch, batch_idx):
        opt_g, opt_d = self.optimizers()
        real_a, real_b = batch["image_a"], batch["image_b"]
        # 1. generators (discriminators frozen)
        self.toggle_optimizer(opt_g)
        loss_g, fake_a, fake_b, parts = self._generator_loss(real_a, real_b)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)
        # 2. discriminators on pooled history of generated images
        self.toggle_optimizer(opt_d)
        loss_d = (self._discriminator_loss(self.d_b, real_b, self.pool_b.query(fake_b))
                  + self._discriminator_loss(self.d_a, real_a, self.pool_a.query(fake_a)))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        for sched in self.lr_schedulers():
            sched.step()
        self.log_dict({"train/loss_g": loss_g, "train/loss_d": loss_d, "train/cycle": parts["cycle"]}, prog_bar=True)
        return {"loss_g": loss_g.detach(), "loss_d": loss_d.detach()}

    def configure_optimizers(self):
        betas = (self.hparams.beta1, 0.999)
        generators = list(self.g_ab.parameters()) + list(self.g_ba.parameters())
        discriminators = list(self.d_a.parameters()) + list(self.d_b.parameters())
        opt_g = torch.optim.Adam(generators, self.hparams.lr, betas=betas)
        opt_d = torch.optim.Adam(discriminators, self.hparams.lr, betas=betas)
        return [opt_g, opt_d], [constant_then_linear(o, self.hparams.max_steps) for o in (opt_g, opt_d)]

    # ------------------------------------------------------------------ translation
    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        self.check_knob(knob_value)
        if source in self.sources and target == self.target:
            return self.g_ab(images)
        if source == self.target and target in self.sources:
            return self.g_ba(images)
        raise KeyError(f"CycleGAN was trained for {'+'.join(self.sources)} <-> {self.target}; "
                       f"cannot translate {source} -> {target}")

    def nfe(self, knob_value=None) -> int:
        return 1
