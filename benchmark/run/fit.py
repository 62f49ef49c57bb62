"""Fitting: the method built from its config, its FLOP budget, the training batches, the fit itself (resumable,
with its clock and learning curve) and the selected weights (`final_weights`)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

import benchmark.protocol.validation as V
from benchmark.errors import RunError, user_input
from benchmark.protocol.budget import flops_per_iteration, iterations_for, preset_budget
from benchmark.protocol.config import RunSpec
from benchmark.protocol.records import atomic_write
from benchmark.run.context import QUIET_WARNINGS, PreparedRun
from methods.base import ends_optimizer_step


def build(spec: RunSpec, dataset, config: dict):
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


def datamodule(spec: RunSpec, method, dataset, iterations: int | None = None, start: int = 0, accumulate: int = 1):
    """The training batches; a fit of `iterations` resumed at iteration `start` serves the uninterrupted fit's
    batches from `start` on (`datasets.datamodule.BatchStream`), each as `accumulate` micro-batches."""
    from datasets.datamodule import TranslationDataModule

    task, domains = training_domains(spec, method, dataset)
    return TranslationDataModule(dataset, domains, batch_size=method.train_batch_size, seed=spec.seed,
                                 pairing=type(method).pairing, target=task.target, drop_last=type(method).drop_last,
                                 iterations=iterations, start=start, accumulate=accumulate)


def training_domains(spec: RunSpec, method, dataset) -> tuple:
    """(the spec's first task, the domains `method` trains on for it): tasks of one spec share them."""
    from datasets import get_task

    task = get_task(spec.tasks[0], dataset.domains)
    return task, type(method).training_domains(dataset.domains, task.sources, task.target, dict(method.hparams))


def prepare(spec: RunSpec, method, dataset, cache_dir: Path, progress=None) -> None:
    """Hand the method what it may derive from the training data before a fit (`TranslationMethod.prepare_fit`;
    what it derives is cached under `cache_dir`); what it reports of its progress goes to `progress` (the
    invocation's bars or plain lines, `RunContext.progress`) as "<method> seed <s>: preparing"."""
    from methods import FitData

    _, domains = training_domains(spec, method, dataset)
    teacher, info = find_teacher(spec, method, Path(cache_dir).parent)
    method.teacher_info = info
    with user_input():  # e.g. a pretrained autoencoder folder named by `--set` that is not there
        method.prepare_fit(FitData(train_images=lambda: dataset.load(dataset.rows(domains, "train")),
                                   train_domains=lambda: list(dataset.rows(domains, "train")["domain"]),
                                   cache_dir=cache_dir,
                                   identity=dict(dataset=dataset.name, config=dataset.config,
                                                 split=dataset.split_hash, domains=list(domains)),
                                   teacher=teacher, teacher_info=info,
                                   progress=_reporter(progress, f"{spec.method} seed {spec.seed}: preparing")))


def _reporter(progress, label: str):
    """`FitData.progress` on the invocation's progress display: a bar (or plain lines) made at the first report."""
    if progress is None:
        return None
    bar = []

    def report(done: int, total: int) -> None:
        if not bar:
            bar.append(progress.add_task(label, total=total))
        progress.update(bar[0], completed=done, total=total)
    return report


def find_teacher(spec: RunSpec, method, results_dir: Path) -> tuple[object, dict | None]:
    """(the teacher at its selected weights, its run's info) for a method that declares a `teacher`: that method's
    finished fit as configured (no `--set`) of the same dataset, preset, seed, first task and budget (`--budget`: a
    student at 3x distils the teacher's 3x fit) under `results_dir`; (None, None) for the others.

    Raises:
        RunError: no such fit, naming the command that makes it.
    """
    name = type(method).teacher
    if not name:
        return None, None
    from benchmark.protocol.records import read_records
    from benchmark.run.finished import find_run, load_translator

    folder = find_run(results_dir, name, spec.dataset, spec.preset, spec.seed, spec.tasks[0], spec.budget,
                      purpose=f"{spec.method} distils a {name} fit")
    teacher, cfg = load_translator(folder)
    chosen = [r.get("sampling") for r in read_records(folder / "records.jsonl")
              if r.get("split", "test") == "test" and r["task"] == spec.tasks[0] and r.get("val_choice")]
    train = json.loads((folder / "train.json").read_text()) if (folder / "train.json").is_file() else {}
    return teacher, dict(run_id=cfg["run_id"], folder=str(folder), train_flops=train.get("train_flops"),
                         sampling=chosen[0] if chosen else None)


def budget_plan(spec: RunSpec, config: dict, dataset, cache_dir: Path, folder: Path, progress=None) -> dict:
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
    method = build(spec, dataset, config)
    prepare(spec, method, dataset, cache_dir, progress)
    flops = flops_per_iteration(method, datamodule(spec, method, dataset))
    if flops == 0:  # no matrix/conv FLOPs: negligible compute, its own max_steps (`benchmark.protocol.budget`)
        return dict(budget=budget, flops_per_iteration=0, max_steps=int(config["max_steps"]))
    return dict(budget=budget, flops_per_iteration=flops, max_steps=iterations_for(budget, flops))


def fit(run: PreparedRun, curve=None) -> dict:
    """Train (resuming from `checkpoints/last.ckpt` if present); returns this segment {start_step, end_step, sec}.

    Args:
        curve: Optional `LearningCurve` callback (saves and scores the learning-curve points).
    """
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from benchmark.run.resume import ResumePoint
    from benchmark.run.stopping import Stopped, StopRequests, handlers_now

    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import: Lightning sets INFO when imported
        logging.getLogger(name).setLevel(logging.WARNING)  # device/tip banners; warnings still reach the user
    spec, method, folder = run.spec, run.method, run.folder
    settings = method.trainer_settings(spec.max_steps)
    per_iter = type(method).optimizer_steps_per_iteration
    steps = settings.get("max_steps", -1)
    iterations = steps // per_iter if steps and steps > 0 else None
    ckpt_dir = folder / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    start_step = 0
    if last.is_file():  # validated before Lightning touches it: a clear error, and the file is left as it is
        start_step = int(readable_checkpoint(last, method, "delete it to train this run from scratch")
                         .get("global_step", 0))
    # a one-pass statistic (histmatch) has nothing to share out (and is refused a launch over several processes)
    devices, num_nodes = (spec.devices, spec.num_nodes) if iterations else (1, 1)
    accumulate = spec.accumulate if iterations else 1
    dm = datamodule(spec, method, run.dataset, iterations=iterations, start=start_step // per_iter,
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
    interactive = sys.stdout.isatty() and not run.ctx.quiet
    if interactive:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    elif not run.ctx.quiet:  # a log file or a pipe: plain lines (`benchmark.run.progress`)
        from benchmark.run.progress import plain_training_progress

        callbacks.append(plain_training_progress(f"{spec.method} seed {spec.seed}: training", per_iter))
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
    save_weights(trainer, ckpt_dir / "final.ckpt")
    return dict(start_step=start_step // per_iter, end_step=int(ended["global_step"]) // per_iter, sec=sec,
                total_sec=ended["elapsed"])


def save_weights(trainer, path: Path) -> None:
    """Every rank takes part (Lightning's save is collective); the first writes the file and renames it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        trainer.save_checkpoint(tmp, weights_only=True)
        if trainer.is_global_zero:
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)


def load_weights(method, path: Path) -> None:
    method.load_state_dict(readable_checkpoint(path, method, "delete the run folder and run it again: its recorded "
                                                              "values rest on these weights")["state_dict"])


def readable_checkpoint(path: Path, method, fix: str) -> dict:
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


#: The key under which checkpoints hold the training clock (Lightning's default, the class's qualified name, when the
#: clock was first saved): a resumed run reads its clock back under it, or it would restart `train_sec` from zero.
TRAIN_CLOCK_KEY = "_train_clock.<locals>.TrainClock"


def _train_clock(curve=None):
    """A Lightning callback that measures training time into every checkpoint it is saved with, so a resumed fit
    continues the clock of the checkpoint it resumes from (time lost after the last checkpoint of an
    interrupted segment is not training that the final weights rest on). Learning-curve evaluations excluded."""
    from lightning.pytorch.callbacks import Callback

    class TrainClock(Callback):
        @property
        def state_key(self) -> str:
            return TRAIN_CLOCK_KEY  # the key of every saved checkpoint's clock: fixed, whatever this class is called

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
                    save_weights(trainer, outer.ckpt_dir / f"step{it}.ckpt")
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


def final_weights(run: PreparedRun, donor: Path | None, evaluator) -> dict:
    """Bring `method` to the run's selected weights and return `train.json`.

    Order of preference: the run's own `selected.ckpt` (never trained again); a donor's weights (copied, with
    its train.json: a `--set` sampling variant uses the checkpoint its headline fit selected); otherwise train
    (resuming `last.ckpt`) with the learning curve, write `final.ckpt`, select on validation, write
    `selected.ckpt` and `train.json`.
    """
    spec, method, plan = run.spec, run.method, run.plan
    ckpt_dir, info_path = run.folder / "checkpoints", run.folder / "train.json"
    selected = ckpt_dir / "selected.ckpt"
    if not selected.is_file() and donor is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        copy_file(donor / "checkpoints" / "final.ckpt", ckpt_dir / "final.ckpt")
        copy_file(donor / "checkpoints" / "selected.ckpt", selected)
        info = json.loads((donor / "train.json").read_text())
        atomic_write(info_path, json.dumps(dict(info, fit_from=donor.name)))
    if selected.is_file() and info_path.is_file():
        load_weights(method, selected)
        return json.loads(info_path.read_text())
    info = json.loads(info_path.read_text()) if info_path.is_file() else dict(segments=[], fit_from=None)
    prepare(spec, method, run.dataset, run.cache_dir, run.ctx.progress)
    curve = learning_curve(spec, method, evaluator.curve_point, ckpt_dir)
    info["segments"].append(fit(run, curve))
    if spec.world > 1:
        evaluator.reload()  # the learning-curve records were written by the first rank's process
    chosen = evaluator.curve_records()
    criterion = type(method).selection_criterion()
    step = V.best_checkpoint(chosen, criterion) if chosen else None
    # a curve checkpoint is written by a callback hook, which Lightning runs before the module's own
    # on_train_batch_end (the EMA update of that iteration): load it from disk, exactly what validation scored
    copy_file(ckpt_dir / (f"step{step}.ckpt" if step is not None else "final.ckpt"), selected)
    load_weights(method, selected)
    per_iter_flops = plan.get("flops_per_iteration")
    iters = info["segments"][-1]["end_step"]
    info.update(train_sec=info["segments"][-1]["total_sec"], train_steps=iters, selected_step=step,
                budget=plan.get("budget"), flops_per_iteration=per_iter_flops,
                train_flops=per_iter_flops * iters if per_iter_flops is not None else None,
                images_seen=iters * batch_images(spec, method, run.dataset),
                selection_metric=V.checkpoint_metric(chosen, criterion) if chosen else None)
    if getattr(method, "teacher_info", None):
        info["teacher"] = method.teacher_info
    atomic_write(info_path, json.dumps(info))
    return info


def batch_images(spec: RunSpec, method, dataset) -> int:
    """Images in one training batch: the method's batch size, or the whole training set where that is smaller (the
    loader then serves every training image as each batch; `flops_per_iteration` is measured on such a batch too)."""
    sampled = datamodule(spec, method, dataset).sampled_domains()
    return min(method.train_batch_size, len(dataset.rows(sampled, "train")))
