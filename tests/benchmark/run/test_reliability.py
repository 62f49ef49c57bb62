"""Reliability: final weights, done markers, locks, full disks, damaged files and copied records (skull-sim
`micro`, tiny budgets)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from runs import SMALL, metrics_of, micro_ctx, micro_spec, records_of_test_split

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.protocol.records import verify_done
from benchmark.run.context import RunLock
from benchmark.run.stages import run_one


def test_final_weights_are_saved_before_evaluation_and_never_retrained(tmp_path, micro, monkeypatch):
    """The old bug: last.ckpt held step 100 of 120, so a resume after a kill during evaluation retrained 100->120
    with another random stream and the run ended `done` with records from two models."""
    ctx = micro_ctx(tmp_path / "a")
    spec = micro_spec(micro, max_steps=30)  # 30 is not a multiple of the checkpoint interval (25)
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    final = folder / "checkpoints" / "final.ckpt"
    import torch

    assert torch.load(final, weights_only=True)["global_step"] == 30
    info = json.loads((folder / "train.json").read_text())
    assert info["segments"][0]["end_step"] == 30 and info["train_sec"] == records_of_test_split(first)[0]["train_sec"]
    # interrupted evaluation: the last records and `done` are gone; resuming must not train again
    (folder / "done").unlink()
    kept = first[:-2]
    assert kept[-1]["split"] == "test"
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    import benchmark.run.fit as runner

    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("trained again after the final weights existed"))
    again = run_one(spec, ctx)
    assert metrics_of(again) == metrics_of(first)  # the same final weights, deterministic sampling
    assert verify_done(folder) is None


def test_done_that_does_not_vouch_for_its_records_is_evaluated_again(tmp_path, micro):
    ctx = micro_ctx(tmp_path / "a")
    spec = micro_spec(micro, "histmatch", max_steps=None, overrides=())
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    (folder / "records.jsonl").unlink()  # `done` without records used to drop the method from the tables silently
    assert "records.jsonl is missing" in verify_done(folder)
    with pytest.warns(UserWarning, match="records.jsonl is missing"):
        again = run_one(spec, ctx)
    assert metrics_of(again) == metrics_of(first) and verify_done(folder) is None
    (folder / "checkpoints" / "selected.ckpt").unlink()
    (folder / "done").write_text("{}")
    with pytest.raises(RunError, match="selected.ckpt is missing"):
        with pytest.warns(UserWarning):
            run_one(spec, ctx)


def test_a_held_run_folder_names_its_holder_and_a_stale_lock_is_taken_over(tmp_path, micro):
    ctx = micro_ctx(tmp_path / "a")
    spec = micro_spec(micro, "identity", max_steps=None, overrides=())
    folder = spec.folder(ctx.results_dir)
    with RunLock(folder):
        with pytest.raises(RunError, match=f"being run by pid {os.getpid()} on .*delete .*\\.lock"):
            run_one(spec, ctx)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (folder / ".lock").write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}))
    (folder / f".records.jsonl.tmp-{dead.stdout.strip()}").write_text("half")  # a killed writer's leftover
    assert len(records_of_test_split(run_one(spec, ctx))) == 2
    assert not (folder / ".lock").exists() and not list(folder.glob(".*tmp-*"))


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
    assert micro_spec(micro).run_id == RunSpec("medshift", preset="micro", data_root="/elsewhere", max_steps=30,
                                          overrides=SMALL).run_id
    ctx = micro_ctx(tmp_path / "res")
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    assert json.loads((folder / "config.json").read_text())["data_fingerprint"]
    assert run_one(spec, micro_ctx(tmp_path / "res")) == first  # unchanged data: finished, reused
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
        run_one(spec, micro_ctx(tmp_path / "res"))
    replaced = np.random.default_rng(7).uniform(0, 1, (40, 40))
    write_png16(target, replaced)  # a file replaced in place
    with pytest.raises(RunError, match=r"was run on other data .* delete that run folder"):
        run_one(spec, micro_ctx(tmp_path / "res"))


def test_ctrl_c_during_evaluation_is_one_line(tmp_path, micro, capsys, monkeypatch):
    from benchmark.cli.main import main
    from benchmark.run.evaluate import Evaluator

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(Evaluator, "test_record", interrupted)
    argv = ["run", "--method", "identity", "--preset", "micro", "--data-root", str(micro.root.parent.parent),
            "--results-dir", str(tmp_path), "--quiet", "--no-frd"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == "interrupted: every finished record is on disk; run the same command again to resume"


def test_collect_on_a_read_only_folder_is_one_line(tmp_path, micro, capsys, monkeypatch):
    import benchmark.reporting.report as report
    from benchmark.cli.main import main

    run_one(micro_spec(micro, "identity", max_steps=None, overrides=()), micro_ctx(tmp_path))

    def read_only(path, *a, **k):  # what writing into a read-only folder raises (chmod does not stop root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(report, "atomic_write", read_only)
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
    import benchmark.run.fit as runner

    ctx = micro_ctx(tmp_path / "a")
    spec = micro_spec(micro, max_steps=30)
    folder = spec.folder(ctx.results_dir)
    with monkeypatch.context() as m:
        m.setattr(runner, "save_weights", _enospc)  # final.ckpt cannot be written
        with pytest.raises(RunError, match="no space left on the device.*run the same command again"):
            run_one(spec, ctx)
    assert not (folder / "done").exists() and not (folder / ".lock").exists()
    assert not list(folder.glob("**/.*tmp-*"))
    records = run_one(spec, ctx)  # space freed: the same command resumes and finishes
    assert verify_done(folder) is None and records_of_test_split(records)


def test_a_donor_fit_is_lent_only_for_the_same_file_contents(tmp_path, micro):
    """A `--set guidance=3` variant used to re-use a fit trained on files since edited in place (same names, sizes)."""
    from benchmark.protocol.config import find_donor

    ctx = micro_ctx(tmp_path)
    spec = micro_spec(micro, max_steps=2)
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
    ctx = micro_ctx(tmp_path)
    spec = micro_spec(micro, "histmatch", max_steps=None, overrides=())
    run_one(spec, ctx)
    folder = spec.folder(tmp_path)
    lines = (folder / "records.jsonl").read_text().splitlines(keepends=True)
    (folder / "records.jsonl").write_text("".join(lines + lines[-1:]))
    with pytest.raises(RunError, match=rf"lines {len(lines)} and {len(lines) + 1} record the same point"):
        run_one(spec, ctx)
    assert verify_done(folder) is not None  # nothing sealed


def test_images_seen_counts_the_images_a_batch_holds(tmp_path, micro):
    """`--set batch_size=100000` recorded images_seen 300000 where each batch was the 75 training images."""
    spec = micro_spec(micro, max_steps=3, overrides=SMALL + (("batch_size", 100000),))
    records = run_one(spec, micro_ctx(tmp_path))
    n_train = len(micro.rows(micro.domains, "train"))
    assert {r["images_seen"] for r in records_of_test_split(records)} == {3 * n_train}


def test_a_sampling_setting_that_makes_a_method_the_identity_is_refused(tmp_path, micro):
    """`sdedit --set num_inference_steps=1` recorded nfe 0 and ssim_src 1.0: its input, recorded as SDEdit."""
    spec = micro_spec(micro, "sdedit", max_steps=2, overrides=SMALL + (("num_inference_steps", 1),))
    with pytest.raises(RunError, match="evaluates its network 0 times at strength=0.1"):
        run_one(spec, micro_ctx(tmp_path))
    assert not spec.folder(tmp_path).exists()


@pytest.mark.parametrize("damage", ["truncated", "not a checkpoint", "renamed keys"])
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, micro, damage):
    """A corrupted selected.ckpt when a record is missing ended in `PytorchStreamReader failed` or `UnpicklingError`
    tracebacks, a last.ckpt with renamed keys in Lightning's state-dict traceback."""
    import torch

    ctx = micro_ctx(tmp_path)
    spec = micro_spec(micro, max_steps=30)
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
    from benchmark.cli.main import main

    spec = micro_spec(micro, "identity", max_steps=None, overrides=())
    run_one(spec, micro_ctx(tmp_path))
    folder = spec.folder(tmp_path)
    (folder / "config.json").unlink()
    assert main(["collect", "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no finished runs" in err and f"{folder.relative_to(tmp_path)}: config.json is missing" in err, err
    assert "\n" not in err


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


def test_resume_points_keep_the_callback_state_keys_older_checkpoints_hold(tmp_path, micro):
    """The training clock and the resume point moved modules; their state keys (Lightning's default is the class's
    qualified name) must not change, or a run resumed from an older checkpoint restarts `train_sec` from zero."""
    import torch

    spec = micro_spec(micro, max_steps=30)
    run_one(spec, micro_ctx(tmp_path))
    ckpt = torch.load(spec.folder(tmp_path) / "checkpoints" / "last.ckpt", weights_only=False)
    assert "_train_clock.<locals>.TrainClock" in ckpt["callbacks"]
    assert ckpt["callbacks"]["_train_clock.<locals>.TrainClock"]["elapsed"] > 0


def test_an_archive_of_an_older_protocol_is_left_out_beside_live_runs_not_mixed(tmp_path, micro, capsys):
    """A newcomer's runs under today's protocol beside an archive made under the previous one: `collect` leaves the
    archive out with one line (it used to refuse to build any table); two live versions still refuse."""
    import gzip
    import json
    import shutil

    from benchmark.cli.main import main
    from benchmark.protocol.records import PROTOCOL_VERSION, record_sha
    from benchmark.reporting.archive import archive_runs

    run_one(micro_spec(micro, "identity", max_steps=None, overrides=()), micro_ctx(tmp_path))
    run_one(micro_spec(micro, "histmatch", max_steps=None, overrides=()), micro_ctx(tmp_path))
    archive_runs(tmp_path)
    old = next((tmp_path / "records").glob("histmatch/*/*/records.jsonl.gz"))
    recs = [json.loads(line) for line in gzip.decompress(old.read_bytes()).decode().splitlines()]
    recs = [dict({k: v for k, v in r.items() if k != "_sha"}, protocol=PROTOCOL_VERSION - 1) for r in recs]
    old.write_bytes(gzip.compress("".join(json.dumps(dict(r, _sha=record_sha(r))) + "\n" for r in recs).encode()))
    for run in (tmp_path / "runs" / "histmatch").glob("*/*"):  # only identity stays live
        shutil.rmtree(run)
    assert main(["collect", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"left out the archive's 1 run(s) of protocol {PROTOCOL_VERSION - 1}" in out
    assert "histmatch" not in (tmp_path / "tables" / "summary.csv").read_text()
