"""Finished runs as inputs of other runs: the fit of a method as configured for a seed, task and budget (`find_run`:
what the downstream utility translates with, what a distilled student's teacher is) and its method at its selected
weights (`load_translator`)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmark.errors import RunError


def find_run(results_dir: Path, method: str, dataset: str, preset: str, seed: int, task: str,
             budget: float | None = None, purpose: str = "utility") -> Path:
    """The finished run folder of `method` (as configured: no `--set`, `--max-steps` or `--misregister`; at `budget`,
    None for the preset's budget: the headline fit) for `seed` whose tasks include `task`, with its selected weights.

    Raises:
        RunError: none, or several, naming what to do.
    """
    from benchmark.protocol.records import verify_done

    found = []
    for cfg_path in sorted(Path(results_dir).glob(f"runs/{method}/{dataset}-{preset}/seed{seed}-*/config.json")):
        spec = json.loads(cfg_path.read_text()).get("spec", {})
        if task in spec.get("tasks", ()) and not spec.get("overrides") and spec.get("max_steps") is None \
                and spec.get("budget") == budget and not spec.get("misregister"):  # on the dataset as generated
            folder = cfg_path.parent
            translator = (folder / "checkpoints" / "selected.ckpt").is_file() or is_external(folder)
            if verify_done(folder) is None and translator:
                found.append(folder)
    if not found:
        at = f" at budget {budget:g}" if budget is not None else ""
        raise RunError(f"{purpose}: no finished {method} run of seed {seed} on {dataset}/{preset} {task}{at} with "
                       f"weights under {Path(results_dir) / 'runs'}; run `python -m benchmark run --method {method} "
                       f"--task {task} --seeds {seed} --preset {preset}{f' --budget {budget:g}' if at else ''}` first")
    if len(found) > 1:
        raise RunError(f"{purpose}: {len(found)} finished {method} runs of seed {seed} on {task}: "
                       f"{', '.join(p.name for p in found)}; keep one")
    return found[0]


def is_external(folder: Path) -> bool:
    """Whether a run folder holds translations made outside the suite (`python -m benchmark score`)."""
    return bool(json.loads((Path(folder) / "config.json").read_text()).get("external"))


def load_translator(folder: Path):
    """The run's method at its selected weights (built from its config.json, as the runner builds it)."""
    from datasets import get_task, load_dataset
    from methods import get_method

    cfg = json.loads((folder / "config.json").read_text())
    spec = cfg["spec"]
    dataset = load_dataset(spec["dataset"], preset=spec["preset"], seed=spec["data_seed"],
                           config=spec["dataset_config"], data_root=spec["data_root"],
                           misregister=spec.get("misregister", 0.0))
    task = get_task(spec["tasks"][0], dataset.domains)
    method = get_method(spec["method"])(domains=dataset.domains, sources=task.sources, target=task.target,
                                        image_size=dataset.size, **cfg["method_config"])
    method.load_state_dict(torch.load(folder / "checkpoints" / "selected.ckpt", map_location="cpu",
                                      weights_only=True)["state_dict"])
    return method.eval(), cfg
