"""The runner: fit -> save the final weights -> translate the test split over the knob grid -> score -> records.

A `RunSpec` names one fit. Its folder `results/runs/<method>/<dataset>-<preset>/seed<k>-<hash>/` holds
`config.json` (resolved config, seed, split hash, git sha, package versions; written before training),
`checkpoints/last.ckpt` (the resume point during training), `checkpoints/final.ckpt` and `train.json` (the
weights every evaluation uses and how long they took to train, written before the first evaluation),
`records.jsonl` (rewritten atomically after every evaluation) and finally `done` (`benchmark.records`).

Guarantees:
* Every record of a run comes from the one set of final weights: an interrupted evaluation resumes from
  `final.ckpt` and never trains again; `rescore` translates from it too.
* `train_sec` is the sum of the training segments (`train.json`); a record of a run whose training was
  interrupted and resumed says so (`resumed_from_steps`).
* A run folder is held by one process at a time (`.lock` with pid and host; a lock whose process is gone
  is stale and taken over). A second invocation stops with a one-line error naming the holder.
* `done` vouches for the records on disk (count and checksum); a run whose `done` does not match its
  records is re-evaluated from its final weights, and a finished run without them is reported.

Tasks whose training domains are the same for a method share one fit (MedShift translates `sim2real` and
`dose` with one model). A run that differs from a finished one only in its tasks, in `--curve` or in the
method's `sampling_settings` starts from that run's final weights (`fit_key`); config.json names the donor.

Realism is scored against the target domain's images of the `ref` split (other subjects, never trained on),
fidelity against each test scene's aligned counterpart (`datasets.splits`).
"""
from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import socket
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .config import RunSpec, find_donor, fit_key, resolve_config, setting
from .records import (PROTOCOL_VERSION, RECORD_KEYS, RunError, atomic_write, clean_stale_temporaries, pid_alive,
                      read_records, seal, verify_done, write_done, write_records)
from .rescore import merge_rescored, stale_metrics

# Lightning messages that are expected for analytic methods or on CPU-only machines.
QUIET_WARNINGS = (".*configure_optimizers.*returned .None.*", ".*training_step.*returned .None.*",
                  ".*LeafSpec.*", ".*does not have many workers.*", ".*litlogger.*", ".*module\\(s\\) in eval mode.*",
                  ".*dirpath has changed.*")


@dataclass
class RunContext:
    """What one invocation shares across runs: the scorer, loaded datasets, progress display."""

    results_dir: Path
    scorer: object
    datasets: dict = field(default_factory=dict)
    progress: object | None = None
    quiet: bool = False
    rescore: bool = False


def load_data(spec: RunSpec, ctx: RunContext, progress=None):
    """The spec's dataset, loaded (and for skull-sim generated) once per invocation.

    Args:
        progress: Optional callable(done, total) for generation progress.
    """
    from datasets import load_dataset

    key = (spec.dataset, spec.preset, spec.data_seed, spec.dataset_config, spec.data_root)
    if key not in ctx.datasets:
        ctx.datasets[key] = load_dataset(spec.dataset, preset=spec.preset, seed=spec.data_seed,
                                         config=spec.dataset_config, data_root=spec.data_root, progress=progress)
    return ctx.datasets[key]


# --------------------------------------------------------------------------------------------- provenance
def git_sha() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "lightning", "diffusers", "torchmetrics", "torch-fidelity", "lpips", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


