"""Drills: interruption, resume, concurrent invocations and bad values (skull-sim `micro`, tiny budgets)."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from drills import signalled_in_evaluation, signalled_in_training

from benchmark.config import RunSpec, resolve_config
from benchmark.records import RunError, read_records, verify_done
from benchmark.run import RunContext, RunLock, run_one
from benchmark.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
SMALL = (("base_channels", 8), ("channel_mults", [1, 2]))


def _ctx(results):
    return RunContext(results, Scorer(weights_dir=results / "w", cache_dir=results / "cache", frd=False), quiet=True)


def _spec(micro, method="medshift", **kw):
    return RunSpec(method, preset="micro", data_root=str(micro.root.parent.parent), max_steps=kw.pop("max_steps", 30),
                   overrides=kw.pop("overrides", SMALL if method != "cyclegan" else ()), **kw)


def _metrics(records):
    keys = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist", "hist_w1")
    return {(r["split"], r["step"], r["task"], r["source"], r["knob_value"]): tuple(r[k] for k in keys)
            for r in records}


def _tests(records):
    return [r for r in records if r["split"] == "test"]


def test_final_weights_are_saved_before_evaluation_and_never_retrained(tmp_path, micro, monkeypatch):
    """The old bug: last.ckpt held step 100 of 120, so a resume after a kill during evaluation retrained 100->120
    with another random stream and the run ended `done` with records from two models."""
    ctx = _ctx(tmp_path / "a")
    spec = _spec(micro, max_steps=30)  # 30 is not a multiple of the checkpoint interval (25)
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    final = folder / "checkpoints" / "final.ckpt"
    import torch

    assert torch.load(final, weights_only=True)["global_step"] == 30
    info = json.loads((folder / "train.json").read_text())
    assert info["segments"][0]["end_step"] == 30 and info["train_sec"] == _tests(first)[0]["train_sec"]
    # interrupted evaluation: the last records and `done` are gone; resuming must not train again
    (folder / "done").unlink()
    kept = first[:-2]
    assert kept[-1]["split"] == "test"
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    import benchmark.run as runner

    monkeypatch.setattr(runner, "_fit", lambda *a, **k: pytest.fail("trained again after the final weights existed"))
    again = run_one(spec, ctx)
    assert _metrics(again) == _metrics(first)  # the same final weights, deterministic sampling
    assert verify_done(folder) is None


def test_done_that_does_not_vouch_for_its_records_is_evaluated_again(tmp_path, micro):
    ctx = _ctx(tmp_path / "a")
    spec = _spec(micro, "histmatch", max_steps=None, overrides=())
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    (folder / "records.jsonl").unlink()  # `done` without records used to drop the method from the tables silently
    assert "records.jsonl is missing" in verify_done(folder)
    with pytest.warns(UserWarning, match="records.jsonl is missing"):
        again = run_one(spec, ctx)
    assert _metrics(again) == _metrics(first) and verify_done(folder) is None
    (folder / "checkpoints" / "selected.ckpt").unlink()
    (folder / "done").write_text("{}")
    with pytest.raises(RunError, match="selected.ckpt is missing"):
        with pytest.warns(UserWarning):
            run_one(spec, ctx)


def test_a_held_run_folder_names_its_holder_and_a_stale_lock_is_taken_over(tmp_path, micro):
    ctx = _ctx(tmp_path / "a")
    spec = _spec(micro, "identity", max_steps=None, overrides=())
    folder = spec.folder(ctx.results_dir)
    with RunLock(folder):
        with pytest.raises(RunError, match=f"being run by pid {os.getpid()} on .*delete .*\\.lock"):
            run_one(spec, ctx)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (folder / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}))
    (folder / f".records.jsonl.tmp-{dead.stdout.strip()}").write_text("half")  # a killed writer's leftover
    assert len(_tests(run_one(spec, ctx))) == 2
    assert not (folder / ".lock").exists() and not list(folder.glob(".*tmp-*"))


def _cli(results, micro, *extra, method="medshift"):
    settings = (["--set", "base_channels=8", "--set", "channel_mults=[1, 2]"] if method == "medshift" else
                ["--set", "ngf=8", "--set", "ndf=8", "--set", "n_blocks=1"])
    return [sys.executable, "-m", "benchmark", "run", "--method", method, "--preset", "micro", "--quiet",
            "--results-dir", str(results), "--data-root", str(micro.root.parent.parent), "--max-steps", "60",
            *settings, "--no-frd", *extra]


ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # every compared run alike: thread count changes float sums


def _run(cmd) -> int:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, env=ONE_THREAD).returncode


def test_sigkill_during_evaluation_then_resume_equals_an_uninterrupted_run(tmp_path, micro):
    whole = tmp_path / "whole"
    assert _run(_cli(whole, micro)) == 0
    cut = tmp_path / "cut"
    killed = signalled_in_evaluation(_cli(cut, micro), "SIGKILL", ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL
    assert not list(cut.glob("runs/*/*/*/done"))
    assert _run(_cli(cut, micro)) == 0
    a, b = (read_records(next(r.glob("runs/*/*/*/records.jsonl"))) for r in (whole, cut))
    _same_records(a, b)
    assert {r["resumed_from_steps"] == [] for r in _tests(b)} == {True}


def _same_records(a: list[dict], b: list[dict]) -> None:
    ma, mb = _metrics(a), _metrics(b)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert mb[k] == pytest.approx(ma[k], abs=1e-4), k  # one model; CPU floating-point noise at most


@pytest.mark.parametrize("method", ["medshift", "cyclegan"])
def test_sigkill_during_training_resumes_to_the_uninterrupted_records(tmp_path, micro, method):
    """The old behaviour: a resume drew other batches, noise and image-pool choices, and its records differed by
    up to 2.1 dB psnr_gt. Now the batches, the global generators and CycleGAN's pools continue exactly."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(_cli(whole, micro, method=method)) == 0
    killed = signalled_in_training(_cli(cut, micro, method=method), "SIGKILL", env=ONE_THREAD, method=method)
    assert killed.returncode == -signal.SIGKILL
    assert not list(cut.glob("runs/*/*/*/checkpoints/final.ckpt"))
    assert _run(_cli(cut, micro, method=method)) == 0
    folder = next(cut.glob("runs/*/*/*"))
    info = json.loads((folder / "train.json").read_text())
    recs = read_records(folder / "records.jsonl")
    assert info["segments"][-1]["start_step"] == 25 and info["segments"][-1]["end_step"] == 60
    assert {tuple(r["resumed_from_steps"]) for r in _tests(recs)} == {(25,)}  # provenance, still recorded
    _same_records(read_records(next(whole.glob("runs/*/*/*/records.jsonl"))), recs)
    last = info["segments"][-1]
    # the clock resumed from the checkpoint: the time before the kill (up to that checkpoint) is counted too
    assert _tests(recs)[0]["train_sec"] == last["total_sec"] > last["sec"] > 0


