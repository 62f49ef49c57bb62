"""The runner: fit -> save the final weights -> translate the test split over the knob grid -> score -> records.

A `RunSpec` names one fit. Its folder `results/runs/<method>/<dataset>-<preset>/seed<k>-<hash>/` holds
`config.json` (resolved config, seed, split hash, git sha, package versions; written before training),
`checkpoints/last.ckpt` (the resume point during training), `checkpoints/step<k>.ckpt` (the learning-curve
points), `checkpoints/final.ckpt` and `selected.ckpt` (the last weights and the ones chosen on validation, which
every test record uses) and `train.json` (budget, steps, time, the selected step), all written before the first
test evaluation; `records.jsonl` (rewritten atomically after every evaluation: validation records with `split =
"val"`, then the test records), `samples/` (the translated images of a few fixed test scenes,
`benchmark.protocol.samples`) and finally `done` (`benchmark.protocol.records`).

Protocol (`benchmark.protocol.validation`, `benchmark.protocol.budget`): every learned method trains for the preset's
FLOP budget; learning curves, the checkpoint and the headline knob value are chosen on the validation split; the
test split is read once, at the end, with the selected weights.

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
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, find_donor, fit_key
from benchmark.protocol.provenance import git_sha, package_versions
from benchmark.protocol.records import (
    PROTOCOL_VERSION,
    atomic_write,
    clean_stale_temporaries,
    read_records,
    verify_done,
    write_done,
    write_records,
)
from benchmark.run.checks import prepared_run, tf32_matmuls
from benchmark.run.context import PreparedRun, RunContext, RunLock, disk_error
from benchmark.run.devices import evaluation_device, launch_rank, translate_sharded, translation_shards
from benchmark.run.evaluate import Evaluator, point_key, test_points
from benchmark.run.fit import final_weights, fit, learning_curve, prepare
from benchmark.run.rescore import merge_rescored, stale_metrics


def run_one(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """Fit, choose on validation, translate, score and record one spec; returns its records.

    With `ctx.rescore`, a finished run whose test records lack metrics the scorer can now compute is translated
    again from its selected weights and those metrics are added (`benchmark.run.rescore`).
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


def follow(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """A rank after the first of a fit whose processes a launcher started (`--strategy ddp`, e.g. `srun` over
    `--num-nodes`): it takes part in `trainer.fit` and writes nothing. The first rank holds the run folder, writes
    config.json, scores the learning curve, evaluates and writes every record; this rank decides from the same files
    whether that rank will train (not when the run has its selected weights, or reuses a donor's) and otherwise joins
    the fit, resuming from the same `last.ckpt`. Returns no records (the first rank's are the run's)."""
    folder = spec.folder(ctx.results_dir)
    run = prepared_run(spec, ctx, folder)  # with the checks on which the first rank stops
    _check_can_evaluate(folder, read_records(run.records_path), verify_done(folder) is None)
    if (folder / "checkpoints" / "selected.ckpt").is_file() and (folder / "train.json").is_file():
        return []  # trained: the first rank only evaluates
    if _donor(run) is not None:
        return []  # the first rank copies a finished fit's weights (`final_weights`)
    prepare(spec, run.method, run.dataset, run.cache_dir)
    with tf32_matmuls("tf32" in spec.speedups):
        fit(run, learning_curve(spec, run.method, None, folder / "checkpoints"))
    return []


def _run_locked(spec: RunSpec, ctx: RunContext, folder: Path) -> list[dict]:
    """The stages of one run, each a function below; every stage can be interrupted and resumed."""
    state = _read_state(folder, ctx, spec.run_id)
    run = prepared_run(spec, ctx, folder)
    method = run.method
    todo = [p for p in test_points(spec, method, run.dataset) if ("test", None, *p) not in state.have]
    if state.finished and not todo:
        return state.records
    _check_can_evaluate(folder, state.records, state.finished)
    donor = _write_config(run, state)
    evaluator = Evaluator(run, state.records)
    evaluator.train = dict(run.plan)
    evaluator.train = final_weights(run, donor, evaluator)
    method.eval()
    shards = translation_shards(spec, run.config)
    if shards > 1:  # this process scores; it never moves the model to a GPU (`translate_sharded`)
        evaluator.translated = translate_sharded(run, evaluator.sampling_plan(), shards)
        evaluator.choose_sampling()  # the sampling settings the rest is translated with
        evaluator.translated.update(translate_sharded(run, evaluator.plan(todo), shards))
    else:
        method.to(evaluation_device(spec))
    evaluate_points(run, evaluator, todo, state)
    write_done(folder, state.records)
    return state.records


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


def _check_can_evaluate(folder: Path, records: list[dict], finished: bool) -> None:
    tests = any(r.get("split", "test") == "test" for r in records)
    if records and not (folder / "checkpoints" / "selected.ckpt").is_file() and (tests or finished):
        raise RunError(f"cannot evaluate {folder} again: checkpoints/selected.ckpt is missing, and training again "
                       "would not reproduce the recorded values; delete the run folder and run it again instead")


def _write_config(run: PreparedRun, state: _RunState) -> Path | None:
    """Write config.json (before any training; a re-scored run keeps its fit's) and return the donor run whose
    weights this run reuses, if any (`config.find_donor`)."""
    spec, folder, dataset, config, plan, method = run.spec, run.folder, run.dataset, run.config, run.plan, run.method
    fingerprint = dataset.fingerprint
    key = fit_key(asdict(spec), config, dataset.domains)
    donor = _donor(run)
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


def _donor(run: PreparedRun) -> Path | None:
    """The finished run whose weights this run reuses (`config.find_donor`), unless it has trained weights of its own
    (a selected checkpoint or a train.json)."""
    folder, dataset = run.folder, run.dataset
    if (folder / "checkpoints" / "selected.ckpt").is_file() or (folder / "train.json").is_file():
        return None
    return find_donor(folder, fit_key(asdict(run.spec), run.config, dataset.domains), dataset.domains,
                      dataset.fingerprint, dataset.content_fingerprint)


def _progress(ctx: RunContext, evaluator: Evaluator, label: str, total: int) -> None:
    """A progress bar (plain lines off a terminal) over the validation points a choice still has to score; values
    beyond the grid's edge that validation asks for add to its total as they come."""
    if ctx.progress is None or total == 0:
        evaluator.advance = lambda: None
        return
    bar = ctx.progress.add_task(label, total=total)
    done = [0]

    def advance() -> None:
        done[0] += 1
        if done[0] > total:
            ctx.progress.update(bar, total=done[0])
        ctx.progress.advance(bar)

    evaluator.advance = advance


def evaluate_points(run: PreparedRun, evaluator: Evaluator, todo: list, state: _RunState):
    """Choose the knob on validation, then score the missing test points (or re-score stale ones), each written
    as soon as it is made."""
    spec, ctx, folder = run.spec, run.ctx, run.folder
    _progress(ctx, evaluator, f"{spec.method} seed {spec.seed}: sampling choice (validation)",
              len(evaluator.sampling_plan()))
    evaluator.choose_sampling()
    _progress(ctx, evaluator, f"{spec.method} seed {spec.seed}: knob choice (validation)", len(evaluator.plan([])))
    choice = evaluator.choose_knobs()
    evaluator.advance = lambda: None
    records = state.records
    have = {point_key(r) for r in records}
    for task_name, knob in choice.items():  # a value beyond the grid that validation chose is tested as well
        todo += [(task_name, s, knob) for s in evaluator.tasks[task_name].sources
                 if ("test", None, task_name, s, knob) not in have and (task_name, s, knob) not in todo]
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