# --------------------------------------------------------------------------------------------- lock
class RunLock:
    """Exclusive hold of a run folder: `.lock` created with O_EXCL holding {pid, host, since}.

    A lock left by a process that no longer exists on this host is stale and is taken over; a lock held by a
    live process (or one on another host, which cannot be checked) stops the invocation with its owner named.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    owner = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    owner = {}
                if owner.get("host") == socket.gethostname() and not pid_alive(int(owner.get("pid", 0) or 0)):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
                raise RunError(f"{self.path.parent} is being run by pid {owner.get('pid')} on {owner.get('host')} "
                               f"(since {since}); wait for it, or delete {self.path} if that process is gone")
            with os.fdopen(fd, "w") as f:
                f.write(me)
            return self
        raise RunError(f"could not take the lock {self.path}; delete it if no process is running this run")

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- fitting
def _build(spec: RunSpec, dataset, config: dict):
    from datasets import get_task
    from methods import get_method

    task = get_task(spec.tasks[0], dataset.domains)
    return get_method(spec.method)(domains=dataset.domains, sources=task.sources, target=task.target,
                                   image_size=dataset.size, **config)


def _fit(spec: RunSpec, method, dataset, folder: Path, ctx: RunContext) -> dict:
    """Train (resuming from `checkpoints/last.ckpt` if present); returns this segment {start_step, end_step, sec}."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from datasets import get_task
    from datasets.datamodule import TranslationDataModule

    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import: Lightning sets INFO when imported
        logging.getLogger(name).setLevel(logging.WARNING)  # device/tip banners; warnings still reach the user
    task = get_task(spec.tasks[0], dataset.domains)
    domains = type(method).training_domains(dataset.domains, task.sources, task.target)
    dm = TranslationDataModule(dataset, domains, batch_size=int(method.hparams.get("batch_size", 16)), seed=spec.seed,
                               pairing=type(method).pairing, target=task.target, cache_dir=ctx.results_dir / "cache",
                               drop_last=type(method).drop_last)
    settings = method.trainer_settings(spec.max_steps)
    steps = settings.get("max_steps", -1)
    ckpt_dir = folder / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=max(25, steps // 10) if steps and steps > 0 else None)]
    interactive = sys.stdout.isatty() and not ctx.quiet
    if interactive:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    trainer = L.Trainer(accelerator=spec.accelerator, devices=1, precision=spec.precision, callbacks=callbacks,
                        logger=CSVLogger(folder, name="logs"), enable_progress_bar=interactive,
                        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
                        log_every_n_steps=10, **settings)
    last = ckpt_dir / "last.ckpt"
    start_step = 0
    if last.is_file():
        try:  # validate before Lightning touches it: a clear error, and the file is left as it is
            start_step = int(torch.load(last, map_location="cpu", weights_only=True).get("global_step", 0))
        except Exception as exc:  # torch raises pickle, zip and runtime errors here
            raise RunError(f"checkpoint {last} cannot be loaded ({type(exc).__name__}: {str(exc)[:100]}); delete it "
                           "to train this run from scratch") from exc
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(method, datamodule=dm, ckpt_path=last if last.is_file() else None, weights_only=True)
    sec = time.perf_counter() - t0
    final_tmp = ckpt_dir / f".final.ckpt.tmp-{os.getpid()}"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    try:
        trainer.save_checkpoint(final_tmp, weights_only=True)
        final_tmp.replace(ckpt_dir / "final.ckpt")
    finally:
        final_tmp.unlink(missing_ok=True)
    return dict(start_step=start_step, end_step=int(trainer.global_step), sec=sec)


def final_weights(spec: RunSpec, method, dataset, folder: Path, ctx: RunContext, donor: Path | None) -> dict:
    """Bring `method` to the run's final weights and return `train.json` ({train_sec, segments, fit_from}).

    Order of preference: the run's own `final.ckpt` (never trained again); a donor's `final.ckpt` (copied);
    otherwise train (resuming `last.ckpt`), write `final.ckpt`, then `train.json`.
    """
    final, info_path = folder / "checkpoints" / "final.ckpt", folder / "train.json"
    if not final.is_file() and donor is not None:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".final.ckpt.tmp-{os.getpid()}")
        shutil.copyfile(donor / "checkpoints" / "final.ckpt", tmp)
        tmp.replace(final)
        info = json.loads((donor / "train.json").read_text())
        atomic_write(info_path, json.dumps(dict(info, fit_from=donor.name)))
    if final.is_file() and info_path.is_file():
        state = torch.load(final, map_location="cpu", weights_only=True)["state_dict"]
        method.load_state_dict(state)
        return json.loads(info_path.read_text())
    segments = json.loads(info_path.read_text())["segments"] if info_path.is_file() else []
    segments.append(_fit(spec, method, dataset, folder, ctx))
    info = dict(train_sec=sum(s["sec"] for s in segments), segments=segments, fit_from=None)
    atomic_write(info_path, json.dumps(info))
    return info


