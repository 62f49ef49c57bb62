"""Sweeps: methods x seeds x tasks x `--vary` settings as independent jobs, run here or on SLURM through submitit.

A sweep is the list of fits `config.plan` makes of the request (tasks that share a method's training domains share
one fit), one job each, whose whole work is `run.run_one` on its `RunSpec`. Hash-named run folders make a sweep
idempotent: a finished run is skipped before anything is submitted, an interrupted one resumes from its
`checkpoints/last.ckpt` (and an interrupted evaluation from `selected.ckpt`), so resubmitting the same sweep after a
crash, a kill or a preemption finishes exactly what is missing. `collect` merges the records afterwards, wherever
the jobs ran, as long as they wrote under the same `--results-dir`.

Executors (`--executor`):
* `local` (default): the jobs one after another in this process, or `--jobs N` at a time in N processes, each with
  (cores / N) threads;
* `slurm`: submitit's `AutoExecutor`, one job per fit submitted as one job array (`slurm_array_parallelism` caps how
  many run at once), parameters from flags or a small YAML (`--slurm-config`: any `AutoExecutor` parameter, e.g.
  `slurm_partition`, `timeout_min`, `gpus_per_node`, `cpus_per_task`, `mem_gb`, `slurm_account`); a preempted or
  timed-out job is requeued by submitit (`FitJob.checkpoint`) and resumes from its last checkpoint;
* `submitit-local`: submitit's `LocalExecutor` (real subprocesses and pickling, the same job objects, no cluster),
  which is how the submitit path is tested.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, parse_set, plan
from benchmark.protocol.records import verify_done

EXECUTORS = ("local", "slurm", "submitit-local")


@dataclass(frozen=True)
class FitJob:
    """One fit as a picklable callable (a submitit job, or a local worker's task): `run_one(spec)`.

    Attributes:
        spec: The fit.
        results_dir: Where its run folder lives (shared by every job of the sweep).
        frd: Score FRD.
        weights_dir: Inception/AlexNet weights, if any.
        threads: torch threads in the job's process (None: torch's default, e.g. a SLURM job's allocation).
        archive: After the fit, archive every finished run of `results_dir` here (`archive_finished`), so that the
            records survive the loss of the machine that holds the raw runs.
    """

    spec: RunSpec
    results_dir: str
    frd: bool = True
    weights_dir: str | None = None
    threads: int | None = None
    archive: str | None = None

    def __call__(self) -> dict:
        import torch

        from benchmark.run.context import RunContext
        from benchmark.run.stages import run_one
        from benchmark.scoring.scorer import Scorer

        if self.threads:
            torch.set_num_threads(self.threads)
        results = Path(self.results_dir)
        ctx = RunContext(results, Scorer(weights_dir=self.weights_dir, cache_dir=results / "cache", frd=self.frd),
                         quiet=True)
        records = run_one(self.spec, ctx)
        if self.archive:
            archive_finished(results, Path(self.archive))
        return dict(run=str(self.spec.folder(results)), records=len(records))

    def checkpoint(self, *args, **kwargs):
        """submitit calls this when the job is preempted or times out: requeue the same job; the run resumes from
        the resume point its training saved last (`benchmark.run.resume`), so nothing is redone but the iterations
        since then."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def archive_finished(results_dir: Path, out: Path) -> list[Path]:
    """`reporting.archive.archive_runs(results_dir, out)` under an exclusive lock (`<results_dir>/cache/archive.lock`),
    so that jobs of one sweep that finish together do not copy the same samples at once; returns the archived runs."""
    import fcntl

    from benchmark.reporting.archive import archive_runs

    (Path(results_dir) / "cache").mkdir(parents=True, exist_ok=True)
    with open(Path(results_dir) / "cache" / "archive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return archive_runs(results_dir, out)


def parse_vary(items: list[str]) -> list[tuple[tuple[str, object], ...]]:
    """`--vary KEY=V1,V2` (repeatable) -> the cartesian product of the settings, as override tuples; the value
    `default` leaves the setting at its configured value (the headline fit: `--vary guidance=default,1,3`); no
    `--vary` gives one variant without overrides."""
    axes = []
    for item in items or []:
        if "=" not in item:
            raise RunError(f"--vary {item!r}: expected KEY=V1,V2,...")
        key, values = item.split("=", 1)
        axes.append([() if v.strip() == "default" else parse_set([f"{key}={v.strip()}"]) for v in values.split(",")
                     if v.strip()])
        if not axes[-1]:
            raise RunError(f"--vary {item!r}: no values")
    return [sum(combo, ()) for combo in itertools.product(*axes)] if axes else [()]


def expand(methods: list[str], seeds: list[int], tasks: list[str], domains: tuple[str, ...], vary: list[str] = (),
           overrides: tuple = (), **plan_kwargs) -> list[RunSpec]:
    """Every fit of the sweep: `config.plan` for each `--vary` variant, one spec per run folder. A varied setting
    applies to the methods that have it (`--method all --vary guidance=1,3` varies MedShift and runs the others
    once); every spec's config is resolved here, so a bad value stops the sweep before anything runs."""
    from benchmark.protocol.config import method_defaults, resolve_config
    from methods import METHODS, get_method

    specs: dict[str, RunSpec] = {}
    names = list(METHODS) if methods == ["all"] else methods
    plan(names, [], tasks, domains, overrides=tuple(overrides), **plan_kwargs)  # a --set key no method has: refused
    for name in names:
        known = method_defaults(get_method(name))
        for variant in parse_vary(list(vary)):
            mine = tuple((k, v) for k, v in tuple(overrides) + tuple(variant) if k in known)
            for spec in plan([name], seeds, tasks, domains, overrides=mine, **plan_kwargs):
                resolve_config(spec)
                specs.setdefault(f"{spec.method}/{spec.seed}-{spec.run_id}", spec)
    return list(specs.values())


def waves(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """The fits in the order they can run: a fit that differs from another fit of the sweep only in the method's
    `sampling_settings` (a `--vary guidance=...` variant) re-uses that fit's weights (`config.find_donor`), so it
    runs in a second wave, after its donor has trained; everything else runs in the first."""
    from dataclasses import replace

    from methods import get_method

    wanted, first, second = set(specs), [], []
    for spec in specs:
        sampling = get_method(spec.method).sampling_settings
        base = replace(spec, overrides=tuple(o for o in spec.overrides if o[0] not in sampling))
        (second if base != spec and base in wanted else first).append(spec)
    return [w for w in (first, second) if w]


def status(spec: RunSpec, results_dir: Path) -> str:
    """"done" (its `done` vouches for its records), "interrupted" (its folder exists) or "new"."""
    folder = spec.folder(results_dir)
    if (folder / "done").is_file() and verify_done(folder) is None:
        return "done"
    return "interrupted" if folder.is_dir() else "new"


def run_local(jobs: list[FitJob], parallel: int = 1, progress=print) -> list[dict]:
    """Run `jobs` here: in this process one after another, or `parallel` at a time in spawned processes. A failed
    job is reported and the others go on; returns one {run, records | error} per job."""
    if parallel <= 1:
        out = []
        for job in jobs:
            out.append(_attempt(job))
            progress(_line(job, out[-1]))
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: dict[int, dict] = {}
    with ProcessPoolExecutor(parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_attempt, job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            out[i] = future.result()
            progress(_line(jobs[i], out[i]))
    return [out[i] for i in range(len(jobs))]


def _attempt(job: FitJob) -> dict:
    try:
        return job()
    except Exception as exc:  # noqa: BLE001 - one failed fit must not stop the sweep; it is reported
        return dict(run=str(job.spec.folder(Path(job.results_dir))), error=f"{type(exc).__name__}: {exc}")


def _line(job: FitJob, result: dict) -> str:
    what = f"{job.spec.method} seed {job.spec.seed} {'+'.join(job.spec.tasks)}"
    if "error" in result:
        return f"failed   {what}: {result['error']}"
    return f"finished {what}: {result['records']} records in {result['run']}"


def launch_parameters(specs: list[RunSpec], kind: str, parameters: dict) -> dict:
    """`parameters` with what the fits' devices need, where the flags or YAML did not say: a fit over several nodes
    (`--strategy ddp`) is one SLURM job of `num_nodes` nodes x `devices` tasks, srun starting every task (submitit's
    `nodes` and `tasks_per_node`); a GPU fit asks for its devices per node (`gpus_per_node`). A fit whose processes a
    launcher starts cannot run under the local executors, which start one process per job."""
    spec = specs[0]  # one sweep: the same devices for every fit
    launched = [s for s in specs if s.launched_outside and s.world > 1]
    if launched and kind != "slurm":
        raise RunError(f"--strategy ddp over {spec.world} processes needs a launcher (srun): use --executor slurm, or "
                       "--strategy ddp_fork for several devices of one machine")
    out = dict(parameters)
    if launched:
        out.setdefault("nodes", spec.num_nodes)
        out.setdefault("tasks_per_node", spec.devices)
    if spec.accelerator == "gpu":
        out.setdefault("gpus_per_node", spec.devices)
    return out


def submitit_executor(kind: str, log_dir: Path, parameters: dict):
    """submitit's executor for `kind` ("slurm" or "submitit-local") with `parameters` (AutoExecutor's names)."""
    try:
        import submitit
    except ImportError as exc:  # a declared dependency; a stripped-down install may lack it
        raise RunError("the slurm and submitit-local executors need submitit: pip install submitit") from exc
    if kind == "slurm":
        executor = submitit.AutoExecutor(folder=log_dir, cluster="slurm")
    else:
        executor = submitit.AutoExecutor(folder=log_dir, cluster="local")
    if parameters:
        executor.update_parameters(**parameters)
    return executor


def slurm_parameters(config: Path | None, **flags) -> dict:
    """AutoExecutor parameters: the YAML file's, then the flags that were given (None = not given)."""
    params: dict = {}
    if config is not None:
        import yaml

        try:
            loaded = yaml.safe_load(Path(config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"--slurm-config {config}: {exc}") from None
        if not isinstance(loaded, dict):
            raise RunError(f"--slurm-config {config}: expected a mapping of submitit parameters")
        params.update(loaded)
    params.update({k: v for k, v in flags.items() if v is not None})
    return params


def submit(jobs: list[FitJob], kind: str, log_dir: Path, parameters: dict, wait: bool = True, progress=print,
           after: list | None = None):
    """Submit `jobs` as one array through submitit; with `wait`, wait for them and return their results.

    Args:
        after: Jobs (submitit handles) that must end first; on SLURM a dependency, so `wait=False` keeps the order.
    """
    if after and kind == "slurm":
        ids = ":".join(str(h.job_id) for h in after)
        extra = dict(parameters.get("slurm_additional_parameters") or {}, dependency=f"afterany:{ids}")
        parameters = dict(parameters, slurm_additional_parameters=extra)
    elif after:
        for handle in after:
            handle.wait()
    executor = submitit_executor(kind, log_dir, parameters)
    submitted = executor.submit_array(jobs)
    for job, handle in zip(jobs, submitted, strict=True):
        progress(f"submitted {job.spec.method} seed {job.spec.seed} {'+'.join(job.spec.tasks)}: job {handle.job_id}")
    if not wait:
        return submitted
    out = []
    for job, handle in zip(jobs, submitted, strict=True):
        try:
            out.append(handle.result())
        except Exception as exc:  # noqa: BLE001 - submitit re-raises the job's failure; report and go on
            out.append(dict(run=str(job.spec.folder(Path(job.results_dir))), error=f"{type(exc).__name__}: {exc}"))
        progress(_line(job, out[-1]))
    return out


def default_threads(parallel: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, parallel))
