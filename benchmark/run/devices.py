"""Several devices: which rank a launched process is, where a run evaluates, and its evaluation translated in one
spawned process per device (`translate_sharded`)."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace

import torch

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.run.checks import prepared_run
from benchmark.run.context import PreparedRun
from benchmark.run.evaluate import EVAL_BATCH, Evaluator, translate
from benchmark.run.fit import load_weights


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


def translate_sharded(run: PreparedRun, keys: list[tuple], shards: int) -> dict:
    """Translate the evaluation's `keys` ((split, task, source, knob), `Evaluator.plan`) with the selected
    weights in `shards` spawned processes, one per device (`shard_device`), and return {key: (translations,
    seconds per image)} for this process to score. The batches are the in-process evaluation's (`EVAL_BATCH`
    images, each sampler call seeding its own noise), dealt round-robin over the processes, so the translations are
    the ones a single process makes. Spawned, not forked: a child forked after this process ran OpenMP-parallel CPU
    kernels can hang in its first one, and this process never initialises CUDA (its next ddp_fork fit could not
    fork). A failed process is a RunError; nothing is recorded from a partial translation."""
    import multiprocessing as mp

    if not keys:
        return {}
    spec, ctx, folder = run.spec, run.ctx, run.folder
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


def _translate_shard(spec: RunSpec, ctx, folder, keys: list[tuple], rank: int, world: int, threads: int) -> None:
    """One process of `translate_sharded`: batches rank, rank + world, ... of the evaluation, written to
    `.shards/rank<r>.pt` as {key index: {batch: (translations, seconds)}}."""
    torch.set_num_threads(threads)
    run = prepared_run(spec, ctx, folder)
    load_weights(run.method, folder / "checkpoints" / "selected.ckpt")
    run.method.eval().to(shard_device(spec, rank))
    evaluator = Evaluator(run, [])
    sets = [evaluator.split_set(split, task, source)[0] for split, task, source, *_ in keys]
    items = [(i, b) for i, x in enumerate(sets) for b in range(-(-len(x) // EVAL_BATCH))]
    mine: dict = {}
    for i, b in items[rank::world]:
        _, task, source, knob, overrides = keys[i]
        x = sets[i][b * EVAL_BATCH:(b + 1) * EVAL_BATCH]
        with evaluator.sampling(dict(overrides)):  # the sampling settings the key was planned with
            x_hat, sec = translate(run.method, x, source, evaluator.tasks[task].target, knob)
        mine.setdefault(i, {})[b] = (x_hat, sec * len(x))
    tmp = folder / ".shards" / f".rank{rank}.pt.tmp"
    torch.save(mine, tmp)
    tmp.replace(tmp.with_name(f"rank{rank}.pt"))