# --------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _translate(method, x: torch.Tensor, source: str, target: str, knob,
               batch_size: int = 64) -> tuple[torch.Tensor, float]:
    device = method.device
    t0 = time.perf_counter()
    out = [method.translate(x[i:i + batch_size].to(device), source, target, knob).float().cpu()
           for i in range(0, len(x), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), (time.perf_counter() - t0) / max(len(x), 1)


def evaluations(spec: RunSpec, method, dataset) -> list[tuple[str, str, str, object]]:
    """(task, source, target, knob value) points to evaluate."""
    from datasets import get_task

    grid = tuple(method.knob_grid)
    if spec.curve and method.knob_curve:
        grid = tuple(dict.fromkeys(grid + tuple(method.knob_curve)))
    points = []
    for t in spec.tasks:
        task = get_task(t, dataset.domains)
        points += [(t, src, task.target, k) for src in task.sources for k in grid]
    return points


def _reference_images(dataset, target: str) -> torch.Tensor:
    try:
        return dataset.images(target, "ref")[0]
    except ValueError as exc:
        raise RunError(f"{dataset.name}: no {target} images in the 'ref' split, which realism is scored against; "
                       "the dataset needs more subjects (datasets/splits.py)") from exc


class Evaluator:
    """Translates and scores points of one run, loading each source set and real reference once."""

    def __init__(self, spec: RunSpec, method, dataset, ctx: RunContext, train: dict):
        self.spec, self.method, self.dataset, self.ctx, self.train = spec, method, dataset, ctx, train
        self.inputs, self.references = {}, {}
        self.sha, self.setting = git_sha(), setting(spec)

    def _inputs(self, source: str, target: str):
        if (source, target) not in self.inputs:
            x_src, rows = self.dataset.images(source, "test")
            self.inputs[(source, target)] = (x_src, *self.dataset.counterparts(rows, target), list(rows["subject"]))
        return self.inputs[(source, target)]

    def _reference(self, target: str):
        if target not in self.references:
            d = self.dataset
            self.references[target] = self.ctx.scorer.reference(_reference_images(d, target), dict(
                dataset=d.name, config=d.config, split=d.split_hash, part="ref", domain=target))
        return self.references[target]

    def record(self, task_name: str, source: str, target: str, knob) -> dict:
        x_src, x_gt, gt_reason, subjects = self._inputs(source, target)
        x_hat, sec = _translate(self.method, x_src, source, target, knob)
        scores = self.ctx.scorer.score(x_hat, x_src, x_gt, self._reference(target), gt_reason, subjects=subjects)
        spec, method = self.spec, self.method
        rec = {k: None for k in RECORD_KEYS}
        rec.update({k: v for k, v in scores.items() if k != "unavailable"})
        resumed = [s["start_step"] for s in self.train.get("segments", []) if s["start_step"] > 0]
        rec.update(method=spec.method, setting=self.setting, dataset=spec.dataset, preset=spec.preset,
                   task=task_name, seed=spec.seed, source=source, target=target, knob=method.knob_name,
                   knob_value=knob, nfe=method.nfe(knob), sec_per_image=sec, train_sec=self.train["train_sec"],
                   n_params=method.n_params, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   unavailable=scores["unavailable"], run_id=spec.run_id, split_hash=self.dataset.split_hash,
                   git_sha=self.sha, protocol=PROTOCOL_VERSION, fit_from=self.train.get("fit_from"),
                   resumed_from_steps=resumed)
        return seal(rec)


def run_one(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """Fit, translate, score and record one spec; returns its records (existing ones if already done).

    With `ctx.rescore`, a finished run whose records lack metrics the scorer can now compute is translated
    again from its final weights and those metrics are added (`benchmark.rescore`).
    """
    folder = spec.folder(ctx.results_dir)
    with RunLock(folder):
        clean_stale_temporaries(folder)
        clean_stale_temporaries(folder / "checkpoints")
        return _run_locked(spec, ctx, folder)


def _run_locked(spec: RunSpec, ctx: RunContext, folder: Path) -> list[dict]:
    records_path = folder / "records.jsonl"
    records = read_records(records_path)
    problem = verify_done(folder)
    if (folder / "done").is_file() and problem:
        warnings.warn(f"{folder}: {problem}; evaluating its missing records again from its final weights",
                      stacklevel=2)
        (folder / "done").unlink()
    finished = problem is None
    stale = {(r["task"], r["source"], r["knob_value"]): stale_metrics(r, ctx.scorer.unavailable)
             for r in records} if ctx.rescore else {}
    stale = {k: v for k, v in stale.items() if v}
    dataset = load_data(spec, ctx)
    config = resolve_config(spec)
    final = folder / "checkpoints" / "final.ckpt"
    torch.manual_seed(spec.seed)
    import lightning as L

    L.seed_everything(spec.seed, verbose=False)
    method = _build(spec, dataset, config)
    points = evaluations(spec, method, dataset)
    have = {(r["task"], r["source"], r["knob_value"]) for r in records} - set(stale)
    todo = [p for p in points if (p[0], p[1], p[3]) not in have or (p[0], p[1], p[3]) in stale]
    if finished and not todo:
        return records
    if records and not final.is_file():
        raise RunError(f"cannot evaluate {folder} again: checkpoints/final.ckpt is missing, and training again would "
                       "not reproduce the recorded values; delete the run folder and run it again instead")
    key = fit_key(asdict(spec), config, dataset.domains)
    donor = None if final.is_file() or (folder / "train.json").is_file() else find_donor(folder, key, dataset.domains)
    if not (folder / "config.json").is_file() or not finished:  # a re-scored run keeps the config.json of its fit
        atomic_write(folder / "config.json", json.dumps(dict(
            spec=asdict(spec), run_id=spec.run_id, method_config=config, seed=spec.seed, split_hash=dataset.split_hash,
            dataset_config=dataset.config, git_sha=git_sha(), packages=package_versions(), n_params=method.n_params,
            knob=method.knob_name, knob_grid=list(method.knob_grid), fit_key=key, protocol=PROTOCOL_VERSION,
            fit_from=donor.name if donor else None), indent=2, default=str))
    train = final_weights(spec, method, dataset, folder, ctx, donor)
    method.eval()
    evaluator = Evaluator(spec, method, dataset, ctx, train)
    bar = ctx.progress.add_task(f"{spec.method} seed {spec.seed}: evaluate", total=len(todo)) if ctx.progress else None
    for task_name, source, target, knob in todo:
        rec = evaluator.record(task_name, source, target, knob)
        point = (task_name, source, knob)
        if point in stale:
            i = next(j for j, r in enumerate(records) if (r["task"], r["source"], r["knob_value"]) == point)
            records[i] = rec = merge_rescored(records[i], rec, stale[point], evaluator.sha)
            if rec["rescored"]["max_abs_diff"] > 1e-6:
                warnings.warn(f"re-scoring {folder.name} {point}: translating again changed recorded metrics by up "
                              f"to {rec['rescored']['max_abs_diff']:.3g}; the recorded values are kept", stacklevel=1)
        else:
            records.append(rec)
        write_records(records_path, records)
        if bar is not None:
            ctx.progress.advance(bar)
    write_done(folder, records)
    return records
