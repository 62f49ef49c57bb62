"""Few-step MedShift (issue 34): a student distilled from a finished MedShift fit, its *teacher*, that translates with
2 to 4 network evaluations per image where the teacher needs 16 to 28 on `tiny`.

The student is one network u(x, s, t, c, w), the average velocity of the teacher's guided ODE from time s to time t
(`components.flowmap`): a jump X(x, s -> t) = x + (t - s) u of any length in either direction, for any domain label
c and guidance weight w. It is trained on the MeanFlow identity with the teacher's guided velocity as the
instantaneous velocity (`flowmap_loss`; at t = s that is guidance distillation, Meng et al. 2023: the guided velocity
in one evaluation), on states of one domain's path under a label drawn independently (`training_states`: the decode
leg starts from a state of the source class under the target label), with w drawn from `guidance_range`.

Translation S -> R at tau is MedShift's two legs with `jumps` student evaluations each: encode 1 -> tau under S,
decode tau -> 1 under R (nfe = 2 jumps; tau stays a free knob). The guidance is the teacher's validation-chosen w
(`guidance` None) or a given one.

The teacher is found by the runner (`TranslationMethod.teacher`: the finished headline fit of MedShift of the same
seed and data, `benchmark.orchestration.utility.find_run`) and handed over in `FitData.teacher`; its weights are
never part of the student's checkpoint. The records carry the teacher's run id and training FLOPs beside the
student's own. Pixel-space teachers only.
"""
from __future__ import annotations

import torch

from .base import FitData, TranslationMethod
from .components.ema import EMA
from .components.flowmap import FlowMapNet, flowmap_loss, jump, training_states
from .components.schedules import warmup_cosine
from .medshift import MedShift

#: Forward passes' worth of FLOPs a JVP adds to the primal's (measured with torch's counter on a conv net)
JVP_EXTRA_FORWARDS = 2


