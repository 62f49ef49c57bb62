"""What a run checks before it trains (data large enough for every metric, pairs for a paired method, every split
it reads populated, a sampler that evaluates its network, the same data as the folder's earlier stages), the opt-in
speed-ups (`--speedup`), and the run prepared from them (`prepared_run`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

import benchmark.protocol.validation as V
from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, resolve_config
from benchmark.run.context import PreparedRun, RunContext, load_data
from benchmark.run.evaluate import test_points
from benchmark.run.fit import budget_plan, build


def check_data(dataset, spec: RunSpec) -> None:
    """What the data must satisfy for every metric and for the spec's method, checked before any training (a clear
    error, not one after): images large enough for SSIM; pixel-exact pairs for a paired method."""
    from benchmark.scoring.metrics import MIN_IMAGE_SIZE
    from datasets.datamodule import check_pairs
    from methods import get_method

    if get_method(spec.method).pairing == "paired":
        try:
            check_pairs(dataset)
        except ValueError as exc:
            raise RunError(f"{spec.method} is a paired method: {exc}") from None

    if dataset.size < MIN_IMAGE_SIZE:
        raise RunError(f"{dataset.name} ({dataset.root}): images are served at {dataset.size}x{dataset.size} px; the "
                       f"metrics need at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} (SSIM's window): set 'size: 64' or "
                       "larger in the dataset config")
    check_split_sizes(dataset, spec)


def check_split_sizes(dataset, spec: RunSpec) -> None:
    """Every split the run reads holds images of the domains it reads there, checked before any training (a dataset
    of too few subjects used to fail only when validation started): the training domains' train split, each
    source's val and test scenes, the target's ref split (realism's reference)."""
    from benchmark.protocol.config import resolve_config
    from datasets import get_task
    from methods import get_method

    cls, config = get_method(spec.method), resolve_config(spec)
    subjects = dataset.manifest.groupby("split")["subject"].nunique().to_dict()
    sizes = ", ".join(f"{s} {subjects.get(s, 0)}" for s in ("train", "val", "test", "ref"))
    for name in spec.tasks:
        task = get_task(name, dataset.domains)
        need = [(d, "train", dataset.rows(d, "train"))
                for d in cls.training_domains(dataset.domains, task.sources, task.target, config)]
        need += [(src, split, V.task_rows(dataset, src, task.sources, split)) for split in ("val", "test")
                 for src in task.sources]
        need += [(task.target, "ref", dataset.rows(task.target, "ref"))]
        for domain, split, rows in need:
            if rows.empty:
                raise RunError(f"{dataset.name} ({dataset.root}): no {domain} images in the {split!r} split, which "
                               f"task {name} reads (subjects per split: {sizes}); the dataset needs more subjects "
                               "(at least 5, datasets/splits.py) or a subject_regex that groups fewer images")


def check_sampling(spec: RunSpec, method, dataset) -> None:
    """A trained method whose sampling settings (`sampling_settings`) make it evaluate its network 0 times at a knob
    value it is scored at would record its input as its translation (e.g. SDEdit with one inference step at strength
    0.1): refused."""
    if "max_steps" not in method.hparams or not type(method).sampling_settings:
        return  # nothing trained (a reference row), or no sampler whose settings could reduce it to nothing
    for knob in dict.fromkeys(p[2] for p in test_points(spec, method, dataset)):
        if method.nfe(knob) < 1:
            settings = ", ".join(f"{k}={v}" for k, v in spec.overrides) or "its configured sampling settings"
            raise RunError(f"{spec.method} with {settings} evaluates its network 0 times at {method.knob_name}={knob} "
                           f"and would record its input as its translation; use more sampling steps (its sampling "
                           f"settings: {', '.join(type(method).sampling_settings) or 'none'})")


def speedups(method, names: tuple[str, ...]):
    """Apply opt-in speed-ups (`--speedup`) to a built method: `channels_last` (the networks' memory format; inputs
    are converted by the convolutions), `compile` (`nn.Module.compile` of each network in place: `torch.compile`, the
    state dict and checkpoints unchanged). `tf32` is a process setting (`tf32_matmuls`)."""
    if "channels_last" in names:
        method = method.to(memory_format=torch.channels_last)
    if "compile" in names:
        for net in _networks(method):
            net.compile(backend=COMPILE_BACKEND)
    return method


def _networks(module):
    """The networks a method calls: its children that define `forward`, looking inside containers without one
    (ModuleDict, ModuleList, the EMA copy)."""
    from torch import nn

    for child in module.children():
        if type(child).forward is nn.Module.forward:
            yield from _networks(child)
        else:
            yield child


#: torch.compile's backend for `--speedup compile` (tests use "eager": the same graph capture without code generation).
COMPILE_BACKEND = "inductor"


class tf32_matmuls:  # noqa: N801 - a context manager used like a function
    """TF32 matmuls and cuDNN convolutions on NVIDIA GPUs while a run with `--speedup tf32` trains and evaluates (the
    previous settings restored after; no effect on a CPU)."""

    def __init__(self, enabled: bool):
        self.enabled, self.before = enabled, None

    def __enter__(self):
        if self.enabled:
            self.before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        return self

    def __exit__(self, *exc):
        if self.before is not None:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.before


def prepared_run(spec: RunSpec, ctx: RunContext, folder: Path) -> PreparedRun:
    """The run's data (checked for the spec's method and against the folder's config.json), its resolved config and
    budget plan, and the method built from them."""
    dataset = load_data(spec, ctx)
    check_data(dataset, spec)
    check_same_data(folder, dataset)
    config, plan = resolve(spec, dataset, ctx, folder)
    method = build(spec, dataset, config)
    check_sampling(spec, method, dataset)
    return PreparedRun(spec, ctx, folder, dataset, config, plan, speedups(method, spec.speedups))


def check_same_data(folder: Path, dataset) -> None:
    """A run folder made from other files than today's (its config.json's fingerprint) is not continued."""
    if (folder / "config.json").is_file():
        cfg = json.loads((folder / "config.json").read_text())
        # names and sizes, then contents (a run from before `data_content` has none: not read then)
        for key, now in (("data_fingerprint", lambda: dataset.fingerprint),
                         ("data_content", lambda: dataset.content_fingerprint)):
            was = cfg.get(key)
            if was is not None and was != now():
                raise RunError(f"{folder} was run on other data (fingerprint {was[:12]}, now {now()[:12]}): files "
                               f"under {dataset.root} changed since; delete that run folder to run it on today's data")


def resolve(spec: RunSpec, dataset, ctx: RunContext, folder: Path) -> tuple[dict, dict]:
    """The method config with `max_steps` from the FLOP budget, and the budget plan."""
    config = resolve_config(spec)
    plan = budget_plan(spec, config, dataset, ctx.results_dir / "cache", folder, ctx.progress)
    return dict(config, **({"max_steps": plan["max_steps"]} if plan else {})), plan
