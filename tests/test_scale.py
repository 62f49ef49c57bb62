"""Scale: one fit over several devices (Lightning's DDP with forked processes, gloo on the CPU; the method's batch
split over the ranks, the first rank alone scoring and writing; resumed after a kill; refused when the batch does not
split), and the opt-in speed-ups (channels-last, torch.compile, TF32) where a CPU can test them."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.config import RunSpec
from benchmark.records import RunError, read_records, verify_done
from benchmark.run import RunContext, run_one
from benchmark.scorer import Scorer
from datasets.datamodule import BatchStream

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")


def test_each_rank_serves_its_share_of_every_global_batch():
    whole = list(BatchStream(40, 8, True, seed=3, iterations=7))
    shares = [list(BatchStream(40, 8, True, seed=3, iterations=7, rank=r, world=2)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        assert sorted(shares[0][k] + shares[1][k]) == sorted(batch) and len(shares[0][k]) == 4
    with pytest.raises(ValueError, match="cannot be split evenly"):
        BatchStream(40, 6, True, seed=0, world=4)


def _cli(results, micro, devices, steps=16):
    return [sys.executable, "-m", "benchmark", "run", "--method", "unet-regression", "--preset", "micro", "--quiet",
            "--results-dir", str(results), "--data-root", str(micro.root.parent.parent), "--max-steps", str(steps),
            "--no-frd", "--devices", str(devices)]


def _metrics(results):
    folder = next(results.glob("runs/*/*/*"))
    keys = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist")
    return folder, {(r["split"], r["step"], r["source"]): tuple(r[k] for k in keys)
                    for r in read_records(folder / "records.jsonl")}


def test_a_fit_on_two_processes_records_what_one_process_records(tmp_path, micro):
    """The regression U-Net (no noise, no dropout, per-image norms) on 2 gloo ranks, half the batch each: the same
    global batches and averaged gradients, so every validation and test record equals the one-process run's to float
    noise; the learning curve (scored by the first rank) and the run's files are written once."""
    one, two = tmp_path / "one", tmp_path / "two"
    for results, devices in ((one, 1), (two, 2)):
        out = subprocess.run(_cli(results, micro, devices), cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
        assert out.returncode == 0, out.stderr[-2000:]
    (_, a), (folder, b) = _metrics(one), _metrics(two)
    assert a.keys() == b.keys() and len([k for k in a if k[0] == "val"]) == 8 + 2  # curve + knob choice
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=2e-3), k
    info = json.loads((folder / "train.json").read_text())
    assert info["train_steps"] == 16 and info["images_seen"] == 16 * 16 and info["selection_metric"] == "ssim_gt"
    assert verify_done(folder) is None and json.loads((folder / "config.json").read_text())["spec"]["devices"] == 2
    assert not list(folder.glob("**/.*tmp-*"))  # no rank left a temporary behind


def test_a_killed_two_process_fit_resumes_from_its_checkpoint(tmp_path, micro):
    cmd = _cli(tmp_path, micro, 2, steps=60)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ONE_THREAD,
                            start_new_session=True)  # the ranks are its children: kill the whole group
    t0 = time.time()
    resume_point = "runs/*/*/*/checkpoints/last.ckpt"
    while proc.poll() is None and time.time() - t0 < 300 and not list(tmp_path.glob(resume_point)):
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
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
    with pytest.raises(RunError, match="--strategy ddp_fork"):
        run_one(RunSpec("unet-regression", preset="micro", devices=2, strategy="ddp"), ctx)


def test_speedups_change_no_record_and_tf32_is_set_only_during_the_run(tmp_path, micro, monkeypatch):
    """channels-last and torch.compile (graph capture through the "eager" backend here: inductor's code generation
    is what a GPU run adds) give the records of the plain fit to float noise, and checkpoints load into a plain
    model; `tf32` switches TF32 on for the run (a no-op on a CPU) and restores the setting after."""
    import torch

    import benchmark.run as R

    monkeypatch.setattr(R, "COMPILE_BACKEND", "eager")
    seen = []
    real_fit = R._fit

    def spy(*a, **k):
        seen.append(torch.backends.cuda.matmul.allow_tf32)
        return real_fit(*a, **k)

    monkeypatch.setattr(R, "_fit", spy)
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
    from benchmark.__main__ import main

    monkeypatch.setenv("XRAYBENCH_DATA", str(micro.root.parent.parent))
    assert main(["perf", "--train", "--methods", "unet-regression", "identity", "--preset", "micro",
                 "--iterations", "2", "--repeats", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("unet-regression")  # identity trains nothing: no line
    assert "32-true" in lines[1] and "bf16-mixed" in lines[1] and "(1.00x)" in lines[1]
