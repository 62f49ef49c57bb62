"""Scale: one fit over several devices (Lightning's DDP with forked processes, gloo on the CPU; the method's batch
split over the ranks, the first rank alone scoring and writing; resumed after a kill; refused when the batch does not
split), gradient accumulation (the same global batch in micro-batches: one optimizer step, EMA update, scheduler step
and learning-curve point per global batch, resumable), and the opt-in speed-ups (channels-last, torch.compile, TF32)
where a CPU can test them."""
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from drills import signalled_in_training

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.protocol.records import read_records, verify_done
from benchmark.run.context import RunContext
from benchmark.run.stages import run_one
from benchmark.scoring.scorer import Scorer
from datasets.datamodule import BatchStream

ROOT = Path(__file__).resolve().parents[3]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")
KEYS = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist")


def test_each_rank_serves_its_share_of_every_global_batch():
    whole = list(BatchStream(40, 8, True, seed=3, iterations=7))
    shares = [list(BatchStream(40, 8, True, seed=3, iterations=7, rank=r, world=2)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        assert sorted(shares[0][k] + shares[1][k]) == sorted(batch) and len(shares[0][k]) == 4
    with pytest.raises(ValueError, match="cannot be split evenly"):
        BatchStream(40, 6, True, seed=0, world=4)


def test_micro_batches_partition_every_ranks_share_of_every_global_batch():
    whole = list(BatchStream(40, 8, True, seed=3, iterations=7))
    parts = {r: list(BatchStream(40, 8, True, seed=3, iterations=7, rank=r, world=2, micro=2)) for r in (0, 1)}
    assert all(len(p) == 14 == len(BatchStream(40, 8, True, seed=3, iterations=7, micro=2)) for p in parts.values())
    for k, batch in enumerate(whole):  # iteration k: micro-batches 2k and 2k+1 of each rank, 2 items each
        got = [i for r in (0, 1) for m in parts[r][2 * k:2 * k + 2] for i in m]
        assert sorted(got) == sorted(batch) and {len(m) for r in (0, 1) for m in parts[r][2 * k:2 * k + 2]} == {2}
    resumed = list(BatchStream(40, 8, True, seed=3, iterations=7, start=4, micro=2))
    assert resumed == list(BatchStream(40, 8, True, seed=3, iterations=7, micro=2))[8:]  # start counts iterations
    with pytest.raises(ValueError, match="2 devices x 3 micro-batches"):
        BatchStream(40, 8, True, seed=0, world=2, micro=3)


class _Stop(Exception):
    """Raised by a test inside the fit to cut it short."""


def test_accumulation_steps_once_per_global_batch_and_resumes_to_the_uninterrupted_records(tmp_path, micro,
                                                                                          monkeypatch):
    """MedShift (an EMA, a warm-up/cosine schedule) at a batch of 8 in 2 micro-batches of 4 for 30 iterations:
    Lightning calls training_step 60 times and steps the optimizer 30 times; the EMA is updated, the scheduler
    stepped and the learning curve scored once per optimizer step, never per micro-batch. A fit cut after the resume
    point (iteration 25, saved before the first micro-batch) resumes to the uninterrupted fit's records."""
    import torch

    import benchmark.run.resume as R
    from benchmark.protocol.validation import curve_steps
    from methods.medshift import MedShift

    spec = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent), max_steps=30, accumulate=2,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2]), ("batch_size", 8)))
    calls = []
    real_step = MedShift.training_step

    def counted(self, batch, batch_idx):
        calls.append((len(batch["image"]), self.trainer.global_step))
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(MedShift, "training_step", counted)
    ctx = RunContext(tmp_path / "whole", Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True)
    whole = run_one(spec, ctx)
    assert len(calls) == 60 and {n for n, _ in calls} == {4}
    assert [g for _, g in calls] == [k // 2 for k in range(60)]  # the step comes after every second micro-batch
    ckpt = spec.folder(ctx.results_dir) / "checkpoints"
    last = torch.load(ckpt / "last.ckpt", weights_only=False)
    assert last["global_step"] == 25 and int(last["state_dict"]["ema.num_updates"]) == 25
    assert last["lr_schedulers"][0]["last_epoch"] == 25
    assert last["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 50
    final = torch.load(ckpt / "final.ckpt", weights_only=True)
    assert final["global_step"] == 30 and int(final["state_dict"]["ema.num_updates"]) == 30
    curve = Counter(r["step"] for r in whole if r["split"] == "val" and isinstance(r["step"], int))
    assert set(curve) == set(curve_steps(30)) and len(set(curve.values())) == 1  # each point scored once

    real_start = R.ResumePoint.on_train_batch_start

    def cut(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 27 and batch_idx == 55:  # mid-way through accumulating iteration 27
            raise _Stop
        return real_start(self, trainer, pl_module, batch, batch_idx)

    monkeypatch.setattr(R.ResumePoint, "on_train_batch_start", cut)
    ctx = RunContext(tmp_path / "cut", Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True)
    with pytest.raises(_Stop):
        run_one(spec, ctx)
    monkeypatch.setattr(R.ResumePoint, "on_train_batch_start", real_start)
    resumed = run_one(spec, ctx)
    keys = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist")
    a = {(r["split"], r["step"], r["source"], r["knob_value"]): [r[k] for k in keys] for r in whole}
    b = {(r["split"], r["step"], r["source"], r["knob_value"]): [r[k] for k in keys] for r in resumed}
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-4), k
    assert {tuple(r["resumed_from_steps"]) for r in resumed if r["split"] == "test"} == {(25,)}


def test_accumulated_fit_records_what_the_whole_batch_records(tmp_path, micro):
    """The regression U-Net (no noise, per-image norms, a mean loss) at its batch of 16 in 4 micro-batches: Lightning
    scales each micro-batch's loss by 1/4, so the summed gradient is the whole batch's and every record equals the
    plain fit's to float noise."""
    out = {}
    for name, accumulate in (("plain", 1), ("accumulated", 4)):
        spec = RunSpec("unet-regression", preset="micro", data_root=str(micro.root.parent.parent), max_steps=16,
                       accumulate=accumulate)
        run_one(spec, RunContext(tmp_path / name, Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True))
        out[name] = _metrics(tmp_path / name)
    (_, a), (folder, b) = out["plain"], out["accumulated"]
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-3), k
    info = json.loads((folder / "train.json").read_text())
    assert info["train_steps"] == 16 and info["images_seen"] == 16 * 16  # the same budget


def _cli(results, micro, devices, steps=16, accumulate=1):
    return [sys.executable, "-m", "benchmark", "run", "--method", "unet-regression", "--preset", "micro", "--quiet",
            "--results-dir", str(results), "--data-root", str(micro.root.parent.parent), "--max-steps", str(steps),
            "--no-frd", "--devices", str(devices), "--accumulate", str(accumulate)]


def _metrics(results):
    folder = next(results.glob("runs/*/*/*"))
    keys = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist")
    return folder, {(r["split"], r["step"], r["source"]): tuple(r[k] for k in keys)
                    for r in read_records(folder / "records.jsonl")}


def test_a_fit_on_two_processes_records_what_one_process_records(tmp_path, micro):
    """The regression U-Net (no noise, no dropout, per-image norms) on 2 gloo ranks, half the batch each (and then
    in 2 micro-batches each): the same global batches and averaged gradients, so every validation and test record
    equals the one-process run's to float noise; the learning curve (scored by the first rank) and the run's files
    are written once."""
    runs = {(1, 1): tmp_path / "one", (2, 1): tmp_path / "two", (2, 2): tmp_path / "two-accumulated"}
    for (devices, accumulate), results in runs.items():
        out = subprocess.run(_cli(results, micro, devices, accumulate=accumulate), cwd=ROOT, capture_output=True,
                             text=True, env=ONE_THREAD)
        assert out.returncode == 0, out.stderr[-2000:]
    _, a = _metrics(runs[1, 1])
    assert len([k for k in a if k[0] == "val"]) == 8 * 2 + 2  # curve (both sources) + knob choice
    for (devices, accumulate), results in list(runs.items())[1:]:
        folder, b = _metrics(results)
        assert a.keys() == b.keys()
        for k in a:
            assert b[k] == pytest.approx(a[k], abs=2e-3), (devices, accumulate, k)
        info = json.loads((folder / "train.json").read_text())
        assert info["train_steps"] == 16 and info["images_seen"] == 16 * 16 and info["selection_metric"] == "nps_dist"
        spec = json.loads((folder / "config.json").read_text())["spec"]
        assert verify_done(folder) is None and (spec["devices"], spec["accumulate"]) == (devices, accumulate)
        assert not list(folder.glob("**/.*tmp-*"))  # no rank left a temporary behind


def _srun_env(rank: int, port: int) -> dict:
    """The variables `srun --nodes 2 --ntasks-per-node 1` gives task `rank` (Lightning's SLURMEnvironment reads them
    and checks them against --num-nodes and --devices); the first node's address is this machine's."""
    return dict(ONE_THREAD, SLURM_JOB_ID="4242", SLURM_JOB_NAME="xraybench", SLURM_NTASKS="2", SLURM_NNODES="2",
                SLURM_NTASKS_PER_NODE="1", SLURM_PROCID=str(rank), SLURM_LOCALID="0", SLURM_NODEID=str(rank),
                SLURM_NODELIST="localhost", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _launch(cmd, port):
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_srun_env(rank, port), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    return [out for out, _ in outs]


def test_a_fit_over_two_nodes_started_by_srun_records_what_one_process_records(tmp_path, micro):
    """`--num-nodes 2 --strategy ddp` in two processes started as srun starts them, each running the whole command:
    the second rank joins the fit and writes and prints nothing, the first writes the run, and every record equals
    the one-process run's. Started again on the finished run, both processes return without a fit to wait for."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    one, two = tmp_path / "one", tmp_path / "two-nodes"
    out = subprocess.run(_cli(one, micro, 1), cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    cmd = _cli(two, micro, 1) + ["--num-nodes", "2"]
    first, second = _launch(cmd, port)
    assert "test records in" in first and second == ""
    (_, a), (folder, b) = _metrics(one), _metrics(two)
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=2e-3), k
    spec = json.loads((folder / "config.json").read_text())["spec"]
    assert (spec["num_nodes"], spec["strategy"], spec["devices"]) == (2, "ddp", 1) and verify_done(folder) is None
    assert json.loads((folder / "train.json").read_text())["train_steps"] == 16
    assert not list(folder.glob("**/.*tmp-*")) and not (folder / ".lock").exists()
    first, second = _launch(cmd, port)  # finished: nothing to train (a rank waiting for a fit would time out)
    assert "test records in" in first and second == ""


def test_a_killed_two_process_fit_resumes_from_its_checkpoint(tmp_path, micro):
    cmd = _cli(tmp_path, micro, 2, steps=60)
    # the ranks are its children: killed as a group, from inside iteration 30 (after the resume point of 25)
    killed = signalled_in_training(cmd, "SIGKILL", env=ONE_THREAD, method=cmd[cmd.index("--method") + 1], group=True)
    assert killed.returncode == -signal.SIGKILL
    folder = next(tmp_path.glob("runs/*/*/*"))
    assert not (folder / "checkpoints" / "final.ckpt").exists()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads((folder / "train.json").read_text())
    assert info["segments"][-1]["start_step"] == 25 and info["train_steps"] == 60
    tests = [r for r in read_records(folder / "records.jsonl") if r["split"] == "test"]
    assert {tuple(r["resumed_from_steps"]) for r in tests} == {(25,)} and verify_done(folder) is None


def test_a_batch_that_does_not_split_is_refused_before_any_work(tmp_path, micro):
    spec = RunSpec("unet-regression", preset="micro", data_root=str(micro.root.parent.parent), max_steps=4,
                   devices=3, strategy="ddp_fork")
    ctx = RunContext(tmp_path, Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True)
    with pytest.raises(RunError, match="does not split over 3 devices"):
        run_one(spec, ctx)
    assert not list(tmp_path.glob("runs/*/*/*/checkpoints"))
    with pytest.raises(RunError, match="start one process per device with srun or torchrun"):
        run_one(RunSpec("unet-regression", preset="micro", devices=2, strategy="ddp"), ctx)  # no launcher here
    with pytest.raises(RunError, match="2 devices x 3 micro-batches"):
        run_one(RunSpec("medshift", preset="micro", devices=2, strategy="ddp_fork", accumulate=3), ctx)
    with pytest.raises(RunError, match="cyclegan steps its optimisers itself"):
        run_one(RunSpec("cyclegan", preset="micro", accumulate=2), ctx)
    assert not list(tmp_path.glob("runs/*/*/*/checkpoints"))


def test_evaluation_runs_on_the_accelerator_the_run_trained_on(monkeypatch):
    """Lightning moves the model back to the CPU when a fit ends; the runner moves it to the run's accelerator, and a
    sharded evaluation's process r to the r-th GPU."""
    import torch

    from benchmark.run.devices import evaluation_device, shard_device, translation_shards

    assert evaluation_device(RunSpec("medshift", accelerator="gpu")).type in ("cpu", "mps")  # no CUDA here
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = RunSpec("medshift", accelerator="gpu", devices=8, strategy="ddp_fork")
    assert evaluation_device(gpu) == torch.device("cuda", 0) and shard_device(gpu, 5) == torch.device("cuda", 5)
    assert evaluation_device(RunSpec("medshift", accelerator="cpu")) == torch.device("cpu")
    assert translation_shards(gpu, {"max_steps": 10}) == 8 and translation_shards(gpu, {}) == 1  # histmatch: none
    nodes = RunSpec("medshift", accelerator="gpu", devices=4, num_nodes=2, strategy="ddp")
    assert translation_shards(nodes, {"max_steps": 10}) == 4  # the first node's devices


@pytest.mark.parametrize("method, overrides, choose", [
    ("unet-regression", (), False),
    ("sdedit", (("base_channels", 8), ("channel_mults", [1, 2]), ("num_inference_steps", 10)), False),  # noise/call
    ("sdedit", (("base_channels", 8), ("channel_mults", [1, 2]), ("num_inference_steps", 10)), True),  # + sampling
])
def test_a_sharded_evaluation_records_what_one_process_records(tmp_path, micro, monkeypatch, method, overrides,
                                                               choose):
    """The evaluation of a fit over several devices, translated in 3 spawned processes (the batches dealt unevenly)
    and scored here, records what an in-process evaluation records, and this process translates nothing of it; with a
    sampling choice too (its candidates translated in the processes, each with its settings)."""
    import benchmark.protocol.validation as V
    import benchmark.run.evaluate as E
    import benchmark.run.stages as R
    from methods.sdedit import SDEdit

    if choose:
        monkeypatch.setattr(V, "NO_SAMPLING_CHOICE", ())
        monkeypatch.setattr(SDEdit, "sampling_grid", {"num_inference_steps": (10, 20)})

    calls, scoring = [], []
    real_translate, real_evaluate = E.translate, R.evaluate_points

    def evaluate(*a, **k):
        scoring.append(True)
        return real_evaluate(*a, **k)

    monkeypatch.setattr(E, "translate", lambda *a, **k: calls.append(bool(scoring)) or real_translate(*a, **k))
    monkeypatch.setattr(R, "evaluate_points", evaluate)
    out = {}
    for name, shards in (("here", 1), ("sharded", 3)):
        monkeypatch.setattr(R, "translation_shards", lambda spec, config, shards=shards: shards)
        calls.clear()
        scoring.clear()
        spec = RunSpec(method, preset="micro", data_root=str(micro.root.parent.parent), max_steps=8,
                       overrides=overrides)
        records = run_one(spec, RunContext(tmp_path / name, Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True))
        folder = spec.folder(tmp_path / name)
        out[name] = {(r["split"], r["step"], r["source"], r["knob_value"]): [r[k] for k in KEYS] for r in records}
        assert verify_done(folder) is None and len(records) == len(out[name]) and not (folder / ".shards").exists()
        assert any(calls) == (shards == 1)  # sharded: every evaluation translation came from the processes
    assert out["here"].keys() == out["sharded"].keys()
    for k in out["here"]:
        assert out["sharded"][k] == pytest.approx(out["here"][k], abs=1e-5), k
    assert choose == any(str(k[1]).startswith(V.SAMPLING_STEP) for k in out["here"])


def test_speedups_change_no_record_and_tf32_is_set_only_during_the_run(tmp_path, micro, monkeypatch):
    """channels-last and torch.compile (graph capture through the "eager" backend here: inductor's code generation
    is what a GPU run adds) give the records of the plain fit to float noise, and checkpoints load into a plain
    model; `tf32` switches TF32 on for the run (a no-op on a CPU) and restores the setting after."""
    import torch

    import benchmark.run.checks as C
    import benchmark.run.fit as R

    monkeypatch.setattr(C, "COMPILE_BACKEND", "eager")
    seen = []
    real_fit = R.fit

    def spy(*a, **k):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real_fit(*a, **k)

    monkeypatch.setattr(R, "fit", spy)
    before = torch.backends.cuda.matmul.allow_tf32
    from torch._dynamo.utils import counters

    counters.clear()
    out = {}
    for name, fast in (("plain", ()), ("fast", ("channels_last", "compile", "tf32"))):
        spec = RunSpec("unet-regression", preset="micro", data_root=str(micro.root.parent.parent), max_steps=8,
                       speedups=fast)
        ctx = RunContext(tmp_path / name, Scorer(cache_dir=tmp_path / name / "c", frd=False), quiet=True)
        run_one(spec, ctx)
        out[name] = _metrics(tmp_path / name)[1]
    assert seen == [before, True] and torch.backends.cuda.matmul.allow_tf32 == before
    assert counters["stats"]["unique_graphs"] > 0  # the networks did go through torch.compile
    assert out["plain"].keys() == out["fast"].keys()
    for k in out["plain"]:
        assert out["fast"][k] == pytest.approx(out["plain"][k], abs=1e-3), k
    fast = next((tmp_path / "fast").glob("runs/*/*/*"))
    state = torch.load(fast / "checkpoints" / "selected.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)  # compiled in place: the plain model's keys


def test_perf_times_training_iterations_at_two_precisions(micro, capsys, monkeypatch):
    """`perf --train` times each learned method's training iterations at fp32 and bf16 autocast, side by side."""
    from benchmark.cli.main import main

    monkeypatch.setenv("XRAYBENCH_DATA", str(micro.root.parent.parent))
    assert main(["perf", "--train", "--methods", "unet-regression", "identity", "--preset", "micro",
                 "--iterations", "2", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("unet-regression")  # identity trains nothing: no line
    assert "32-true" in lines[1] and "bf16-mixed" in lines[1] and "(1.00x)" in lines[1]


def test_a_launch_over_several_processes_runs_one_fit(tmp_path, capsys):
    from benchmark.cli.main import main

    assert main(["run", "--method", "medshift", "--seeds", "0", "1", "--num-nodes", "2", "--results-dir",
                 str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "runs one fit per launch, and this request makes 2" in err and "\n" not in err
    assert not list(tmp_path.glob("runs/*"))


def test_batches_are_page_locked_for_a_cuda_fit_only(micro):
    """The loader pins its batches when the Trainer trains on CUDA devices (checked without one: the flag, not the
    copy), and not on the CPU."""
    from types import SimpleNamespace

    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator

    from datasets.datamodule import TranslationDataModule

    dm = TranslationDataModule(micro, micro.domains, batch_size=4, iterations=2)
    assert dm.train_dataloader().pin_memory is False  # no trainer
    for accelerator, pinned in ((CPUAccelerator(), False), (CUDAAccelerator(), True)):
        dm.trainer = SimpleNamespace(accelerator=accelerator, global_rank=0, world_size=1)
        assert dm.train_dataloader().pin_memory is pinned
