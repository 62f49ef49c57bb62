"""Drills: a run killed or signalled in training or evaluation resumes to the uninterrupted run's records (skull-sim
`micro`; every signal is sent from inside the run at a controlled point, `tests/drills.py`)."""
import json
import signal
import subprocess
import sys

import pytest
from drills import signalled_in_evaluation, signalled_in_training
from runs import ONE_THREAD, ROOT, fit_cli, metrics_of, records_of_test_split, run_cmd

from benchmark.protocol.records import read_records


def test_sigkill_during_evaluation_then_resume_equals_an_uninterrupted_run(tmp_path, micro):
    whole = tmp_path / "whole"
    assert run_cmd(fit_cli(whole, micro)) == 0
    cut = tmp_path / "cut"
    killed = signalled_in_evaluation(fit_cli(cut, micro), "SIGKILL", ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL
    assert not list(cut.glob("runs/*/*/*/done"))
    assert run_cmd(fit_cli(cut, micro)) == 0
    a, b = (read_records(next(r.glob("runs/*/*/*/records.jsonl"))) for r in (whole, cut))
    _same_records(a, b)
    assert {r["resumed_from_steps"] == [] for r in records_of_test_split(b)} == {True}


def _same_records(a: list[dict], b: list[dict]) -> None:
    ma, mb = metrics_of(a), metrics_of(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert mb[k] == pytest.approx(ma[k], abs=1e-4), k  # one model; CPU floating-point noise at most


@pytest.mark.parametrize("method", ["medshift", "cyclegan"])
def test_sigkill_during_training_resumes_to_the_uninterrupted_records(tmp_path, micro, method):
    """The old behaviour: a resume drew other batches, noise and image-pool choices, and its records differed by
    up to 2.1 dB psnr_gt. Now the batches, the global generators and CycleGAN's pools continue exactly."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_cmd(fit_cli(whole, micro, method=method)) == 0
    killed = signalled_in_training(fit_cli(cut, micro, method=method), "SIGKILL", env=ONE_THREAD, method=method)
    assert killed.returncode == -signal.SIGKILL
    assert not list(cut.glob("runs/*/*/*/checkpoints/final.ckpt"))
    assert run_cmd(fit_cli(cut, micro, method=method)) == 0
    folder = next(cut.glob("runs/*/*/*"))
    info = json.loads((folder / "train.json").read_text())
    recs = read_records(folder / "records.jsonl")
    assert info["segments"][-1]["start_step"] == 25 and info["segments"][-1]["end_step"] == 60
    assert {tuple(r["resumed_from_steps"]) for r in records_of_test_split(recs)} == {(25,)}  # provenance, recorded
    _same_records(read_records(next(whole.glob("runs/*/*/*/records.jsonl"))), recs)
    last = info["segments"][-1]
    # the clock resumed from the checkpoint: the time before the kill (up to that checkpoint) is counted too
    assert records_of_test_split(recs)[0]["train_sec"] == last["total_sec"] > last["sec"] > 0


def test_sigkill_while_writing_a_resume_point_leaves_no_temporary_and_resumes_equal(tmp_path, micro):
    """A kill between writing the checkpoint's temporary and renaming it: no half-written last.ckpt, the temporary
    is removed on the next start, and the resumed run records what an uninterrupted one does."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert run_cmd(fit_cli(whole, micro)) == 0
    killer = ("import os, signal, sys; import lightning.pytorch as pl; save = pl.Trainer.save_checkpoint\n"
              "def dying(self, path, *a, **k):\n"
              "    save(self, path, *a, **k)\n"
              "    if '.last.ckpt.tmp-' in str(path): os.kill(os.getpid(), signal.SIGKILL)\n"
              "pl.Trainer.save_checkpoint = dying\n"
              "from benchmark.cli.main import main; sys.exit(main(sys.argv[1:]))")
    cmd = fit_cli(cut, micro)
    killed = subprocess.run([sys.executable, "-c", killer, *cmd[3:]], cwd=ROOT, capture_output=True, env=ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL
    ckpts = next(cut.glob("runs/*/*/*/checkpoints"))
    assert list(ckpts.glob(".last.ckpt.tmp-*")) and not (ckpts / "last.ckpt").exists()
    assert run_cmd(cmd) == 0
    assert not list(ckpts.glob(".*tmp-*"))
    _same_records(read_records(next(whole.glob("runs/*/*/*/records.jsonl"))),
                  read_records(next(cut.glob("runs/*/*/*/records.jsonl"))))


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, micro):
    """The uninterrupted reference run of `_cli` (one thread, like every run it is compared with)."""
    whole = tmp_path_factory.mktemp("whole")
    assert run_cmd(fit_cli(whole, micro)) == 0
    return read_records(next(whole.glob("runs/*/*/*/records.jsonl")))


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_training_saves_a_resume_point_says_so_and_resumes_equal(tmp_path, micro, whole_run, name):
    """SIGTERM (a scheduler's time limit or cancel) used to end the process with exit 0 and no message, and `make`
    went on to `collect`; SIGINT with exit 1. Now: the fit stops at the next iteration boundary with a resume point
    there, one line, exit 128 + the signal, no lock left; the same command resumes to the uninterrupted records."""
    cut = tmp_path / "cut"
    cmd = fit_cli(cut, micro)
    proc = signalled_in_training(cmd, name, env=ONE_THREAD)
    err = proc.stderr.strip()
    assert proc.returncode == 128 + getattr(signal, name), err[-2000:]
    assert err == (f"stopped by {name}: a resume point at iteration 31 is saved; every finished record is on disk; "
                   "run the same command again to resume")
    folder = next(cut.glob("runs/*/*/*"))
    import torch

    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 31
    assert not (folder / ".lock").exists() and not (folder / "checkpoints" / "final.ckpt").exists()
    assert run_cmd(cmd) == 0
    recs = read_records(folder / "records.jsonl")
    assert {tuple(r["resumed_from_steps"]) for r in records_of_test_split(recs)} == {(31,)}
    _same_records(whole_run, recs)


def test_sigterm_during_evaluation_prints_one_line_and_releases_the_lock(tmp_path, micro, whole_run):
    """It used to end with exit -15, no message and the run folder's `.lock` left behind."""
    results = tmp_path / "r"
    cmd = fit_cli(results, micro)
    proc = signalled_in_evaluation(cmd, "SIGTERM", ONE_THREAD)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("stopped by SIGTERM: every finished record is on disk; run the same command again "
                                   "to resume")
    folder = next(results.glob("runs/*/*/*"))
    assert not (folder / ".lock").exists() and not (folder / "done").exists()
    assert run_cmd(cmd) == 0
    _same_records(whole_run, read_records(folder / "records.jsonl"))


def test_ctrl_c_of_a_real_run_during_evaluation_prints_one_line(tmp_path, micro):
    """SIGINT (what Ctrl-C sends) during evaluation: one line on stderr, exit 130, and the run resumes later.
    The process signals itself right after it has written its first test record (no poller racing the run), with
    Python's own SIGINT handler installed (a shell's background job inherits SIGINT ignored)."""
    results = tmp_path / "r"
    cmd = fit_cli(results, micro)
    proc = signalled_in_evaluation(cmd, "SIGINT", ONE_THREAD)
    err = proc.stderr.strip()
    assert proc.returncode == 130, err[-2000:]
    assert err == "interrupted: every finished record is on disk; run the same command again to resume"
    assert run_cmd(cmd) == 0
