"""`TranslationMethod`: the one interface between the benchmark and every method.

The runner reads only what this class declares, calls `prepare_fit`, Lightning's fit hooks and `translate`,
and never asks which method it holds. A subclass is registered in `methods.METHODS`, or declared by another package
under the `xraybench.methods` entry-point group (`methods.load_plugins`).
Methods never compute benchmark metrics and never reach into the
Trainer's datamodule. `methods/template.py` is a complete minimal method to copy.

The whole contract of a subclass:
* constructor: typed keyword arguments with defaults (its config; `--set` values are checked against
  these types), first the four the runner fills in from the data - `domains` (the dataset's domain
  names; domain index = position), `sources`, `target` (the task) and `image_size` - then
  `save_hyperparameters()`. A learned method has `max_steps` (iterations of its own loop; the runner
  sets it from the preset's FLOP budget) and `batch_size` settings;
* class attributes: `knob_name` / `knob_grid` (table values; the first is the default knob value) /
  `knob_curve` (dense values for curves), `knob_name = None` for a single point; `pairing` (batch
  layout; "paired" makes a paired upper bound); `sampling_settings` (config keys that only change
  translation: a run differing from a finished one only in these re-uses its fit); `sampling_grid` (candidate
  values of some of them, chosen on validation after the checkpoint like the knob);
  `optimizer_steps_per_iteration` (for Lightning's step count); `manual_optimization`; `drop_last`;
  `reference_row` (shown unranked); `style` (colour, marker, label in figures); `knob_bounds` (the knob's sensible
  range, within which validation extends the grid when its choice is at an edge); the table group follows from
  `pairing` and `reference_row` (`group`); the checkpoint criterion is one for every method
  (`selection_criterion`);
  `smoke_settings` (the smallest config that exercises its code paths, used by the contract test); `allowed`
  (ranges and choices of settings, checked with the config before any work);
* `training_domains(domains, sources, target, config)` (classmethod): what it trains on (`config`: the resolved
  settings, for a method where one of them decides);
* `train_batch_size` and `trainer_settings(max_steps)`: its batch size and training length (defaults
  read the `batch_size` / `max_steps` settings and fail loudly without them);
* `prepare_fit(data: FitData)`: anything it must derive from the training data before fitting
  (MedShift's suite autoencoder); the runner calls it before every fit;
* Lightning's `training_step` / `configure_optimizers`; per-step work such as an EMA update goes in
  `after_optimizer_step` (Lightning's `on_train_batch_end` runs per micro-batch under gradient accumulation);
* `translate(images, source, target, knob_value)` and `nfe(knob_value)` (network evaluations per image);
  `knob(knob_value)` maps None to the default knob value.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import lightning as L
import torch


@dataclass(frozen=True)
class FitData:
    """What a method may need from the data before fitting, handed over by the runner.

    Attributes:
        train_images: Returns every training image of the method's training domains, (N, 1, H, W) in [-1, 1].
        cache_dir: Where to cache what the method derives from the data (the runner's `<results>/cache`).
        identity: What identifies that data (dataset, config, split hash, domains): a cache key.
        teacher: For a method that declares a `teacher`: that method's finished headline fit of the same seed and
            data, at its selected weights (None otherwise).
        teacher_info: The teacher's run: {"run_id", "folder", "train_flops", "sampling" (its validation-chosen
            sampling settings on the run's task)}; a student may add "sampling_flops" (what translating with the
            teacher cost it), which the records carry as `teacher_sampling_flops`.
        train_domains: Returns the domain of each image `train_images` returns, in the same order.
        progress: Where a method reports a long preparation, as `progress(done, total)` (the runner prints a progress
            line or draws a bar; None: report nothing).
    """

    train_images: Callable[[], torch.Tensor]
    cache_dir: Path
    identity: dict
    teacher: Any = None
    teacher_info: dict | None = None
    train_domains: Callable[[], list[str]] | None = None
    progress: Callable[[int, int], None] | None = None


def starts_optimizer_step(trainer, batch_idx: int) -> bool:
    """Whether loader batch `batch_idx` is the first micro-batch of an optimizer step (where Lightning zeroes the
    gradients, `batch_idx % accumulate_grad_batches == 0`); always true without gradient accumulation."""
    return trainer is None or batch_idx % trainer.accumulate_grad_batches == 0


def ends_optimizer_step(trainer, batch_idx: int) -> bool:
    """Whether loader batch `batch_idx` is the last micro-batch of an optimizer step (the optimizer steps after its
    backward pass); always true without gradient accumulation."""
    return trainer is None or (batch_idx + 1) % trainer.accumulate_grad_batches == 0


class TranslationMethod(L.LightningModule):
    """A trainable translator between X-ray domains (base class; see module docstring)."""

    knob_name: ClassVar[str | None] = None
    knob_grid: ClassVar[tuple] = (None,)
    #: (lowest, highest) knob value that makes sense; validation extends the table grid within it when its choice
    #: lies at the grid's edge (`benchmark.protocol.validation.beyond_edge`). None: the grid is never extended.
    knob_bounds: ClassVar[tuple | None] = None
    knob_curve: ClassVar[tuple] = ()
    #: Batch layout the method trains on (see datasets.datamodule): "mixed" (images with domain labels),
    #: "unpaired" (independent source and target batches) or "paired" (each source image with the aligned target
    #: image of its scene: a paired upper bound, refused on data without exact pairs, listed in its own table group).
    pairing: ClassVar[str] = "mixed"
    #: Config keys used only by `translate` (a change reuses the trained weights).
    sampling_settings: ClassVar[tuple[str, ...]] = ()
    #: Candidate values of sampling settings that validation chooses among (`benchmark.protocol.validation`): every
    #: combination, the config's own values first (the default when nothing is chosen); keys are `sampling_settings`.
    sampling_grid: ClassVar[dict[str, tuple]] = {}
    #: `optimizer.step()` calls per `training_step`. Lightning counts every optimizer step of manual
    #: optimisation in `global_step` (and so in `max_steps`); a budget counts iterations of the method's loop.
    optimizer_steps_per_iteration: ClassVar[int] = 1
    #: Whether `training_step` steps its optimisers itself (Lightning's manual optimisation, e.g. a GAN's
    #: alternating updates). Lightning accumulates gradients only for automatic optimisation.
    manual_optimization: ClassVar[bool] = False
    #: A reference row of the tables (no translation, a classical baseline): shown, never ranked.
    reference_row: ClassVar[bool] = False
    #: Whether training batches drop the incomplete last batch (False for one-pass statistics: every image counts).
    drop_last: ClassVar[bool] = True
    #: Whether `translate(x, d, d, knob)` is a round trip worth reporting: an encoder-decoder between domain labels
    #: (MedShift: encode to the knob's time under label d, decode under the same label), whose reconstruction error is
    #: what the encoder's inversion costs apart from translation. The test records at the knob value validation chose
    #: then carry `roundtrip_ssim` and `roundtrip_psnr` on the target's real test images (`Evaluator.round_trip`).
    round_trip: ClassVar[bool] = False
    #: The registered method whose finished headline fit this one distils (a student), or None. The runner finds that
    #: fit (same dataset, preset, seed and task; run it first) and hands it to `prepare_fit` (`FitData.teacher`); the
    #: records name it (`teacher_run`, `teacher_train_flops`).
    teacher: ClassVar[str | None] = None
    #: Set True on the copy whose training step the budget measures (`budget.flops_per_iteration`): a method whose
    #: step torch's FLOP counter cannot run (forward-mode AD) runs a stand-in of the same cost then.
    counting_flops: bool = False
    #: How figures draw it: {"color", "marker", "label"} (matplotlib names).
    style: ClassVar[dict] = {"marker": "o"}
    #: The smallest settings that still exercise every code path (the contract test fits with these).
    smoke_settings: ClassVar[dict] = {}
    #: Allowed values of settings beyond their type, checked with the config before any work: an interval
    #: "[lo, hi)" ("inf" allowed; for a tuple setting, each element) or a tuple of choices. These common ones
    #: apply to whichever of the settings a method has; a method extends them (`{**TranslationMethod.allowed, ...}`).
    allowed: ClassVar[dict] = {
        "lr": "(0, inf)", "max_steps": "[1, inf)", "batch_size": "[1, inf)", "warmup_steps": "[0, inf)",
        "weight_decay": "[0, inf)", "ema_decay": "[0, 1)", "base_channels": "[1, inf)", "channel_mults": "[1, inf)",
        "layers_per_block": "[1, inf)", "num_inference_steps": "[1, inf)",
    }

    def __init__(self, domains: tuple[str, ...], sources: tuple[str, ...], target: str, image_size: int):
        super().__init__()
        self.domains, self.sources, self.target, self.image_size = tuple(domains), tuple(sources), target, image_size
        self.automatic_optimization = not self.manual_optimization

    @classmethod
    def table_info(cls) -> dict:
        """What tables and figures read of the method (the runner writes it into config.json as `method_info`)."""
        return dict(knob=cls.knob_name, knob_grid=list(cls.knob_grid), reference_row=bool(cls.reference_row),
                    style=dict(cls.style), group=cls.group(), teacher=cls.teacher)

    @classmethod
    def selection_criterion(cls) -> str:
        """What the validation split selects the checkpoint by (`benchmark.protocol.validation`): "realism" for every
        learned method, paired or not (protocol 3: one rule, so that no comparison is made by the rule; the
        tables' `selection.md` shows the fidelity rule beside it)."""
        return "realism"

    @classmethod
    def group(cls) -> str:
        """The table group: "reference" (shown, unranked), "paired" (upper bounds, ranked among themselves),
        "distilled" (a student of a finished fit, `teacher`: its compute is the teacher's budget and its own, so it is
        ranked among the students and compared with its teacher in `distillation.md`) or "unpaired" (the methods the
        benchmark ranks)."""
        if cls.reference_row:
            return "reference"
        return "distilled" if cls.teacher else "paired" if cls.pairing == "paired" else "unpaired"

    # ------------------------------------------------------------------ declared by every method
    @classmethod
    def training_domains(cls, domains: tuple[str, ...], sources: tuple[str, ...], target: str,
                         config: dict | None = None) -> tuple[str, ...]:
        """Domains whose training images the method sees (default: the task's); `config`, the resolved config, for a
        method whose settings decide it."""
        return tuple(sources) + (target,)

    @property
    def train_batch_size(self) -> int:
        """Training batch size: the `batch_size` setting (a method without one overrides this)."""
        if "batch_size" not in self.hparams:
            raise TypeError(f"{type(self).__name__} has no batch_size setting; add one or override train_batch_size")
        return int(self.hparams["batch_size"])

    def trainer_settings(self, max_steps: int | None = None) -> dict:
        """Keyword arguments for `lightning.Trainer` that bound this method's training.

        Args:
            max_steps: Training iterations (`training_step` calls); None: the method's `max_steps` setting.
        """
        if max_steps is None and "max_steps" not in self.hparams:
            raise TypeError(f"{type(self).__name__} has no max_steps setting; add one or override trainer_settings")
        steps = max_steps if max_steps is not None else int(self.hparams["max_steps"])
        return {"max_steps": steps * self.optimizer_steps_per_iteration}

    def prepare_fit(self, data: FitData) -> None:
        """Derive what the method needs from the training data before fitting (default: nothing)."""

    def handed_teacher(self, data: FitData):
        """A student's teacher from `data` (`teacher` declared): the fit the runner handed over, trained on the
        student's domains; a one-line error naming the command that makes one when there is none."""
        teacher = data.teacher
        if teacher is None:
            raise ValueError(f"{type(self).__name__} distils a finished {self.teacher} fit: none was handed over "
                             f"(the runner finds it; run `python -m benchmark run --method {self.teacher}` first)")
        if tuple(teacher.domains) != tuple(self.domains):
            raise ValueError(f"the teacher was trained on {teacher.domains}, the student on {self.domains}")
        return teacher

    def translate(self, images: torch.Tensor, source: str, target: str, knob_value=None) -> torch.Tensor:
        """Translate images of domain `source` to domain `target`.

        Args:
            images: (B, 1, H, W) float32 in [-1, 1].
            source: Source domain name.
            target: Target domain name.
            knob_value: One value of the method's knob (None for methods without one).

        Returns:
            (B, 1, H, W) float32 in [-1, 1].
        """
        raise NotImplementedError

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor | None:
        """A latent method's first stage alone, decode(encode(images)): the ceiling of its translations, recorded
        beside the round trip (`Evaluator.round_trip`). None for a method without one."""
        return None

    def apply_sampling(self) -> None:
        """Called after the runner changed sampling settings in `hparams` (`sampling_grid`): a method that built
        something from them at construction rebuilds it here (its translate otherwise reads `hparams` each call)."""

    def nfe(self, knob_value=None) -> int:
        """Network evaluations per translated image at `knob_value` (0 for analytic methods)."""
        return 0

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if ends_optimizer_step(self._trainer, batch_idx):
            self.after_optimizer_step()

    def after_optimizer_step(self) -> None:
        """Once per iteration, after its optimizer step(s) (e.g. an EMA update): with gradient accumulation an
        iteration spans several loader batches, and Lightning's `on_train_batch_end` runs after each of them; a
        method that optimises manually steps inside `training_step` and gets one call per iteration."""

    # ------------------------------------------------------------------ shared helpers
    @property
    def n_params(self) -> int:
        """Trained parameters (EMA copies and frozen modules excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise KeyError(f"{type(self).__name__}: unknown domain {domain!r}; trained with {', '.join(self.domains)}")
        return self.domains.index(domain)

    def labels(self, domain: str, n: int) -> torch.Tensor:
        return torch.full((n,), self.domain_index(domain), dtype=torch.long, device=self.device)

    def knob(self, knob_value=None):
        """`knob_value`, or the default knob value (the first of `knob_grid`) when None."""
        return self.knob_grid[0] if knob_value is None else knob_value

    def check_direction(self, source: str, target: str) -> None:
        """Raise unless `source -> target` is the direction the method was trained for (its task's sources to its
        target): for methods that learn one mapping (the paired upper bounds)."""
        if source not in self.sources or target != self.target:
            raise KeyError(f"{type(self).__name__} was trained for {'+'.join(self.sources)} -> {self.target}; "
                           f"cannot translate {source} -> {target}")

    def check_knob(self, knob_value) -> None:
        if self.knob_name is None and knob_value is not None:
            raise ValueError(f"{type(self).__name__} has no knob; got {knob_value!r}")
