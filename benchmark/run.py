"""The runner: fit -> save the final weights -> translate the test split over the knob grid -> score -> records.

A `RunSpec` names one fit. Its folder `results/runs/<method>/<dataset>-<preset>/seed<k>-<hash>/` holds
`config.json` (resolved config, seed, split hash, git sha, package versions; written before training),
`checkpoints/last.ckpt` (the resume point during training), `checkpoints/step<k>.ckpt` (the learning-curve
points), `checkpoints/final.ckpt` and `selected.ckpt` (the last weights and the ones chosen on validation, which
every test record uses) and `train.json` (budget, steps, time, the selected step), all written before the first
test evaluation; `records.jsonl` (rewritten atomically after every evaluation: validation records with `split =
"val"`, then the test records), `samples/` (the translated images of a few fixed test scenes, `benchmark.samples`)
and finally `done` (`benchmark.records`).

Protocol (`benchmark.validation`, `benchmark.budget`): every learned method trains for the preset's FLOP budget;
learning curves, the checkpoint and the headline knob value are chosen on the validation split; the test split
is read once, at the end, with the selected weights.

Guarantees:
* Every test record of a run comes from the one set of selected weights: an interrupted evaluation resumes from
  `selected.ckpt` and never trains again; `rescore` translates from it too.
* `train_sec` is the training time the final weights rest on: a clock saved in every checkpoint continues
  across resumes (`train.json` lists the segments); a record of a run whose training was interrupted and
  resumed says so (`resumed_from_steps`).
* A run folder is held by one process at a time (`.lock` with pid and host; a lock whose process is gone
  is stale and taken over). A second invocation stops with a one-line error naming the holder.
* `done` vouches for the records on disk (count and checksum); a run whose `done` does not match its
  records is re-evaluated from its final weights, and a finished run without them is reported.

Tasks whose training domains are the same for a method share one fit (MedShift translates `sim2real` and
`dose` with one model). A run that differs from a finished one only in its tasks, in `--curve` or in the
method's `sampling_settings` starts from that run's final weights (`fit_key`); config.json names the donor.

Realism is scored against the target domain's images of the `ref` split (other subjects, never trained on),
fidelity against each test scene's aligned counterpart (`datasets.splits`).

A fit over several devices (`RunSpec.devices`, Lightning's `ddp_fork`) runs only `trainer.fit` in forked processes:
the method's batch is split over the ranks (`datasets.datamodule.BatchStream`), the first rank alone scores the
learning curve and writes checkpoints, and this process alone writes everything else and scores the evaluation
afterwards, translated in one spawned process per device (`translate_sharded`). A fit over several nodes
(`--strategy ddp`) runs this whole module in every process a launcher started: the first rank as above, the others
only join the fit (`follow`). Gradient accumulation splits each rank's share into micro-batches; whatever happens per
optimizer step happens once per global batch (`methods.base.ends_optimizer_step`). Evaluation runs on the run's
accelerator (`evaluation_device`).
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from methods.base import ends_optimizer_step

from . import validation as V
from .budget import flops_per_iteration, iterations_for, preset_budget
from .config import RunSpec, find_donor, fit_key, resolve_config, setting
from .records import (
    PROTOCOL_VERSION,
    RECORD_KEYS,
    RunError,
    atomic_write,
    clean_stale_temporaries,
    pid_alive,
    read_records,
    seal,
    verify_done,
    write_done,
    write_records,
)
from .rescore import merge_rescored, stale_metrics
from .samples import sample_scenes, save_samples

# Lightning messages that are expected for analytic methods or on CPU-only machines.
QUIET_WARNINGS = (".*configure_optimizers.*returned .None.*", ".*training_step.*returned .None.*",
                  ".*LeafSpec.*", ".*does not have many workers.*", ".*litlogger.*", ".*module\\(s\\) in eval mode.*")


@dataclass
class RunContext:
    """What one invocation shares across runs: the scorer, loaded datasets, progress display."""

    results_dir: Path
    scorer: object
    datasets: dict = field(default_factory=dict)
    progress: object | None = None
    quiet: bool = False
    rescore: bool = False
    _val_scorer: object | None = None

    @property
    def val_scorer(self):
        """The validation scorer: the same metrics without FRD (its radiomics would dominate the curves' cost)."""
        if self._val_scorer is None:
            from .scorer import Scorer

            sc = self.scorer
            self._val_scorer = Scorer(weights_dir=sc.weights_dir, cache_dir=sc.cache_dir, frd=False, n_boot=50,
                                      feature_extractor=sc.feature_extractor, lpips_model=sc.lpips_model,
                                      clip_model=sc.clip_model, clip_dir=sc.clip_dir)
        return self._val_scorer


def data_key(spec: RunSpec) -> tuple:
    """What identifies a spec's loaded dataset within one invocation."""
    return (spec.dataset, spec.preset, spec.data_seed, spec.dataset_config, spec.data_root)


def load_data(spec: RunSpec, ctx: RunContext, progress=None):
    """The spec's dataset, loaded (and for skull-sim generated) once per invocation.

    Args:
        progress: Optional callable(done, total) for generation progress.
    """
    from datasets import load_dataset

    key = data_key(spec)
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
    """Exclusive hold of a run folder: `.lock` holding {pid, host, since}, written in full to a temporary and linked
    into place (an atomic create-if-absent: a lock is never seen half-written).

    A lock left by a process that no longer exists on this host is stale and is taken over, and so is one that cannot
    be read (a full disk while an older version took it); a lock held by a live process (or one on another host, which
    cannot be checked) stops the invocation with its owner named. A lock that cannot be written (a full disk) is a
    one-line error naming the folder, and leaves nothing behind.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        tmp = self.path.with_name(f".lock.tmp-{os.getpid()}")
        try:
            tmp.write_text(me)
            for _ in range(2):
                try:
                    self._create(tmp, me)
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is None or (owner.get("host") == socket.gethostname()
                                         and not pid_alive(int(owner.get("pid", 0) or 0))):
                        self.path.unlink(missing_ok=True)  # stale: its process is gone, or it was never written
                        continue
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
                    raise RunError(f"{self.path.parent} is being run by pid {owner.get('pid')} on {owner.get('host')} "
                                   f"(since {since}); wait for it, or delete {self.path} if that process is gone") \
                        from None
        except OSError as exc:
            raise disk_error(exc, self.path.parent) from None
        finally:
            tmp.unlink(missing_ok=True)
        raise RunError(f"could not take the lock {self.path}; delete it if no process is running this run")

    def _create(self, tmp: Path, me: str) -> None:
        """Put the lock in place if absent (FileExistsError otherwise): a hard link of the written temporary; on a file
        system without hard links, an exclusive create and write (a write that fails removes the lock again)."""
        import errno

        try:
            os.link(tmp, self.path)
            return
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(me)
        except OSError:
            self.path.unlink(missing_ok=True)
            raise

    def _owner(self) -> dict | None:
        """The holder {pid, host, since}, or None where the lock cannot be read (empty, not JSON, gone)."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and owner.get("pid") and owner.get("host") else None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def disk_error(exc: OSError, folder: Path) -> Exception:
    """A full disk (or quota) as one line naming the folder; any other OSError as it is."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(f"{folder}: no space left on the device ({exc.strerror}); nothing half-written was kept and "
                        "every finished record is on disk: free space (or pass --results-dir on another disk) and run "
                        "the same command again to resume")
    return exc


# --------------------------------------------------------------------------------------------- fitting
def _build(spec: RunSpec, dataset, config: dict):
    """The method, seeded by the run seed (the same initial weights whenever the run is built)."""
    import lightning as L

    from datasets import get_task
    from methods import get_method

    torch.manual_seed(spec.seed)
    L.seed_everything(spec.seed, verbose=False)
    task = get_task(spec.tasks[0], dataset.domains)
    try:
        return get_method(spec.method)(domains=dataset.domains, sources=task.sources, target=task.target,
                                       image_size=dataset.size, **config)
    except ValueError as exc:  # a setting the constructor refuses for this data (e.g. a patch that does not tile)
        raise RunError(f"{spec.method} on {dataset.name} ({dataset.size} px): {exc}") from None


def _datamodule(spec: RunSpec, method, dataset, ctx: RunContext, iterations: int | None = None, start: int = 0,
                accumulate: int = 1):
    """The training batches; a fit of `iterations` resumed at iteration `start` serves the uninterrupted fit's
    batches from `start` on (`datasets.datamodule.BatchStream`), each as `accumulate` micro-batches."""
    from datasets.datamodule import TranslationDataModule

    task, domains = _training_domains(spec, type(method), dataset)
    return TranslationDataModule(dataset, domains, batch_size=method.train_batch_size, seed=spec.seed,
                                 pairing=type(method).pairing, target=task.target, drop_last=type(method).drop_last,
                                 iterations=iterations, start=start, accumulate=accumulate)


def _training_domains(spec: RunSpec, cls, dataset) -> tuple:
    """(the spec's first task, the domains method class `cls` trains on for it): tasks of one spec share them."""
    from datasets import get_task

    task = get_task(spec.tasks[0], dataset.domains)
    return task, cls.training_domains(dataset.domains, task.sources, task.target)


def prepare(spec: RunSpec, method, dataset, ctx: RunContext) -> None:
    """Hand the method what it may derive from the training data before a fit (`TranslationMethod.prepare_fit`)."""
    from methods import FitData

    _, domains = _training_domains(spec, type(method), dataset)
    method.prepare_fit(FitData(train_images=lambda: dataset.load(dataset.rows(domains, "train")),
                               cache_dir=ctx.results_dir / "cache",
                               identity=dict(dataset=dataset.name, config=dataset.config, split=dataset.split_hash,
                                             domains=list(domains))))


def budget_plan(spec: RunSpec, config: dict, dataset, ctx: RunContext, folder: Path) -> dict:
    """{budget, flops_per_iteration, max_steps} for a learned method under the preset's FLOP budget, else {}.

    `--max-steps` or `--set max_steps=` bypass the budget (recorded as a setting). A run's plan is measured once
    and kept in its config.json, so a resumed run trains for exactly the same number of iterations.
    """
    overridden = spec.max_steps is not None or any(k == "max_steps" for k, _ in spec.overrides)
    budget = spec.budget if spec.budget is not None else preset_budget(spec.dataset, spec.preset)
    if "max_steps" not in config or overridden or budget is None:
        return {}
    cfg_path = folder / "config.json"
    if cfg_path.is_file():
        old = json.loads(cfg_path.read_text()).get("budget") or {}
        if old.get("budget") == budget and old.get("flops_per_iteration") is not None:
            return old
    method = _build(spec, dataset, config)
    prepare(spec, method, dataset, ctx)
    flops = flops_per_iteration(method, _datamodule(spec, method, dataset, ctx))
    if flops == 0:  # no matrix/conv FLOPs: negligible compute, its own max_steps (`benchmark.budget`)
        return dict(budget=budget, flops_per_iteration=0, max_steps=int(config["max_steps"]))
    return dict(budget=budget, flops_per_iteration=flops, max_steps=iterations_for(budget, flops))


def _fit(spec: RunSpec, method, dataset, folder: Path, ctx: RunContext, curve=None) -> dict:
    """Train (resuming from `checkpoints/last.ckpt` if present); returns this segment {start_step, end_step, sec}.

    Args:
        curve: Optional `LearningCurve` callback (saves and scores the learning-curve points).
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from .resume import ResumePoint
    from .stopping import Stopped, StopRequests, handlers_now

    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import: Lightning sets INFO when imported
        logging.getLogger(name).setLevel(logging.WARNING)  # device/tip banners; warnings still reach the user
    settings = method.trainer_settings(spec.max_steps)
    per_iter = type(method).optimizer_steps_per_iteration
    steps = settings.get("max_steps", -1)
    iterations = steps // per_iter if steps and steps > 0 else None
    ckpt_dir = folder / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    start_step = 0
    if last.is_file():  # validated before Lightning touches it: a clear error, and the file is left as it is
        start_step = int(_readable_checkpoint(last, method, "delete it to train this run from scratch")
                         .get("global_step", 0))
    # a one-pass statistic (histmatch) has nothing to share out (and is refused a launch over several processes)
    devices, num_nodes = (spec.devices, spec.num_nodes) if iterations else (1, 1)
    accumulate = spec.accumulate if iterations else 1
    dm = _datamodule(spec, method, dataset, ctx, iterations=iterations, start=start_step // per_iter,
                     accumulate=accumulate)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    stops = StopRequests()
    callbacks = [ResumePoint(last, every=max(25, iterations // 10) if iterations else 10**9, per_iteration=per_iter,
                             seed=spec.seed, stops=stops, handlers_before=handlers_now())]
    callbacks += [curve.hook] if curve is not None else []
    clock = _train_clock(curve)
    callbacks.append(clock)
    plugins = []
    if "SLURM_JOB_ID" in os.environ:  # a sweep job: submitit requeues it on preemption, not Lightning as well
        from lightning.pytorch.plugins.environments import SLURMEnvironment

        plugins.append(SLURMEnvironment(auto_requeue=False))
    interactive = sys.stdout.isatty() and not ctx.quiet
    if interactive:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    trainer = L.Trainer(accelerator=spec.accelerator, devices=devices, num_nodes=num_nodes, precision=spec.precision,
                        callbacks=callbacks, strategy=spec.strategy if devices * num_nodes > 1 else "auto",
                        use_distributed_sampler=False,
                        logger=CSVLogger(folder, name="logs"), enable_progress_bar=interactive,
                        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
                        deterministic=False, log_every_n_steps=10, plugins=plugins or None,
                        accumulate_grad_batches=accumulate, **settings)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        try:
            trainer.fit(method, datamodule=dm, ckpt_path=last if last.is_file() else None, weights_only=True)
        finally:
            stops.disarm()
    if stops.requested:  # the signal came during the last iteration: stop before anything else is written
        raise Stopped(stops.requested, resume_step=callbacks[0].saved_at)
    # a multi-device fit ran in forked processes: what they measured comes back in the callback metrics
    # (`TrainClock.on_train_end`), and the records its first rank wrote are on disk (`Evaluator.reload`)
    here = dict(global_step=trainer.global_step, elapsed=clock.elapsed, eval_sec=curve.eval_sec if curve else 0.0)
    ended = {k: float(trainer.callback_metrics.get(f"xraybench/{k}", v)) for k, v in here.items()}
    sec = time.perf_counter() - t0 - ended["eval_sec"]
    _save_weights(trainer, ckpt_dir / "final.ckpt")
    return dict(start_step=start_step // per_iter, end_step=int(ended["global_step"]) // per_iter, sec=sec,
                total_sec=ended["elapsed"])


def _save_weights(trainer, path: Path) -> None:
    """Every rank takes part (Lightning's save is collective); the first writes the file and renames it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        trainer.save_checkpoint(tmp, weights_only=True)
        if trainer.is_global_zero:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def _load_weights(method, path: Path) -> None:
    method.load_state_dict(_readable_checkpoint(path, method, "delete the run folder and run it again: its recorded "
                                                              "values rest on these weights")["state_dict"])


def _readable_checkpoint(path: Path, method, fix: str) -> dict:
    """The checkpoint at `path`, checked to load and to hold `method`'s weights (the same keys), else a RunError
    naming the file, what is wrong and `fix`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises pickle, zip and runtime errors here
        raise RunError(f"checkpoint {path} cannot be loaded ({type(exc).__name__}: {str(exc)[:100]}); {fix}") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise RunError(f"checkpoint {path} holds no state_dict; {fix}")
    want, have = set(method.state_dict()), set(state)
    if want != have:
        diff = sorted(want - have)[:2] + sorted(have - want)[:2]
        raise RunError(f"checkpoint {path} does not hold {type(method).__name__}'s weights as configured (e.g. "
                       f"{', '.join(diff)}); {fix}")
    return ckpt


def _train_clock(curve=None):
    """A Lightning callback that measures training time into every checkpoint it is saved with, so a resumed fit
    continues the clock of the checkpoint it resumes from (time lost after the last checkpoint of an
    interrupted segment is not training that the final weights rest on). Learning-curve evaluations excluded."""
    from lightning.pytorch.callbacks import Callback

    class TrainClock(Callback):
        def __init__(self):
            self.elapsed, self._t0, self._eval0 = 0.0, None, 0.0

        def _now(self) -> float:
            if self._t0 is None:
                return self.elapsed
            evals = (curve.eval_sec if curve is not None else 0.0) - self._eval0
            return self.elapsed + time.perf_counter() - self._t0 - evals

        def on_train_start(self, trainer, pl_module):
            self._t0, self._eval0 = time.perf_counter(), curve.eval_sec if curve is not None else 0.0

        def on_train_end(self, trainer, pl_module):
            self.elapsed, self._t0 = self._now(), None
            evals = curve.eval_sec if curve is not None else 0.0
            for key, value in (("global_step", trainer.global_step), ("elapsed", self.elapsed), ("eval_sec", evals)):
                trainer.callback_metrics[f"xraybench/{key}"] = torch.tensor(float(value), dtype=torch.float64)

        def state_dict(self):
            return {"elapsed": self._now()}

        def load_state_dict(self, state_dict):
            self.elapsed = float(state_dict["elapsed"])

    return TrainClock()


class LearningCurve:
    """Lightning callback: at each of `steps` (iterations) save the weights and score them on validation."""

    def __init__(self, steps: list[int], score, per_iteration: int, ckpt_dir: Path):
        from lightning.pytorch.callbacks import Callback

        outer = self
        self.steps, self.score, self.per_iteration, self.eval_sec = set(steps), score, per_iteration, 0.0
        self.ckpt_dir = Path(ckpt_dir)

        class _Hook(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                it = trainer.global_step // outer.per_iteration
                if it in outer.steps and trainer.global_step % outer.per_iteration == 0 \
                        and ends_optimizer_step(trainer, batch_idx):
                    t0 = time.perf_counter()
                    _save_weights(trainer, outer.ckpt_dir / f"step{it}.ckpt")
                    if trainer.is_global_zero:  # on several devices the first rank scores, the others wait
                        was_training = pl_module.training
                        pl_module.eval()
                        outer.score(pl_module, it)
                        pl_module.train(was_training)
                    trainer.strategy.barrier("learning-curve point")
                    outer.eval_sec += time.perf_counter() - t0

        self.hook = _Hook()


def learning_curve(spec: RunSpec, method, score, ckpt_dir: Path) -> LearningCurve | None:
    """The fit's learning curve (`validation.curve_steps` of its iterations; `score` None on the ranks that only
    train), or None for a method without iterations."""
    per_iteration = type(method).optimizer_steps_per_iteration
    iterations = method.trainer_settings(spec.max_steps).get("max_steps", 0) // per_iteration
    steps = V.curve_steps(iterations) if iterations > 0 else []
    if not steps:
        return None
    Path(ckpt_dir).mkdir(parents=True, exist_ok=True)
    return LearningCurve(steps, score, per_iteration, ckpt_dir)


def final_weights(spec: RunSpec, method, dataset, folder: Path, ctx: RunContext, donor: Path | None,
                  plan: dict, evaluator) -> dict:
    """Bring `method` to the run's selected weights and return `train.json`.

    Order of preference: the run's own `selected.ckpt` (never trained again); a donor's weights (copied, with
    its train.json: a `--set` sampling variant uses the checkpoint its headline fit selected); otherwise train
    (resuming `last.ckpt`) with the learning curve, write `final.ckpt`, select on validation, write
    `selected.ckpt` and `train.json`.
    """
    ckpt_dir, info_path = folder / "checkpoints", folder / "train.json"
    selected = ckpt_dir / "selected.ckpt"
    if not selected.is_file() and donor is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        _copy(donor / "checkpoints" / "final.ckpt", ckpt_dir / "final.ckpt")
        _copy(donor / "checkpoints" / "selected.ckpt", selected)
        info = json.loads((donor / "train.json").read_text())
        atomic_write(info_path, json.dumps(dict(info, fit_from=donor.name)))
    if selected.is_file() and info_path.is_file():
        _load_weights(method, selected)
        return json.loads(info_path.read_text())
    info = json.loads(info_path.read_text()) if info_path.is_file() else dict(segments=[], fit_from=None)
    prepare(spec, method, dataset, ctx)
    curve = learning_curve(spec, method, evaluator.curve_point, ckpt_dir)
    info["segments"].append(_fit(spec, method, dataset, folder, ctx, curve))
    if spec.world > 1:
        evaluator.reload()  # the learning-curve records were written by the first rank's process
    chosen = evaluator.curve_records()
    criterion = type(method).selection_criterion()
    step = V.best_checkpoint(chosen, criterion) if chosen else None
    # a curve checkpoint is written by a callback hook, which Lightning runs before the module's own
    # on_train_batch_end (the EMA update of that iteration): load it from disk, exactly what validation scored
    _copy(ckpt_dir / (f"step{step}.ckpt" if step is not None else "final.ckpt"), selected)
    _load_weights(method, selected)
    per_iter_flops = plan.get("flops_per_iteration")
    iters = info["segments"][-1]["end_step"]
    info.update(train_sec=info["segments"][-1]["total_sec"], train_steps=iters, selected_step=step,
                budget=plan.get("budget"), flops_per_iteration=per_iter_flops,
                train_flops=per_iter_flops * iters if per_iter_flops is not None else None,
                images_seen=iters * batch_images(spec, method, dataset),
                selection_metric=V.checkpoint_metric(chosen, criterion) if chosen else None)
    atomic_write(info_path, json.dumps(info))
    return info


# --------------------------------------------------------------------------------------------- evaluation
#: Images per sampler call when translating (measured: a 64-px U-Net on 2 cores runs 2x faster per image than at 64).
#: The same on every device: a stochastic sampler seeds its noise per call, so the batch decides each image's noise.
EVAL_BATCH = 16


@torch.no_grad()
def _translate(method, x: torch.Tensor, source: str, target: str, knob,
               batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, float]:
    """Translate in batches of `EVAL_BATCH`; returns the translations and the seconds per image."""
    device = method.device
    t0 = time.perf_counter()
    out = [method.translate(x[i:i + batch_size].to(device), source, target, knob).float().cpu()
           for i in range(0, len(x), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), (time.perf_counter() - t0) / max(len(x), 1)


def _reference_images(dataset, target: str) -> torch.Tensor:
    try:
        return dataset.images(target, "ref")[0]
    except ValueError as exc:
        raise RunError(f"{dataset.name}: no {target} images in the 'ref' split, which realism is scored against; "
                       "the dataset needs more subjects (datasets/splits.py)") from exc


def point_key(rec: dict) -> tuple:
    return (rec.get("split", "test"), rec.get("step"), rec["task"], rec["source"], rec["knob_value"])


class Evaluator:
    """Scores points of one run: the learning curve (validation subset), the knob choice (validation) and the
    test evaluations; loads each image set and real reference once and writes every record as it is made."""

    def __init__(self, spec: RunSpec, method, dataset, ctx: RunContext, records: list[dict], path: Path):
        from datasets import get_task

        self.spec, self.method, self.dataset, self.ctx = spec, method, dataset, ctx
        self.records, self.path = records, path
        self.tasks = {t: get_task(t, dataset.domains) for t in spec.tasks}
        self.sets, self.references = {}, {}
        self.sha, self.setting = git_sha(), setting(spec)
        self.train: dict = {}
        #: translations made elsewhere with the selected weights (`translate_sharded`), used once each
        self.translated: dict = {}

    # ------------------------------------------------------------------ data
    def _set(self, split: str, task_name: str, source: str, subset: bool = False):
        key = (split, task_name, source, subset)
        if key not in self.sets:
            task = self.tasks[task_name]
            rows = V.task_rows(self.dataset, source, task.sources, split)
            if subset:
                rows = V.curve_rows(rows)
            if rows.empty:
                raise RunError(f"{self.dataset.name}: no {source} images in the {split!r} split")
            x_src = self.dataset.load(rows)
            self.sets[key] = (x_src, *self.dataset.counterparts(rows, task.target), list(rows["subject"]),
                              list(rows["scene"]))
        return self.sets[key]

    def _reference(self, target: str):
        if target not in self.references:
            d = self.dataset
            self.references[target] = self.ctx.scorer.reference(_reference_images(d, target), dict(
                dataset=d.name, config=d.config, split=d.split_hash, part="ref", domain=target))
        return self.references[target]

    # ------------------------------------------------------------------ records
    def _record(self, method, split: str, task_name: str, source: str, knob, step=None, subset=False) -> dict:
        x_src, x_gt, gt_reason, subjects, scenes = self._set(split, task_name, source, subset)
        target = self.tasks[task_name].target
        done = self.translated.pop((split, task_name, source, knob, subset), None)
        x_hat, sec = done if done is not None else _translate(method, x_src, source, target, knob)
        if split == "test":
            save_samples(self.path.parent, task_name, scenes, sample_scenes(self.dataset, target), source, target,
                         knob, x_src, x_gt, x_hat)
        scorer = self.ctx.scorer if split == "test" else self.ctx.val_scorer
        scores = scorer.score(x_hat, x_src, x_gt, self._reference(target), gt_reason, subjects=subjects)
        spec = self.spec
        rec = {k: None for k in RECORD_KEYS}
        rec.update({k: v for k, v in scores.items() if k != "unavailable"})
        rec.update(method=spec.method, setting=self.setting, dataset=spec.dataset, preset=spec.preset,
                   task=task_name, seed=spec.seed, source=source, target=target, knob=method.knob_name,
                   knob_value=knob, nfe=method.nfe(knob), sec_per_image=sec, n_params=method.n_params,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   unavailable=scores["unavailable"], run_id=spec.run_id, split_hash=self.dataset.split_hash,
                   git_sha=self.sha, protocol=PROTOCOL_VERSION, split=split, step=step)
        return rec

    def reload(self) -> None:
        """Take the records from disk (a multi-device fit's first rank wrote its learning curve there)."""
        self.records[:] = read_records(self.path)

    def add(self, rec: dict) -> dict:
        """Seal `rec`, append it and rewrite records.jsonl (every record is on disk as soon as it is made)."""
        rec = seal(rec)
        self.records.append(rec)
        write_records(self.path, self.records)
        return rec

    def curve_points(self) -> list[tuple]:
        """(task, source, knob) of the learning curve: each task's first source at its cheapest table knob value."""
        knob = min(self.method.knob_grid, key=lambda k: self.method.nfe(k))
        return [(t, task.sources[0], knob) for t, task in self.tasks.items()]

    def curve_point(self, method, step: int) -> None:
        for task_name, source, knob in self.curve_points():
            if ("val", step, task_name, source, knob) not in {point_key(r) for r in self.records}:
                rec = self._record(method, "val", task_name, source, knob, step=step, subset=True)
                self.add(dict(rec, flops=step * (self.train.get("flops_per_iteration") or 0) or None))

    def curve_records(self) -> list[dict]:
        return [r for r in self.records if r.get("split") == "val" and isinstance(r.get("step"), int)]

    def _knob_choice_points(self) -> list[tuple]:
        """(task, source, knob) of the knob choice: every table knob value on the whole validation set."""
        return [(t, s, k) for t, task in self.tasks.items() for s in task.sources for k in self.method.knob_grid]

    def plan(self, todo: list[tuple]) -> list[tuple]:
        """The translations an evaluation of the test points `todo` makes with the selected weights, as keys
        (split, task, source, knob, subset): the knob choice's validation points not yet recorded, then `todo`."""
        have = {point_key(r) for r in self.records}
        keys = [("val", *p, False) for p in self._knob_choice_points() if ("val", "selected", *p) not in have]
        return keys + [("test", t, s, k, False) for t, s, k in todo]

    def choose_knobs(self, bar=None) -> dict:
        """Score every table knob value on the whole validation set; {task: the best value}."""
        have: dict[tuple, dict] = {}
        for r in self.records:
            have.setdefault(point_key(r), r)
        recs: dict[str, list] = {}
        for task_name, source, knob in self._knob_choice_points():
            done = have.get(("val", "selected", task_name, source, knob))
            recs.setdefault(task_name, []).append(done if done is not None else self.add(
                self._record(self.method, "val", task_name, source, knob, step="selected")))
        return {task_name: V.best_knob(r) for task_name, r in recs.items()}

    def test_record(self, task_name: str, source: str, knob, val_choice: bool) -> dict:
        """A test record (not yet written: the caller adds it, or merges it into a re-scored one)."""
        rec = self._record(self.method, "test", task_name, source, knob)
        resumed = [s["start_step"] for s in self.train.get("segments", []) if s["start_step"] > 0]
        info = self.train
        rec.update(train_sec=info.get("train_sec"), train_steps=info.get("train_steps"),
                   train_flops=info.get("train_flops"), images_seen=info.get("images_seen"),
                   selected_step=info.get("selected_step"), fit_from=info.get("fit_from"),
                   resumed_from_steps=resumed, val_choice=val_choice)
        return rec


def test_points(spec: RunSpec, method, dataset) -> list[tuple[str, str, object]]:
    """(task, source, knob value) test points: the table grid, plus the dense curve with `--curve`."""
    from datasets import get_task

    grid = tuple(method.knob_grid)
    if spec.curve and method.knob_curve:
        grid = tuple(dict.fromkeys(grid + tuple(method.knob_curve)))
    points = []
    for t in spec.tasks:
        task = get_task(t, dataset.domains)
        points += [(t, src, k) for src in task.sources for k in grid]
    return points


def check_data(dataset, spec: RunSpec) -> None:
    """What the data must satisfy for every metric and for the spec's method, checked before any training (a clear
    error, not one after): images large enough for SSIM; pixel-exact pairs for a paired method."""
    from datasets.datamodule import check_pairs
    from methods import get_method

    from .metrics import MIN_IMAGE_SIZE

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
    from datasets import get_task
    from methods import get_method

    cls = get_method(spec.method)
    subjects = dataset.manifest.groupby("split")["subject"].nunique().to_dict()
    sizes = ", ".join(f"{s} {subjects.get(s, 0)}" for s in ("train", "val", "test", "ref"))
    for name in spec.tasks:
        task = get_task(name, dataset.domains)
        need = [(d, "train", dataset.rows(d, "train")) for d in cls.training_domains(dataset.domains, task.sources,
                                                                                      task.target)]
        need += [(src, split, V.task_rows(dataset, src, task.sources, split)) for split in ("val", "test")
                 for src in task.sources]
        need += [(task.target, "ref", dataset.rows(task.target, "ref"))]
        for domain, split, rows in need:
            if rows.empty:
                raise RunError(f"{dataset.name} ({dataset.root}): no {domain} images in the {split!r} split, which "
                               f"task {name} reads (subjects per split: {sizes}); the dataset needs more subjects "
                               "(at least 5, datasets/splits.py) or a subject_regex that groups fewer images")


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


def run_one(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """Fit, choose on validation, translate, score and record one spec; returns its records.

    With `ctx.rescore`, a finished run whose test records lack metrics the scorer can now compute is translated
    again from its selected weights and those metrics are added (`benchmark.rescore`).
    """
    if spec.launched_outside and spec.world > 1 and launch_rank(spec) != 0:
        return follow(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    new = not folder.exists()
    try:
        with RunLock(folder), tf32_matmuls("tf32" in spec.speedups):
            clean_stale_temporaries(folder)
            clean_stale_temporaries(folder / "checkpoints")
            try:
                return _run_locked(spec, ctx, folder)
            except OSError as exc:
                if disk_error(exc, folder) is exc:
                    raise
                raise disk_error(exc, folder) from None
    except BaseException:
        if new and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # refused before anything was written: leave no empty run folder behind
        raise


def launch_rank(spec: RunSpec) -> int:
    """This process's global rank among the processes a launcher started for the fit, read where Lightning reads it
    (the first environment it detects): SLURM's (srun), torchrun's, else Lightning's own NODE_RANK and LOCAL_RANK."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if SLURMEnvironment.detect():
        return int(os.environ["SLURM_PROCID"])
    if TorchElasticEnvironment.detect():
        return int(os.environ["RANK"])
    if "LOCAL_RANK" not in os.environ:  # Lightning would start the other ranks itself, re-running this command
        raise RunError(f"--strategy ddp over {spec.world} processes: start one process per device with srun or "
                       "torchrun (see the README, Running at scale); for the devices of this machine use "
                       "--strategy ddp_fork")
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return node * spec.devices + int(os.environ.get("LOCAL_RANK", 0))


def follow(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """A rank after the first of a fit whose processes a launcher started (`--strategy ddp`, e.g. `srun` over
    `--num-nodes`): it takes part in `trainer.fit` and writes nothing. The first rank holds the run folder, writes
    config.json, scores the learning curve, evaluates and writes every record; this rank decides from the same files
    whether that rank will train (not when the run has its selected weights, or reuses a donor's) and otherwise joins
    the fit, resuming from the same `last.ckpt`. Returns no records (the first rank's are the run's)."""
    folder = spec.folder(ctx.results_dir)
    dataset, config, _, method = _prepared(spec, ctx, folder)  # with the checks on which the first rank stops
    _check_can_evaluate(folder, read_records(folder / "records.jsonl"), verify_done(folder) is None)
    if (folder / "checkpoints" / "selected.ckpt").is_file() and (folder / "train.json").is_file():
        return []  # trained: the first rank only evaluates
    if _donor(spec, folder, config, dataset) is not None:
        return []  # the first rank copies a finished fit's weights (`final_weights`)
    prepare(spec, method, dataset, ctx)
    with tf32_matmuls("tf32" in spec.speedups):
        _fit(spec, method, dataset, folder, ctx, learning_curve(spec, method, None, folder / "checkpoints"))
    return []


def _prepared(spec: RunSpec, ctx: RunContext, folder: Path):
    """The run's data (checked for the spec's method and against the folder's config.json), its resolved config and
    budget plan, and the method built from them: (dataset, config, plan, method)."""
    dataset = load_data(spec, ctx)
    check_data(dataset, spec)
    _check_same_data(folder, dataset)
    config, plan = _resolve(spec, dataset, ctx, folder)
    method = _build(spec, dataset, config)
    check_sampling(spec, method, dataset)
    return dataset, config, plan, speedups(method, spec.speedups)


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


def batch_images(spec: RunSpec, method, dataset) -> int:
    """Images in one training batch: the method's batch size, or the whole training set where that is smaller (the
    loader then serves every training image as each batch; `flops_per_iteration` is measured on such a batch too)."""
    sampled = _datamodule(spec, method, dataset, ctx=None).sampled_domains()
    return min(method.train_batch_size, len(dataset.rows(sampled, "train")))


def _run_locked(spec: RunSpec, ctx: RunContext, folder: Path) -> list[dict]:
    """The stages of one run, each a function below; every stage can be interrupted and resumed."""
    state = _read_state(folder, ctx, spec.run_id)
    dataset, config, plan, method = _prepared(spec, ctx, folder)
    todo = [p for p in test_points(spec, method, dataset) if ("test", None, *p) not in state.have]
    if state.finished and not todo:
        return state.records
    _check_can_evaluate(folder, state.records, state.finished)
    donor = _write_config(spec, folder, dataset, config, plan, method, state)
    evaluator = Evaluator(spec, method, dataset, ctx, state.records, folder / "records.jsonl")
    evaluator.train = dict(plan)
    evaluator.train = final_weights(spec, method, dataset, folder, ctx, donor, plan, evaluator)
    method.eval()
    shards = translation_shards(spec, config)
    if shards > 1:  # this process scores; it never moves the model to a GPU (`translate_sharded`)
        evaluator.translated = translate_sharded(spec, ctx, folder, evaluator.plan(todo), shards)
    else:
        method.to(evaluation_device(spec))
    _evaluate(spec, ctx, folder, evaluator, todo, state)
    write_done(folder, state.records)
    return state.records


def evaluation_device(spec: RunSpec) -> torch.device:
    """Where a run translates its validation and test sets: the accelerator it trained on, as Lightning picks it
    (CUDA, else Apple's MPS, for `gpu` and `auto`), this process's first device. Lightning moves the model back to the
    CPU when a fit ends, so without this a GPU run would evaluate on the CPU."""
    if spec.accelerator in ("gpu", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        if torch.backends.mps.is_available():
            return torch.device("mps")
    return torch.device("cpu")


def translation_shards(spec: RunSpec, config: dict) -> int:
    """Processes a learned method's evaluation translates in: one per device of this node for a fit over several
    devices, else none besides this one (1)."""
    return spec.devices if spec.world > 1 and "max_steps" in config else 1


def translate_sharded(spec: RunSpec, ctx: RunContext, folder: Path, keys: list[tuple], shards: int) -> dict:
    """Translate the evaluation's `keys` ((split, task, source, knob, subset), `Evaluator.plan`) with the selected
    weights in `shards` spawned processes, one per device (`shard_device`), and return {key: (translations,
    seconds per image)} for this process to score. The batches are the in-process evaluation's (`EVAL_BATCH`
    images, each sampler call seeding its own noise), dealt round-robin over the processes, so the translations are
    the ones a single process makes. Spawned, not forked: a child forked after this process ran OpenMP-parallel CPU
    kernels can hang in its first one, and this process never initialises CUDA (its next ddp_fork fit could not
    fork). A failed process is a RunError; nothing is recorded from a partial translation."""
    import multiprocessing as mp

    if not keys:
        return {}
    out = folder / ".shards"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    light = replace(ctx, datasets={}, progress=None, _val_scorer=None)  # each process loads the data itself
    threads = max(1, torch.get_num_threads() // shards)
    if torch.cuda.is_initialized():  # this process trained on a GPU (a launched rank): free what its cache holds
        torch.cuda.empty_cache()
    procs = [mp.get_context("spawn").Process(target=_translate_shard, name=f"xraybench-translate-{r}",
                                             args=(spec, light, folder, keys, r, shards, threads))
             for r in range(shards)]
    try:
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [f"{proc.name} (exit code {proc.exitcode})" for proc in procs if proc.exitcode != 0]
        if failed:
            raise RunError(f"{folder}: translating the evaluation failed in {', '.join(failed)} (its error is printed "
                           "above); nothing of it was recorded: run the same command again")
        parts = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(shards)]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        shutil.rmtree(out, ignore_errors=True)
    merged = {}
    for i, key in enumerate(keys):
        batches = {b: xs for part in parts for b, xs in part.get(i, {}).items()}
        x_hat = torch.cat([batches[b][0] for b in sorted(batches)])
        merged[key] = (x_hat, sum(float(t) for _, t in batches.values()) / max(len(x_hat), 1))
    return merged


def shard_device(spec: RunSpec, rank: int) -> torch.device:
    """The device of translation process `rank`: the rank-th GPU of this node, else the CPU."""
    device = evaluation_device(spec)
    return torch.device("cuda", rank) if device.type == "cuda" else device


def _translate_shard(spec: RunSpec, ctx: RunContext, folder: Path, keys: list[tuple], rank: int, world: int,
                     threads: int) -> None:
    """One process of `translate_sharded`: batches rank, rank + world, ... of the evaluation, written to
    `.shards/rank<r>.pt` as {key index: {batch: (translations, seconds)}}."""
    torch.set_num_threads(threads)
    dataset, _, _, method = _prepared(spec, ctx, folder)
    _load_weights(method, folder / "checkpoints" / "selected.ckpt")
    method.eval().to(shard_device(spec, rank))
    evaluator = Evaluator(spec, method, dataset, ctx, [], folder / "records.jsonl")
    sets = [evaluator._set(split, task, source, subset)[0] for split, task, source, _, subset in keys]
    items = [(i, b) for i, x in enumerate(sets) for b in range(-(-len(x) // EVAL_BATCH))]
    mine: dict = {}
    for i, b in items[rank::world]:
        _, task, source, knob, _ = keys[i]
        x = sets[i][b * EVAL_BATCH:(b + 1) * EVAL_BATCH]
        x_hat, sec = _translate(method, x, source, evaluator.tasks[task].target, knob)
        mine.setdefault(i, {})[b] = (x_hat, sec * len(x))
    tmp = folder / ".shards" / f".rank{rank}.pt.tmp"
    torch.save(mine, tmp)
    tmp.replace(tmp.with_name(f"rank{rank}.pt"))


@dataclass
class _RunState:
    records: list[dict]
    finished: bool  # `done` vouches for the records on disk
    stale: dict  # test point -> metrics a re-scoring adds
    have: set  # test points already recorded (and not stale)

    @property
    def tests(self) -> list[dict]:
        return [r for r in self.records if r.get("split", "test") == "test"]


def check_records(folder: Path, records: list[dict], run_id: str) -> None:
    """Records that cannot be this run's are refused before anything is sealed with them: two records of one point
    (a line copied by hand), or a record of another run (a file copied from elsewhere)."""
    seen: dict[tuple, int] = {}
    for line, rec in enumerate(records, 1):
        if rec.get("run_id", run_id) != run_id:
            raise RunError(f"{folder / 'records.jsonl'}:{line}: a record of run {rec.get('run_id')}, not of this run "
                           f"({run_id}); restore the file or delete the run folder")
        key = point_key(rec)
        if key in seen:
            raise RunError(f"{folder / 'records.jsonl'}: lines {seen[key]} and {line} record the same point "
                           f"({', '.join(map(str, key))}); delete the copied line, or the run folder")
        seen[key] = line


def _read_state(folder: Path, ctx: RunContext, run_id: str) -> _RunState:
    """The run's records and whether `done` vouches for them (a `done` that does not is removed, with a warning)."""
    records = read_records(folder / "records.jsonl")
    check_records(folder, records, run_id)
    problem = verify_done(folder)
    if (folder / "done").is_file() and problem:
        warnings.warn(f"{folder}: {problem}; evaluating its missing records again from its selected weights",
                      stacklevel=3)
        (folder / "done").unlink()
    tests = [r for r in records if r.get("split", "test") == "test"]
    stale = {point_key(r): stale_metrics(r, ctx.scorer.unavailable) for r in tests} if ctx.rescore else {}
    stale = {k: v for k, v in stale.items() if v}
    return _RunState(records, problem is None, stale, {point_key(r) for r in tests} - set(stale))


def _check_same_data(folder: Path, dataset) -> None:
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


def _resolve(spec: RunSpec, dataset, ctx: RunContext, folder: Path) -> tuple[dict, dict]:
    """The method config with `max_steps` from the FLOP budget, and the budget plan."""
    config = resolve_config(spec)
    plan = budget_plan(spec, config, dataset, ctx, folder)
    return dict(config, **({"max_steps": plan["max_steps"]} if plan else {})), plan


def _check_can_evaluate(folder: Path, records: list[dict], finished: bool) -> None:
    tests = any(r.get("split", "test") == "test" for r in records)
    if records and not (folder / "checkpoints" / "selected.ckpt").is_file() and (tests or finished):
        raise RunError(f"cannot evaluate {folder} again: checkpoints/selected.ckpt is missing, and training again "
                       "would not reproduce the recorded values; delete the run folder and run it again instead")


def _write_config(spec: RunSpec, folder: Path, dataset, config: dict, plan: dict, method,
                  state: _RunState) -> Path | None:
    """Write config.json (before any training; a re-scored run keeps its fit's) and return the donor run whose
    weights this run reuses, if any (`config.find_donor`)."""
    fingerprint = dataset.fingerprint
    key = fit_key(asdict(spec), config, dataset.domains)
    donor = _donor(spec, folder, config, dataset)
    if not (folder / "config.json").is_file() or not state.finished:
        atomic_write(folder / "config.json", json.dumps(dict(
            spec=asdict(spec), run_id=spec.run_id, method_config=config, seed=spec.seed, split_hash=dataset.split_hash,
            data_identity=spec.data_identity, data_fingerprint=fingerprint, data_content=dataset.content_fingerprint,
            dataset_config=dataset.config, git_sha=git_sha(), packages=package_versions(), n_params=method.n_params,
            torch_threads=torch.get_num_threads(),
            knob=method.knob_name, knob_grid=list(method.knob_grid), method_info=type(method).table_info(),
            fit_key=key, protocol=PROTOCOL_VERSION,
            budget=plan or None, fit_from=donor.name if donor else None), indent=2, default=str))
    return donor


def _donor(spec: RunSpec, folder: Path, config: dict, dataset) -> Path | None:
    """The finished run whose weights this run reuses (`config.find_donor`), unless it has trained weights of its own
    (a selected checkpoint or a train.json)."""
    if (folder / "checkpoints" / "selected.ckpt").is_file() or (folder / "train.json").is_file():
        return None
    return find_donor(folder, fit_key(asdict(spec), config, dataset.domains), dataset.domains, dataset.fingerprint,
                      dataset.content_fingerprint)


def _evaluate(spec: RunSpec, ctx: RunContext, folder: Path, evaluator: Evaluator, todo: list, state: _RunState):
    """Choose the knob on validation, then score the missing test points (or re-score stale ones), each written
    as soon as it is made."""
    choice = evaluator.choose_knobs()
    records = state.records
    bar = ctx.progress.add_task(f"{spec.method} seed {spec.seed}: evaluate", total=len(todo)) if ctx.progress else None
    for task_name, source, knob in todo:
        point = ("test", None, task_name, source, knob)
        rec = evaluator.test_record(task_name, source, knob, knob == choice[task_name])
        if point in state.stale:
            i = [point_key(r) for r in records].index(point)
            records[i] = rec = merge_rescored(records[i], rec, state.stale[point], evaluator.sha)
            write_records(folder / "records.jsonl", records)
            if rec["rescored"]["max_abs_diff"] > 1e-6:
                warnings.warn(f"re-scoring {folder.name} {point}: translating again changed recorded metrics by up "
                              f"to {rec['rescored']['max_abs_diff']:.3g}; the recorded values are kept", stacklevel=1)
        else:
            evaluator.add(rec)
        if bar is not None:
            ctx.progress.advance(bar)