def test_sigkill_while_writing_a_resume_point_leaves_no_temporary_and_resumes_equal(tmp_path, micro):
    """A kill between writing the checkpoint's temporary and renaming it: no half-written last.ckpt, the temporary
    is removed on the next start, and the resumed run records what an uninterrupted one does."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert _run(_cli(whole, micro)) == 0
    killer = ("import os, signal, sys; import lightning.pytorch as pl; save = pl.Trainer.save_checkpoint\n"
              "def dying(self, path, *a, **k):\n"
              "    save(self, path, *a, **k)\n"
              "    if '.last.ckpt.tmp-' in str(path): os.kill(os.getpid(), signal.SIGKILL)\n"
              "pl.Trainer.save_checkpoint = dying\n"
              "from benchmark.__main__ import main; sys.exit(main(sys.argv[1:]))")
    cmd = _cli(cut, micro)
    killed = subprocess.run([sys.executable, "-c", killer, *cmd[3:]], cwd=ROOT, capture_output=True, env=ONE_THREAD)
    assert killed.returncode == -signal.SIGKILL
    ckpts = next(cut.glob("runs/*/*/*/checkpoints"))
    assert list(ckpts.glob(".last.ckpt.tmp-*")) and not (ckpts / "last.ckpt").exists()
    assert _run(cmd) == 0
    assert not list(ckpts.glob(".*tmp-*"))
    _same_records(read_records(next(whole.glob("runs/*/*/*/records.jsonl"))),
                  read_records(next(cut.glob("runs/*/*/*/records.jsonl"))))


@pytest.fixture(scope="module")
def whole_run(tmp_path_factory, micro):
    """The uninterrupted reference run of `_cli` (one thread, like every run it is compared with)."""
    whole = tmp_path_factory.mktemp("whole")
    assert _run(_cli(whole, micro)) == 0
    return read_records(next(whole.glob("runs/*/*/*/records.jsonl")))


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_during_training_saves_a_resume_point_says_so_and_resumes_equal(tmp_path, micro, whole_run, name):
    """SIGTERM (a scheduler's time limit or cancel) used to end the process with exit 0 and no message, and `make`
    went on to `collect`; SIGINT with exit 1. Now: the fit stops at the next iteration boundary with a resume point
    there, one line, exit 128 + the signal, no lock left; the same command resumes to the uninterrupted records."""
    cut = tmp_path / "cut"
    cmd = _cli(cut, micro)
    proc = signalled_in_training(cmd, name, env=ONE_THREAD)
    err = proc.stderr.strip()
    assert proc.returncode == 128 + getattr(signal, name), err[-2000:]
    assert err == (f"stopped by {name}: a resume point at iteration 31 is saved; every finished record is on disk; "
                   "run the same command again to resume")
    folder = next(cut.glob("runs/*/*/*"))
    import torch

    assert torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 31
    assert not (folder / ".lock").exists() and not (folder / "checkpoints" / "final.ckpt").exists()
    assert _run(cmd) == 0
    recs = read_records(folder / "records.jsonl")
    assert {tuple(r["resumed_from_steps"]) for r in _tests(recs)} == {(31,)}
    _same_records(whole_run, recs)


def test_sigterm_during_evaluation_prints_one_line_and_releases_the_lock(tmp_path, micro, whole_run):
    """It used to end with exit -15, no message and the run folder's `.lock` left behind."""
    results = tmp_path / "r"
    cmd = _cli(results, micro)
    proc = signalled_in_evaluation(cmd, "SIGTERM", ONE_THREAD)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert proc.stderr.strip() == ("stopped by SIGTERM: every finished record is on disk; run the same command again "
                                   "to resume")
    folder = next(results.glob("runs/*/*/*"))
    assert not (folder / ".lock").exists() and not (folder / "done").exists()
    assert _run(cmd) == 0
    _same_records(whole_run, read_records(folder / "records.jsonl"))


def test_ctrl_c_of_a_real_run_during_evaluation_prints_one_line(tmp_path, micro):
    """SIGINT (what Ctrl-C sends) during evaluation: one line on stderr, exit 130, and the run resumes later.
    The process signals itself right after it has written its first test record (no poller racing the run), with
    Python's own SIGINT handler installed (a shell's background job inherits SIGINT ignored)."""
    results = tmp_path / "r"
    cmd = _cli(results, micro)
    proc = signalled_in_evaluation(cmd, "SIGINT", ONE_THREAD)
    err = proc.stderr.strip()
    assert proc.returncode == 130, err[-2000:]
    assert err == "interrupted: every finished record is on disk; run the same command again to resume"
    assert _run(cmd) == 0


@pytest.mark.parametrize("key, value, message", [
    ("guidance", "abc", "guidance takes a float"),
    ("lr", "abc", "lr takes a float"),
    ("base_channels", "abc", "base_channels takes an int"),
    ("channel_mults", 5, "channel_mults takes a tuple"),
    ("max_steps", 0, "at least 1"),
    ("step_size", -1, r"step_size must lie in \(0, 1\]"),
    ("ema_decay", 2, r"ema_decay must lie in \[0, 1\)"),
    ("lr", -1e-3, r"lr must lie in \(0, inf\)"),
    ("channel_mults", [], r"every element of medshift's channel_mults must lie in"),
    ("channel_mults", [1, 0], r"every element of medshift's channel_mults must lie in"),
    ("solver", "rk4", "solver is one of euler, heun"),
])
def test_bad_set_values_fail_before_any_work(key, value, message):
    with pytest.raises(RunError, match=message):
        resolve_config(RunSpec("medshift", overrides=((key, value),)))


@pytest.mark.parametrize("argv, message", [
    (["--max-steps", "-5"], "--max-steps -5"),
    (["--set", "guidance=abc"], "guidance takes a float"),
    (["--task", "real_normal->real_normal"], "needs at least one source domain other than its target"),
    (["--accumulate", "0"], "--accumulate 0: at least 1"),
    (["--accumulate", "3"], "which does not split over 3 micro-batches"),
    (["--num-nodes", "2", "--strategy", "ddp_fork"], "a fit over several nodes runs with --strategy ddp"),
    (["--method", "cyclegan", "--accumulate", "2"], "cyclegan steps its optimisers itself"),
    (["--method", "histmatch", "--num-nodes", "2"], "histmatch trains nothing to share over 2 processes"),
    # a setting is None only where its default is; a None default still has a type (its annotation)
    (["--set", "guidance=null"], "guidance has no 'none' value"),
    (["--method", "cyclegan", "--set", "lr=null"], "lr has no 'none' value"),
    (["--method", "pix2pix", "--set", "dropout=null"], "dropout has no 'none' value"),
    (["--method", "cyclegan", "--set", "n_blocks=abc"], "n_blocks takes an int"),
    (["--method", "cyclegan", "--set", "n_blocks=2.5"], "n_blocks takes an int"),
    (["--set", "autoencoder=123"], "autoencoder takes a str"),
    (["--set", "guidance=.inf"], "guidance takes a finite float"),
    (["--budget", "inf"], "--budget inf: a FLOP budget is a positive, finite number"),
    (["--budget", "nan"], "--budget nan"),
    (["--method", "identity", "histmatch", "--set", "lr=0.1"], "no selected method (identity, histmatch) has"),
])
def test_cli_rejects_bad_values_in_one_line(argv, message, capsys):
    from benchmark.__main__ import main

    assert main(["run", "--method", "medshift", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_set_key_applies_to_the_methods_that_have_it(capsys):
    """`--method all --set lr=...` used to fail because the reference methods have no `lr`."""
    from benchmark.__main__ import main

    assert main(["run", "--method", "all", "--preset", "micro", "--dry-run", "--set", "lr=0.001"]) == 0
    plan = json.loads(capsys.readouterr().out)
    with_lr = {p["method"] for p in plan if "lr" in p["config"]}
    assert with_lr and all(p["config"]["lr"] == 0.001 for p in plan if p["method"] in with_lr)
    assert {"identity", "histmatch"} <= {p["method"] for p in plan} - with_lr


@pytest.mark.parametrize("patch", [100, 7])
def test_a_patch_that_does_not_tile_the_image_is_refused_before_any_work(tmp_path, micro, patch):
    """It used to end in `RuntimeError: The size of tensor a (32) must match ...` after config.json was written."""
    spec = RunSpec("cdm", preset="micro", data_root=str(micro.root.parent.parent), max_steps=2,
                   overrides=(("patch", patch),))
    with pytest.raises(RunError, match=f"patch={patch} does not tile 32x32 images"):
        run_one(spec, _ctx(tmp_path))
    assert not spec.folder(tmp_path).exists()  # nothing left behind, not even an empty run folder


@pytest.mark.parametrize("line, message", [
    ("size: abc", "size: 'abc' is not a whole number of pixels"),
    ("size: 2.5", "size: 2.5 is not a whole number"),
    ("split_seed: abc", "split_seed: 'abc' is not a whole number"),
    ("subject_regex: '(['", "subject_regex '([' is not a valid regular expression"),
    ("interpolation: cubic", "interpolation: 'cubic' is not one of area, bilinear, nearest"),
    ("colour: grey", "unknown key 'colour'"),
])
def test_a_bad_folder_dataset_config_names_the_file_and_the_key(tmp_path, capsys, line, message):
    from benchmark.__main__ import main

    for dom in ("A", "B"):
        (tmp_path / dom).mkdir()
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(f"name: toy\nroot: {tmp_path}\ndomains: {{a: A, b: B}}\n{line}\n")
    argv = ["run", "--method", "identity", "--dataset", "folder", "--task", "a->b", "--dry-run"]
    assert main([*argv, "--dataset-config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: dataset config {cfg}: ") and message in err and "\n" not in err
    cfg.write_text(f"name: toy\nroot: {tmp_path}\ndomains: [a, b]\n")
    assert main([*argv, "--dataset-config", str(cfg)]) == 2
    assert "domains: ['a', 'b'] is not a mapping" in capsys.readouterr().err
    # a folder given as the config used to load `<folder>.yaml` next to it, silently
    (tmp_path / "data").mkdir()
    (tmp_path / "data.yaml").write_text(f"name: toy\nroot: {tmp_path}\ndomains: {{a: A, b: B}}\n")
    assert main([*argv, "--dataset-config", str(tmp_path / "data")]) == 2
    assert "is a folder; pass the YAML file" in capsys.readouterr().err


def test_a_run_is_identified_by_its_data(tmp_path, micro):
    """The old bug: changing `size:` in a folder dataset's YAML reused the old results. Now the config's content
    and the data root enter the run id, and files changed under a finished run stop it with one line."""
    import numpy as np
    import yaml

    from datasets.io import write_png16

    for dom, start in (("A", 0), ("B", 100)):
        (tmp_path / "data" / dom).mkdir(parents=True)
        for i in range(start, start + 12):
            write_png16(tmp_path / "data" / dom / f"img{i:03d}.png", np.random.default_rng(i).uniform(0, 1, (32, 32)))
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump({"name": "toy", "domains": {"a": "A", "b": "B"}, "root": str(tmp_path / "data")}))
    spec = RunSpec("identity", dataset="folder", preset="", tasks=("a->b",), dataset_config=str(cfg))
    before = spec.run_id
    cfg.write_text(cfg.read_text() + "size: 32\n")
    assert spec.run_id != before  # same path, other content: another run
    moved = RunSpec("identity", dataset="folder", preset="", tasks=("a->b",), dataset_config=str(cfg),
                    data_root=str(tmp_path))
    assert moved.run_id != spec.run_id
    # skull-sim's content is named by preset, seed and generator version, wherever its data root is
    assert _spec(micro).run_id == RunSpec("medshift", preset="micro", data_root="/elsewhere", max_steps=30,
                                          overrides=SMALL).run_id
    ctx = _ctx(tmp_path / "res")
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    assert json.loads((folder / "config.json").read_text())["data_fingerprint"]
    assert run_one(spec, _ctx(tmp_path / "res")) == first  # unchanged data: finished, reused
    # an in-place edit that keeps the file's size (names and sizes alone did not notice it): a finished run is not
    # reused, nor resumed, nor lent to a sampling variant as a donor
    target = tmp_path / "data" / "B" / "img100.png"
    size = target.stat().st_size
    before = target.read_bytes()
    for seed in range(1000, 1100):  # other noise of the same size (noise barely compresses: a few tries at most)
        write_png16(target, np.random.default_rng(seed).uniform(0, 1, (32, 32)))
        if target.stat().st_size == size:
            break
    assert target.stat().st_size == size and target.read_bytes() != before
    with pytest.raises(RunError, match=r"was run on other data .* delete that run folder"):
        run_one(spec, _ctx(tmp_path / "res"))
    replaced = np.random.default_rng(7).uniform(0, 1, (40, 40))
    write_png16(target, replaced)  # a file replaced in place
    with pytest.raises(RunError, match=r"was run on other data .* delete that run folder"):
        run_one(spec, _ctx(tmp_path / "res"))


def _bad_folder(tmp_path, kind):
    """A two-domain folder dataset with one defect of `kind`; returns the config path."""
    import numpy as np
    import yaml

    from datasets.io import write_dicom_dx, write_png16

    size = 8 if kind == "too-small" else 32
    for dom, start in (("A", 0), ("B", 100)):
        (tmp_path / dom).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + (2 if kind == "few-subjects" else 12)):
            write_png16(tmp_path / dom / f"img{i:03d}.png", np.random.default_rng(i).uniform(0, 1, (size, size)))
    bad = tmp_path / "B"
    if kind == "constant":
        write_png16(bad / "img200.png", np.full((32, 32), 0.25))
    elif kind == "non-utf8":
        src = (bad / "img100.png").read_bytes()
        with open(os.path.join(os.fsencode(bad), b"img\xff.png"), "wb") as f:
            f.write(src)
    elif kind == "cut-dicom":
        write_dicom_dx(bad / "img300.dcm", bad / "img100.png", dict(id="x", subject="s", view="pa", domain="B",
                                                                       kvp="70", dose="1"))
        data = (bad / "img300.dcm").read_bytes()
        (bad / "img300.dcm").write_bytes(data[:-100])
    elif kind == "header-only-dicom":
        import pydicom

        write_dicom_dx(bad / "img301.dcm", bad / "img100.png", dict(id="x", subject="s", view="pa", domain="B",
                                                                       kvp="70", dose="1"))
        ds = pydicom.dcmread(bad / "img301.dcm")
        del ds.PixelData
        ds.save_as(bad / "img301.dcm")
    cfg = tmp_path / "toy.yaml"
    text = yaml.safe_dump({"name": "toy", "domains": {"a": "A", "b": "B"}, "root": str(tmp_path)})
    cfg.write_text(text + ("domains: {a: A\n" if kind == "bad-yaml" else ""))
    return cfg


@pytest.mark.parametrize("kind, message", [
    ("bad-yaml", r"toy.yaml: not valid YAML at line \d+, column \d+"),
    ("constant", r"img200.png: constant image"),
    ("non-utf8", r"img\ufffd.png: file name is not valid UTF-8; rename the file"),
    ("cut-dicom", r"img300.dcm: DICOM file is cut short: its pixel data holds \d+ of 2048 bytes"),
    ("too-small", r"served at 8x8 px; the metrics need at least 11x11"),
    ("header-only-dicom", r"img301.dcm: DICOM image without its pixel data \(\d+ bytes: a header only"),
    ("few-subjects", r"no a images in the 'val' split, which task a->b reads \(subjects per split: train 2, val 0"),
])
def test_bad_data_gets_one_line_before_any_training(tmp_path, kind, message, capsys, monkeypatch):
    import benchmark.run as runner
    from benchmark.__main__ import main

    monkeypatch.setattr(runner, "_fit", lambda *a, **k: pytest.fail("trained on bad data"))
    cfg = _bad_folder(tmp_path / "data", kind)
    argv = ["run", "--method", "medshift", "--dataset", "folder", "--dataset-config", str(cfg), "--task", "a->b",
            "--results-dir", str(tmp_path / "res"), "--max-steps", "2", "--quiet", "--no-frd"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err, err


def test_ctrl_c_during_evaluation_is_one_line(tmp_path, micro, capsys, monkeypatch):
    import benchmark.run as runner
    from benchmark.__main__ import main

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner.Evaluator, "test_record", interrupted)
    argv = ["run", "--method", "identity", "--preset", "micro", "--data-root", str(micro.root.parent.parent),
            "--results-dir", str(tmp_path), "--quiet", "--no-frd"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: every finished record is on disk; run the same command again to resume"


def test_collect_on_a_read_only_folder_is_one_line(tmp_path, micro, capsys, monkeypatch):
    import benchmark.collect as collect
    from benchmark.__main__ import main

    run_one(_spec(micro, "identity", max_steps=None, overrides=()), _ctx(tmp_path))

    def read_only(path, *a, **k):  # what writing into a read-only folder raises (chmod does not stop root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(collect, "atomic_write", read_only)
    assert main(["collect", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "permission denied" in err and "tables" in err and "\n" not in err, err


def _enospc(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_taking_the_lock_is_one_line_and_leaves_no_lock(tmp_path, monkeypatch):
    """It used to leave an empty `.lock` that blocked every later run ("is being run by pid None on None")."""
    folder = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", _enospc)
        with pytest.raises(RunError, match=f"{folder}: no space left on the device"):
            RunLock(folder).__enter__()
    assert not list(folder.iterdir())  # neither a lock nor its temporary
    (folder / ".lock").write_text("")  # what the old version left: a lock that cannot be read is stale
    with RunLock(folder):
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    assert not (folder / ".lock").exists()


def test_a_full_disk_during_a_checkpoint_write_is_one_line_and_the_run_resumes(tmp_path, micro, monkeypatch):
    import benchmark.run as runner

    ctx = _ctx(tmp_path / "a")
    spec = _spec(micro, max_steps=30)
    folder = spec.folder(ctx.results_dir)
    with monkeypatch.context() as m:
        m.setattr(runner, "_save_weights", _enospc)  # final.ckpt cannot be written
        with pytest.raises(RunError, match="no space left on the device.*run the same command again"):
            run_one(spec, ctx)
    assert not (folder / "done").exists() and not (folder / ".lock").exists()
    assert not list(folder.glob("**/.*tmp-*"))
    records = run_one(spec, ctx)  # space freed: the same command resumes and finishes
    assert verify_done(folder) is None and _tests(records)


def test_a_donor_fit_is_lent_only_for_the_same_file_contents(tmp_path, micro):
    """A `--set guidance=3` variant used to re-use a fit trained on files since edited in place (same names, sizes)."""
    from benchmark.config import find_donor

    ctx = _ctx(tmp_path)
    spec = _spec(micro, max_steps=2)
    run_one(spec, ctx)
    folder = spec.folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    variant = folder.with_name("seed0-variant")
    args = (variant, cfg["fit_key"], micro.domains, cfg["data_fingerprint"])
    assert cfg["data_content"] == micro.content_fingerprint
    assert find_donor(*args, micro.content_fingerprint) == folder
    assert find_donor(*args, "0" * 64) is None  # same names and sizes, other bytes


def test_file_digests_are_cached_by_size_and_mtime(tmp_path, monkeypatch):
    import hashlib

    from datasets.base import file_digests

    monkeypatch.setenv("XRAYBENCH_CACHE", str(tmp_path / "cache"))
    files = [tmp_path / f"f{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 100)
    assert file_digests(files) == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    assert list((tmp_path / "cache" / "digests").glob("*.json"))
    files[1].write_bytes(b"x" * 100)  # same size, new content and mtime
    assert file_digests(files)[1] == hashlib.sha256(b"x" * 100).hexdigest()


def test_a_records_line_copied_by_hand_is_refused_not_sealed(tmp_path, micro):
    """It used to be re-sealed by the next `done`, and `collect` then failed on the whole folder."""
    ctx = _ctx(tmp_path)
    spec = _spec(micro, "histmatch", max_steps=None, overrides=())
    run_one(spec, ctx)
    folder = spec.folder(tmp_path)
    lines = (folder / "records.jsonl").read_text().splitlines(keepends=True)
    (folder / "records.jsonl").write_text("".join(lines + lines[-1:]))
    with pytest.raises(RunError, match=rf"lines {len(lines)} and {len(lines) + 1} record the same point"):
        run_one(spec, ctx)
    assert verify_done(folder) is not None  # nothing sealed


def test_images_seen_counts_the_images_a_batch_holds(tmp_path, micro):
    """`--set batch_size=100000` recorded images_seen 300000 where each batch was the 75 training images."""
    spec = _spec(micro, max_steps=3, overrides=SMALL + (("batch_size", 100000),))
    records = run_one(spec, _ctx(tmp_path))
    n_train = len(micro.rows(micro.domains, "train"))
    assert {r["images_seen"] for r in _tests(records)} == {3 * n_train}


def test_a_sampling_setting_that_makes_a_method_the_identity_is_refused(tmp_path, micro):
    """`sdedit --set num_inference_steps=1` recorded nfe 0 and ssim_src 1.0: its input, recorded as SDEdit."""
    spec = _spec(micro, "sdedit", max_steps=2, overrides=SMALL + (("num_inference_steps", 1),))
    with pytest.raises(RunError, match="evaluates its network 0 times at strength=0.1"):
        run_one(spec, _ctx(tmp_path))
    assert not spec.folder(tmp_path).exists()


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "renamed keys"])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, micro, damage):
    """A corrupted selected.ckpt when a record is missing ended in `PytorchStreamReader failed` or `UnpicklingError`
    tracebacks, a last.ckpt with renamed keys in Lightning's state-dict traceback."""
    import torch

    ctx = _ctx(tmp_path)
    spec = _spec(micro, max_steps=30)
    records = run_one(spec, ctx)
    folder = spec.folder(tmp_path)
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:-1]))
    for name in ("selected.ckpt", "last.ckpt"):
        path = folder / "checkpoints" / name
        if damage == "truncated":
            path.write_bytes(path.read_bytes()[:1000])
        elif damage == "not a checkpoint":
            path.write_text("hello")
        else:
            ckpt = torch.load(path, weights_only=True)
            ckpt["state_dict"] = {"renamed." + k: v for k, v in ckpt["state_dict"].items()}
            torch.save(ckpt, path)
    with pytest.raises(RunError, match=r"checkpoint .*selected.ckpt (cannot be loaded|holds no|does not hold).*delete "
                                       r"the run folder"):
        with pytest.warns(UserWarning):
            run_one(spec, ctx)
    (folder / "checkpoints" / "selected.ckpt").unlink()
    (folder / "train.json").unlink()
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records if r["split"] == "val"
                                                 and isinstance(r["step"], int) and r["step"] <= 25))
    (folder / "checkpoints" / "final.ckpt").unlink()
    with pytest.raises(RunError, match=r"checkpoint .*last.ckpt (cannot be loaded|holds no|does not hold).*delete it"):
        run_one(spec, ctx)


