"""Bad input: every bad argument, `--set` value, dataset config or data folder ends as one line `error: ...` that
names the value and the fix, before any work (and a bad argument before torch loads)."""
import json
import os
import re
import subprocess
import sys

import pytest
from runs import ROOT, micro_ctx

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, resolve_config
from benchmark.run.stages import run_one


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
    from benchmark.cli.main import main

    assert main(["run", "--method", "medshift", "--dry-run", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_set_key_applies_to_the_methods_that_have_it(capsys):
    """`--method all --set lr=...` used to fail because the reference methods have no `lr`."""
    from benchmark.cli.main import main

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
        run_one(spec, micro_ctx(tmp_path))
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
    from benchmark.cli.main import main

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
    import benchmark.run.fit as runner
    from benchmark.cli.main import main

    monkeypatch.setattr(runner, "fit", lambda *a, **k: pytest.fail("trained on bad data"))
    cfg = _bad_folder(tmp_path / "data", kind)
    argv = ["run", "--method", "medshift", "--dataset", "folder", "--dataset-config", str(cfg), "--task", "a->b",
            "--results-dir", str(tmp_path / "res"), "--max-steps", "2", "--quiet", "--no-frd"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and "\n" not in err, err


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
    check = ("import sys; from benchmark.cli.main import main; rc = main(sys.argv[1:]); "
             "sys.exit(rc if 'torch' not in sys.modules else 99)")
    for command in ("run", "sweep"):
        proc = subprocess.run([sys.executable, "-c", check, command, *argv, "--dry-run"], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == f"error: {message}" or message in proc.stderr and "\n" not in proc.stderr.strip()


def test_method_names_are_read_without_importing_methods():
    from benchmark.cli.precheck import method_names
    from methods import METHODS

    assert method_names() == list(METHODS)
