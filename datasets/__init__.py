"""Data for the benchmark: the procedural `skull-sim` set, folder loaders for real data, splits.

NOTE: this package is named `datasets`, like Hugging Face's. Run the suite from the repository root
(or with this project installed in its own venv, as `make setup` does): the repository root comes
first on `sys.path`, so `import datasets` resolves here even when HF `datasets` is installed too.
`tests/datasets/test_datasets_io.py::test_package_name_resolves_here` checks this.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from .base import TASKS, Task, XrayDataset, get_task
from .io import BadImageError

DEFAULT_DATASET, DEFAULT_PRESET, DEFAULT_TASK = "skull-sim", "tiny", "sim2real"


def default_data_root() -> Path:
    """`$XRAYBENCH_DATA`, else `./data` (git-ignored)."""
    return Path(os.environ.get("XRAYBENCH_DATA", "data"))


def _load_skull_sim(preset: str = DEFAULT_PRESET, data_root: str | Path | None = None, seed: int = 0,
                    jitter: bool = False, progress: Callable | None = None, version: str | None = None,
                    misregister: float = 0.0, **_) -> XrayDataset:
    import json

    import pandas as pd

    from .skull_sim import DOMAINS, GENERATOR_VERSION, dataset_folder, generate, get_preset

    get_preset(preset)
    version = version or GENERATOR_VERSION
    name = "skull-sim" if version == GENERATOR_VERSION else f"skull-sim-v{version}"
    root = dataset_folder(data_root or default_data_root(), preset, seed, jitter=jitter, version=version,
                          misregister=misregister)
    generate(root, preset=preset, seed=seed, jitter=jitter, progress=progress, version=version, misregister=misregister)
    meta = json.loads((root / "dataset.json").read_text())
    manifest = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    return XrayDataset(name=name, root=root, manifest=manifest, domains=DOMAINS,
                       size=int(meta["preset_config"]["size"]), aligned=not jitter,
                       config=dict(dataset=name, preset=preset, seed=seed, jitter=jitter, root=str(root),
                                   generator_version=meta["generator_version"],
                                   **({"misregister_mm": misregister} if misregister else {})))


def _load_skull_sim_v2(**kwargs) -> XrayDataset:
    return _load_skull_sim(**dict(kwargs, version="2"))


def _load_folder(preset: str = "", data_root: str | Path | None = None, config: str | Path | None = None,
                 skip_bad: bool = False, misregister: float = 0.0, **_) -> XrayDataset:
    from .folder import scan_folder

    _no_misregister("folder", misregister)
    if config is None:
        raise ValueError("dataset 'folder' needs --dataset-config PATH (a YAML mapping domains to sub-folders)")
    return scan_folder(config, data_root, skip_bad=skip_bad)


def _load_xdigiskull(preset: str = "", data_root: str | Path | None = None, config: str | Path | None = None,
                     skip_bad: bool = False, misregister: float = 0.0, **_) -> XrayDataset:
    from .folder import scan_folder

    _no_misregister("x-digiskull", misregister)
    return scan_folder(config or "x-digiskull", data_root, skip_bad=skip_bad)


def _no_misregister(name: str, misregister: float) -> None:
    if misregister:
        raise ValueError(f"--misregister {misregister:g}: dataset {name!r} holds acquired images; misregistration is "
                         "a skull-sim generator option (use --dataset skull-sim)")


#: name -> loader(preset, data_root, ...) returning an XrayDataset.
DATASETS: dict[str, Callable[..., XrayDataset]] = {
    "skull-sim": _load_skull_sim,
    "skull-sim-v2": _load_skull_sim_v2,  # the physics-only gap: the real domains without their fine anatomy
    "x-digiskull": _load_xdigiskull,
    "folder": _load_folder,
}


def _skull_sim_domains(preset: str = DEFAULT_PRESET, jitter: bool = False, misregister: float = 0.0,
                       **_) -> tuple[str, ...]:
    from .skull_sim import DOMAINS, check_misregister, get_preset

    get_preset(preset)  # an unknown preset or a bad option fails here, before any work
    check_misregister(misregister, jitter)
    return DOMAINS


#: Datasets whose domains are known without loading them (the rest are loaded once to learn theirs).
DECLARED_DOMAINS: dict[str, Callable[..., tuple[str, ...]]] = {"skull-sim": _skull_sim_domains,
                                                              "skull-sim-v2": _skull_sim_domains}


def dataset_domains(name: str, **kwargs) -> tuple[tuple[str, ...], XrayDataset | None]:
    """The domains of a registered dataset, cheaply: (domains, the loaded dataset if it had to be loaded)."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if name in DECLARED_DOMAINS:
        return DECLARED_DOMAINS[name](**kwargs), None
    dataset = load_dataset(name, **kwargs)
    return dataset.domains, dataset


def _skull_sim_identity(**_) -> dict:
    from .skull_sim import GENERATOR_VERSION

    return {"generator_version": GENERATOR_VERSION}  # its cache folder is found by preset, seed and jitter


def _folder_identity(config: str | None = None, data_root: str | None = None, **_) -> dict:
    from .folder import config_path

    out = {"data_root": str(Path(data_root).resolve()) if data_root else None, "config_sha256": None}
    if config is not None:
        try:
            out["config_sha256"] = hashlib.sha256(config_path(config).read_bytes()).hexdigest()
        except (OSError, ValueError):  # loading the dataset reports it, naming the file
            pass
    return out


#: Datasets whose identity is not their folder config and data root.
DECLARED_IDENTITY: dict[str, Callable[..., dict]] = {"skull-sim": _skull_sim_identity,
                                                     "skull-sim-v2": lambda **_: {"generator_version": "2"}}


def dataset_identity(name: str, **kwargs) -> dict:
    """What a run's numbers depend on in its data that the dataset name, preset and seed do not say, known before
    loading (it enters the run id): skull-sim's generator version; for folder datasets the content of the config
    file and the resolved data root. What the files hold is checked after loading (`XrayDataset.fingerprint`)."""
    return DECLARED_IDENTITY.get(name, _folder_identity)(**kwargs)


def load_dataset(name: str = DEFAULT_DATASET, **kwargs) -> XrayDataset:
    """Load (and for skull-sim, generate on first use) a registered dataset."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](**kwargs)


__all__ = ["DATASETS", "DECLARED_DOMAINS", "DECLARED_IDENTITY", "TASKS", "dataset_domains", "dataset_identity", "Task",
           "XrayDataset", "BadImageError", "get_task", "load_dataset", "default_data_root"]
