"""FRD (weight-free realism on radiomic features): closed form, equality with frd-score, and re-scoring."""
import json

import numpy as np
import pytest

from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec
from benchmark.protocol.records import of_split, read_records
from benchmark.run.context import RunContext
from benchmark.run.stages import run_one
from benchmark.scoring.radiomics import frd_from_features, quantize16
from benchmark.scoring.scorer import Scorer


def test_frd_closed_form_for_a_shifted_set():
    """Equal covariances: d^2 = |mean shift / reference std|^2, so FRD = log of that sum."""
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.0]) + 10.0
    shift = np.array([0.5, -1.0, 0.25, 0.0, 2.0])
    std = real.astype(np.float32).std(axis=0)
    assert frd_from_features(real, real + shift) == pytest.approx(np.log(np.sum((shift / std) ** 2)), rel=1e-5)


def test_frd_drops_constant_features_and_nan_images():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 1.0
    base = frd_from_features(real, fake)
    real_c, fake_c = np.c_[real, np.ones(50)], np.c_[fake, rng.normal(size=40)]  # constant in the reference
    fake_c[3, 0] = np.nan  # one image without a finite feature is dropped, as frd-score v1 does
    assert frd_from_features(real_c, fake_c) == pytest.approx(frd_from_features(real, np.delete(fake, 3, 0)))
    assert np.isfinite(base)
    with pytest.raises(ValueError, match="at least 2 images"):
        frd_from_features(real, np.full((3, 3), np.nan))


def test_frd_equals_frd_score_on_png_folders(tiny, tmp_path):
    """Our in-memory FRD == frd_score.compute_frd on the same images saved as 16-bit PNG (the reference code)."""
    frd = pytest.importorskip("frd_score.frd")
    from PIL import Image

    from benchmark.scoring.radiomics import RadiomicsFeatures

    real, fake = tiny.images("real_normal", "test")[0][:8], tiny.images("syn_low", "test")[0][:8]
    for name, x in (("real", real), ("fake", fake)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(quantize16(x)):
            Image.fromarray(img.astype(np.uint16)).save(tmp_path / name / f"{i:03d}.png")
    reference = frd.compute_frd([str(tmp_path / "real"), str(tmp_path / "fake")], num_workers=1)
    ext = RadiomicsFeatures()
    ours = frd_from_features(ext(real), ext(fake))
    assert ours == pytest.approx(reference, abs=1e-5)
    assert frd_from_features(ext(real), ext(real[:4])) < ours  # real images are closer to real than synthetic ones


class MeanStdFeatures:
    """A cheap stand-in extractor for the re-scoring plumbing (never the FRD of a report)."""

    name, prefix, weights_sha = "mean-std-test-features", "", None

    def __call__(self, x):
        x = x.double().numpy().reshape(len(x), -1)
        return np.c_[x.mean(1), x.std(1), (x > 0).mean(1)]


def test_rescore_adds_the_new_metric_and_keeps_the_recorded_values(tmp_path, tiny, capsys):
    results = tmp_path / "results"
    spec = RunSpec("histmatch", data_root=str(tiny.root.parent.parent))
    old_scorer = Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False)
    old_ctx = RunContext(results, old_scorer, quiet=True)
    first = run_one(spec, old_ctx)
    assert all(r["frd"] is None and "--no-frd" in r["unavailable"]["frd"] for r in of_split(first))
    new_scorer = Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", radiomics=MeanStdFeatures())
    assert run_one(spec, RunContext(results, new_scorer, quiet=True)) == first  # without rescore: untouched
    config = (spec.folder(results) / "config.json").read_text()
    again = run_one(spec, RunContext(results, new_scorer, quiet=True, rescore=True))
    assert len(again) == len(first) and (spec.folder(results) / "config.json").read_text() == config
    for old, new in zip(of_split(first), of_split(again), strict=True):
        assert np.isfinite(new["frd"]) and "frd" not in new["unavailable"]
        assert new["rescored"]["metrics"] == ["frd"] and new["rescored"]["max_abs_diff"] == 0.0
        added = ("frd", "frd_lo", "frd_hi", "unavailable", "rescored", "boot", "_sha")
        assert {k: v for k, v in new.items() if k not in added} == {k: v for k, v in old.items() if k not in added}
        assert len(new["boot"]["frd"]) == 200 and {k: new["boot"][k] for k in old["boot"]} == old["boot"]
    assert read_records(spec.folder(results) / "records.jsonl") == again  # checksums rewritten
    by_src = {r["source"]: r["frd"] for r in of_split(again) if r["knob_value"] == 1.0}
    assert by_src["syn_low"] != by_src["syn_high"]


def test_rescore_refuses_a_trained_run_without_its_checkpoint(tmp_path, tiny):
    results = tmp_path / "results"
    spec = RunSpec("histmatch", data_root=str(tiny.root.parent.parent))
    run_one(spec, RunContext(results, Scorer(weights_dir=tmp_path / "w", frd=False), quiet=True))
    (spec.folder(results) / "checkpoints" / "selected.ckpt").unlink()
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", radiomics=MeanStdFeatures()), quiet=True,
                     rescore=True)
    with pytest.raises(RunError, match="selected.ckpt is missing"):
        run_one(spec, ctx)


def test_rescore_cli_reports_runs(tmp_path, tiny, capsys, monkeypatch):
    from benchmark.cli.main import main

    results = tmp_path / "results"
    assert main(["rescore", "--results-dir", str(results)]) == 2
    assert "no finished runs" in capsys.readouterr().err
    spec = RunSpec("identity", data_root=str(tiny.root.parent.parent))
    run_one(spec, RunContext(results, Scorer(weights_dir=tmp_path / "w", frd=False), quiet=True))
    monkeypatch.setattr("benchmark.scoring.scorer.RadiomicsFeatures", MeanStdFeatures)
    assert main(["rescore", "--results-dir", str(results), "--weights-dir", str(tmp_path / "w")]) == 0
    assert "2 record(s) re-scored" in capsys.readouterr().out
    assert all(r["frd"] is not None for r in of_split(read_records(spec.folder(results) / "records.jsonl")))
    cfg = json.loads((spec.folder(results) / "config.json").read_text())
    assert cfg["spec"]["method"] == "identity"


def test_parallel_extraction_equals_serial(tiny):
    pytest.importorskip("frd_score")
    from benchmark.scoring.radiomics import RadiomicsFeatures

    x = tiny.images("real_normal", "test")[0][:RadiomicsFeatures.PARALLEL_MIN + 2]
    serial, parallel = RadiomicsFeatures(workers=1), RadiomicsFeatures(workers=2)
    np.testing.assert_array_equal(parallel(x), serial(x))