def test_collect_names_the_runs_it_left_out_when_nothing_is_finished(tmp_path, micro, capsys):
    """It answered "no records under ..." for edited, config-less or unfinished runs without naming them."""
    from benchmark.__main__ import main

    spec = _spec(micro, "identity", max_steps=None, overrides=())
    run_one(spec, _ctx(tmp_path))
    folder = spec.folder(tmp_path)
    (folder / "config.json").unlink()
    assert main(["collect", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished runs" in err and f"{folder.relative_to(tmp_path)}: config.json is missing" in err, err
    assert "\n" not in err


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope"], "unknown method 'nope'; available: identity"),
    (["--seeds", "-1"], "--seeds -1: a seed is a whole number from 0 to 4294967295"),
    (["--data-seed", "-1"], "--data-seed -1: a seed is a whole number"),
    (["--devices", "0"], "--devices 0: at least 1"),
    (["--budget", "inf"], "--budget inf: a FLOP budget is a positive, finite number"),
    (["--set", "guidance"], "--set 'guidance': expected key=value"),
])
def test_bad_arguments_are_refused_before_torch_loads(argv, message):
    """Every start-up took 10-20 s before even an argument error was reported (torch, Lightning, diffusers load)."""
    check = ("import sys; from benchmark.__main__ import main; rc = main(sys.argv[1:]); "
             "sys.exit(rc if 'torch' not in sys.modules else 99)")
    for command in ("run", "sweep"):
        proc = subprocess.run([sys.executable, "-c", check, command, *argv, "--dry-run"], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == f"error: {message}" or message in proc.stderr and "\n" not in proc.stderr.strip()


def test_method_names_are_read_without_importing_methods():
    from benchmark.precheck import method_names
    from methods import METHODS

    assert method_names() == list(METHODS)


def test_the_lock_works_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    import errno

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    folder = tmp_path / "run"
    with RunLock(folder):
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
        with pytest.raises(RunError, match="is being run by pid"):
            RunLock(folder).__enter__()
    assert not list(folder.iterdir())