class MedShiftFewStep(TranslationMethod):
    """A two-time flow map distilled from a MedShift teacher (see module docstring)."""

    knob_name = "tau"
    knob_grid = MedShift.knob_grid
    knob_bounds = MedShift.knob_bounds
    knob_curve = MedShift.knob_curve
    round_trip = True
    teacher = "medshift"
    sampling_settings = ("jumps", "guidance")
    allowed = {**TranslationMethod.allowed, "jumps": "[1, inf)", "guidance": "[0, inf)", "p_velocity": "[0, 1]",
               "guidance_range": "[0, inf)", "sigma_min": "[0, 1)", "time_scale": "(0, inf)"}
    style = dict(color="tab:orange", marker="d", label="MedShift few-step (τ)")
    smoke_settings = dict(base_channels=8, channel_mults=(1, 2), max_steps=3, batch_size=4, warmup_steps=1)

    def __init__(self, domains: tuple[str, ...] = (), sources: tuple[str, ...] = (), target: str = "",
                 image_size: int = 64, base_channels: int = 16, channel_mults: tuple[int, ...] = (1, 2, 2),
                 layers_per_block: int = 1, lr: float = 5e-4, weight_decay: float = 0.0, warmup_steps: int = 100,
                 max_steps: int = 2000, batch_size: int = 16, ema_decay: float = 0.999, time_scale: float = 1000.0,
                 sigma_min: float = 1e-4, jumps: int = 2, guidance: float | None = None,
                 guidance_range: tuple[float, float] = (1.0, 2.0), p_velocity: float = 0.25):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.student = FlowMapNet(image_size, 1, base_channels, tuple(channel_mults), len(self.domains),
                                  layers_per_block, time_scale)
        self.ema = EMA(self.student, ema_decay)
        #: the guidance weight the teacher's validation chose (saved with the student: translation needs it)
        self.register_buffer("teacher_guidance", torch.tensor(2.0))
        object.__setattr__(self, "_teacher", None)  # not a submodule: never in the student's checkpoint

    @classmethod
    def training_domains(cls, domains, sources, target, config=None):
        """Every domain, as its teacher: any pair translates through the same two legs."""
        return tuple(domains)

    def prepare_fit(self, data: FitData) -> None:
        """Take the teacher (its selected weights, frozen) and the guidance its validation chose."""
        teacher = self.handed_teacher(data)
        if getattr(teacher, "first_stage", None) is not None:
            raise ValueError(f"{type(self).__name__} distils a pixel-space {self.teacher} only; its teacher has "
                             "space=latent")
        object.__setattr__(self, "_teacher", teacher.eval().requires_grad_(False))
        chosen = (data.teacher_info or {}).get("sampling") or {}
        self.teacher_guidance.fill_(float(chosen.get("guidance", teacher.hparams.guidance)))

    # ------------------------------------------------------------------ training
    def _teacher_velocity(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, w: torch.Tensor):
        """The teacher's guided velocity per sample: v(null) + w (v(c) - v(null)), one batched call."""
        teacher = self._teacher.to(x.device)
        null = torch.full_like(labels, teacher.null_label)
        v = teacher(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]), use_ema=True)
        v_cond, v_null = v.chunk(2)
        return v_null + w.view(-1, 1, 1, 1) * (v_cond - v_null)

    def training_step(self, batch, batch_idx):
        if self._teacher is None:
            raise RuntimeError(f"{type(self).__name__}: call prepare_fit with the teacher (the runner does) first")
        x_1 = batch["image"]
        hp = self.hparams
        x_s, s, t, labels = training_states(x_1, len(self.domains), hp.sigma_min)
        zero = torch.rand(s.shape, device=s.device) < hp.p_velocity  # guidance distillation: zero-length jumps
        t = torch.where(zero, s, t)
        lo, hi = (float(v) for v in hp.guidance_range)
        w = lo + (hi - lo) * torch.rand(s.shape, device=s.device)
        # in fp32 under bf16-mixed as well: autocast does not cast forward-mode (JVP) inputs, and the identity's
        # target is a difference of nearby quantities
        with torch.autocast(device_type=x_1.device.type, enabled=False):
            if getattr(self, "counting_flops", False):
                loss = self._flops_stand_in(x_s.float(), s, t, labels, w)
            else:
                loss = flowmap_loss(self.student, self._teacher_velocity, x_s.float(), s, t, labels, w)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _flops_stand_in(self, x, s, t, labels, w) -> torch.Tensor:
        """What the budget counts for one step (`benchmark.protocol.budget.flops_per_iteration`: torch's FLOP counter
        crashes on forward-mode AD through the U-Net): the teacher's guided velocity, the student's forward pass with
        its backward, and two more forward passes for the JVP's tangent. Two, not one: on a conv net the counter can
        run, `torch.func.jvp` executes three forward passes' worth of convolutions, and the real step counts exactly
        what this stand-in counts (`tests/methods/test_fewstep.py`)."""
        with torch.no_grad():
            v = self._teacher_velocity(x, s, labels, w)
            tangent = sum(self.student(x + v, s, t, labels, w) for _ in range(JVP_EXTRA_FORWARDS))
        return (self.student(x, s, t, labels, w) - v - 0 * tangent).pow(2).mean()

    def after_optimizer_step(self) -> None:
        self.ema.update(self.student)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.student.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine(opt, hp.warmup_steps, hp.max_steps)}

    # ------------------------------------------------------------------ sampling
    def guidance(self) -> float:
        g = self.hparams.guidance
        return float(self.teacher_guidance) if g is None else float(g)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        tau = float(self.knob(knob_value))
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be in [0, 1], got {tau}")
        if tau == 1.0:
            return images.clone()
        net, w, k = self.ema.shadow, self.guidance(), int(self.hparams.jumps)
        z = jump(net, images.float(), 1.0, tau, self.domain_index(source), w, k)  # encode under the source label
        return jump(net, z, tau, 1.0, self.domain_index(target), w, k).clamp(-1.0, 1.0)  # decode under the target

    def nfe(self, knob_value=None) -> int:
        return 0 if float(self.knob(knob_value)) == 1.0 else 2 * int(self.hparams.jumps)
