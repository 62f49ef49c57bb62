"""Equal training compute: one FLOP budget per preset, turned into each method's iterations.

A learned method (one with a `max_steps` setting) trains for floor(budget / F) iterations of its own loop, F
being the FLOPs of one iteration measured with `torch.utils.flop_counter.FlopCounterMode` around a real first
`training_step` (forward and backward of every network it trains, generator and discriminator updates alike; the
optimizer's element-wise updates and the EMA count no FLOPs there, as in the usual convention). Model size and
batch size stay each method's own choice; records carry `train_flops`, `train_steps`, `images_seen` and
`train_sec`.

A learned method whose iteration performs no matrix or convolution FLOPs (a few scalar parameters, like the
template's affine intensity map) has negligible compute next to any budget: it trains its own `max_steps`,
and its plan says so (`flops_per_iteration: 0`).
"""
from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import yaml

from benchmark.protocol.config import CONFIG_DIR, config_scope

BUDGETS_PATH = CONFIG_DIR / "budgets.yaml"


def preset_budget(dataset: str, preset: str, path: Path = BUDGETS_PATH) -> float | None:
    """The FLOP budget declared for `dataset/preset` (None: none declared)."""
    budgets = yaml.safe_load(Path(path).read_text()) or {}
    dataset = config_scope(dataset)
    value = budgets.get(f"{dataset}/{preset}", budgets.get(dataset))
    return None if value is None else float(value)


def budget_values(items: list[str] | None, dataset: str, preset: str,
                  budget: float | None = None) -> list[float | None]:
    """`--budgets` (multiples of the preset's budget, "3x", or FLOPs, "6.3e13") as the `budget` of each fit: None for
    the preset's own budget (so the 1x fit is the headline fit, one run folder for both); without `--budgets`, the
    one `--budget` given (or None).

    Raises:
        RunError: a value that is neither, a multiple without a declared preset budget, a budget not above 0.
    """
    from benchmark.errors import RunError

    if not items:
        return [budget]
    default = preset_budget(dataset, preset)
    out: list[float | None] = []
    for item in items:
        text = str(item).strip().lower()
        try:
            value = float(text[:-1]) * default if text.endswith("x") and default else float(text)
        except ValueError:
            value = float("nan")
        if text.endswith("x") and not default:
            raise RunError(f"--budgets {item}: {dataset}/{preset} declares no budget to multiply "
                           f"({BUDGETS_PATH.name}); give FLOPs, e.g. 6.3e13")
        if not (value > 0 and math.isfinite(value)):
            raise RunError(f"--budgets {item}: a multiple of the preset's budget (3x) or FLOPs (6.3e13), above 0")
        value = None if default is not None and math.isclose(value, default, rel_tol=1e-9) else value
        if value not in out:
            out.append(value)
    return out


def flops_per_iteration(method, datamodule) -> int:
    """FLOPs of one training iteration of `method` (a fresh copy is trained for one iteration; `method` is untouched).

    Args:
        method: A `TranslationMethod` as it will be trained.
        datamodule: The datamodule it will be trained on.
    """
    import copy

    import lightning as L
    from lightning.pytorch.callbacks import Callback
    from torch.utils.flop_counter import FlopCounterMode

    class Meter(Callback):
        flops = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.mode = FlopCounterMode(display=False)
            self.mode.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.mode.__exit__(None, None, None)
            self.flops = self.mode.get_total_flops()

    probe = copy.deepcopy(method)
    probe.counting_flops = True  # a step torch's FLOP counter cannot run (forward-mode AD) runs its stand-in
    meter = Meter()
    steps = type(method).optimizer_steps_per_iteration
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[meter])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(probe, datamodule=datamodule)
    return int(meter.flops)


def iterations_for(budget: float, flops: int) -> int:
    """Iterations a budget buys (at least 1)."""
    return max(1, int(budget // flops))
