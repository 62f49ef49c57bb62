"""Translations made outside the suite: `export` writes the sources, a translator written here independently
(domain-level histogram matching in numpy, from the export alone) translates them, `score` scores them; the records
equal those of the built-in `histmatch` run on the same images."""
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from runs import micro_ctx, micro_spec, records_of_test_split

from benchmark.errors import RunError
from benchmark.orchestration.external import export_task, parse_knob, parse_meta, score_external
from benchmark.run.stages import run_one

N_BINS = 4096  # histmatch's default


def _read(path):
    return np.asarray(Image.open(path), dtype=np.float64) / 65535.0


def histogram_matching(export, out, blend, fmt):
    """Pool each domain's training pixels (the export's sources/train and target/train) into a histogram of
    N_BINS levels over [0, 1], map every source pixel through F_target^-1(F_source(v)) and blend with the source."""
    manifest = pd.read_csv(export / "manifest.csv")
    folder = {d: ("target" if d == manifest["target"].iloc[0] else "sources") for d in manifest["domain"].unique()}
    cdf = {}
    for domain, rows in manifest[manifest["split"] == "train"].groupby("domain"):
        counts = np.zeros(N_BINS)
        for i in rows["id"]:
            np.add.at(counts, np.rint(_read(export / folder[domain] / "train" / f"{i}.png") * (N_BINS - 1)).astype(int),
                      1)
        cdf[domain] = np.cumsum(counts) / counts.sum()
    target = manifest["target"].iloc[0]
    levels = np.linspace(0.0, 1.0, N_BINS)
    for _, r in manifest[manifest["domain"] != target].iterrows():
        x = _read(export / "sources" / r["split"] / f"{r['id']}.png")
        p = cdf[r["domain"]][np.rint(x * (N_BINS - 1)).astype(int)]
        matched = levels[np.minimum(np.searchsorted(cdf[target], p, side="left"), N_BINS - 1)]
        y = np.clip((1 - blend) * x + blend * matched, 0.0, 1.0)
        path = out / r["split"] / f"{r['id']}.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "png":
            Image.fromarray(np.rint(y * 65535).astype(np.uint16)).save(path)
        else:
            Image.fromarray(y.astype(np.float32), mode="F").save(path)


KEYS = ("ssim_src", "psnr_src", "ssim_gt", "psnr_gt", "nps_dist", "nps_flat", "hist_w1", "ssim_gt_lo", "ssim_gt_hi")


@pytest.fixture(scope="module")
def external_run(micro, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("external")
    builtin = run_one(micro_spec(micro, "histmatch", max_steps=None, overrides=()), micro_ctx(tmp / "a"))
    export = export_task(micro, "sim2real", tmp / "export")
    results = tmp / "b"
    ctx = micro_ctx(results)
    fields = dict(dataset="skull-sim", preset="micro", seed=0, data_seed=0, dataset_config=None,
                  data_root=str(micro.root.parent.parent))
    for blend, fmt in ((1.0, "tif"), (0.5, "png")):
        histogram_matching(export, tmp / f"blend{blend}", blend, fmt)
        records = score_external(results, "my-histmatch", tmp / f"blend{blend}", "sim2real", micro, fields,
                                 ctx.scorer, knob=("blend", blend), meta=parse_meta(["nfe=0", "note=numpy"]),
                                 progress=lambda *_: None)
    return dict(builtin=builtin, records=records, export=export, results=results, tmp=tmp, fields=fields, ctx=ctx)


def test_scored_translations_equal_the_builtin_run_on_the_same_images(external_run):
    builtin = {(r["source"], r["knob_value"]): r for r in records_of_test_split(external_run["builtin"])}
    ours = records_of_test_split(external_run["records"])
    assert {(r["source"], r["knob_value"]) for r in ours} == {(s, b) for s in ("syn_low", "syn_high")
                                                              for b in (1.0, 0.5)}
    for r in ours:
        ref = builtin[(r["source"], r["knob_value"])]
        tol = 1e-4 if r["knob_value"] == 1.0 else 2e-3  # float32 TIFF; 16-bit PNG quantises to 1.5e-5
        for k in KEYS:
            assert r[k] == pytest.approx(ref[k], rel=tol, abs=tol), (k, r["knob_value"])
        assert r["n_images"] == ref["n_images"] and r["n_subjects"] == ref["n_subjects"]
        assert r["group"] == "external" and r["meta"] == {"nfe": 0.0, "note": "numpy"} and r["nfe"] == 0.0
        assert len(r["translations_sha256"]) == 64
    # validation chose among the two folders as it does for the built-in run (where its choice is one of them)
    chosen = {r["knob_value"] for r in ours if r["val_choice"]}
    theirs = {r["knob_value"] for r in builtin.values() if r["val_choice"]}
    assert len(chosen) == 1 and (chosen == theirs or not theirs <= {1.0, 0.5})


def test_the_export_holds_what_a_translator_needs(external_run, micro):
    export = external_run["export"]
    manifest = pd.read_csv(export / "manifest.csv")
    test = manifest[manifest["split"] == "test"]
    assert test["scored"].all() and set(test["domain"]) == {"syn_low", "syn_high"}
    assert len(test) == len(micro.rows("real_normal", "test"))  # each test scene once, from one source
    assert set(manifest.loc[manifest["domain"] == "real_normal", "split"]) == {"train"}
    row = manifest[manifest["split"] == "val"].iloc[0]
    src = micro.manifest.set_index("id").loc[row["id"], "path"]
    assert np.array_equal(np.asarray(Image.open(export / "sources" / "val" / f"{row['id']}.png")),
                          np.asarray(Image.open(micro.root / src)))  # the dataset's own 16-bit values
    assert "<translations>/<split>/<id>.png" in (export / "README.md").read_text()


def test_collect_and_utility_include_the_external_method(external_run, micro):
    from benchmark.orchestration.utility import utility_record
    from benchmark.reporting.report import build_report

    results = external_run["results"]
    report = build_report(results, results / "tables")
    row = report.table[report.table["method"] == "my-histmatch"]
    assert len(row) >= 2 and set(row["knob_value"]) >= {1.0, 0.5}
    assert "external" in (results / "tables" / "summary.md").read_text()
    assert "outside the suite" in (results / "tables" / "headline.md").read_text()
    assert "outside the suite" in (results / "tables" / "table1-sim2real.tex").read_text()
    small = dict(ngf=4, iterations=4, batch_size=4, lr=1e-3)
    rec = utility_record(results, "my-histmatch", "skull-sim", "micro", 0, "sim2real",
                         data_root=external_run["fields"]["data_root"], settings=small)
    cfg = json.loads(next(results.glob("runs/my-histmatch/*/*/config.json")).read_text())
    assert rec["translator_run"] == cfg["run_id"] and rec["n_train"] == sum(
        len(micro.rows(s, "train")) for s in ("syn_low", "syn_high"))
    assert rec["knob_value"] in (1.0, 0.5) and 0 <= rec["dice"] <= 1


def test_a_wrong_set_of_translations_is_refused_with_the_file_named(external_run, micro):
    tmp, fields, scorer = external_run["tmp"], external_run["fields"], external_run["ctx"].scorer
    good = tmp / "blend0.5"

    def score(folder):
        return score_external(tmp / "c", "bad", folder, "sim2real", micro, fields, scorer, progress=lambda *_: None)

    import shutil

    def copy(name):
        out = tmp / name
        shutil.copytree(good, out)
        return out, sorted((out / "test").iterdir())[0]

    folder, first = copy("missing")
    first.unlink()
    with pytest.raises(RunError, match=f"missing.*{first.stem}"):
        score(folder)
    folder, first = copy("extra")
    (folder / "test" / "stray.png").write_bytes(first.read_bytes())
    with pytest.raises(RunError, match="stray.png"):
        score(folder)
    folder, first = copy("small")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(first)
    with pytest.raises(RunError, match=f"{first.name}: 8 x 8 pixels"):
        score(folder)
    folder, first = copy("eightbit")
    Image.fromarray(np.zeros((micro.size,) * 2, np.uint8)).save(first)
    with pytest.raises(RunError, match=f"{first.name}: a L PNG"):
        score(folder)
    folder, first = copy("nan")
    first.unlink()
    Image.fromarray(np.full((micro.size,) * 2, np.nan, np.float32), mode="F").save(first.with_suffix(".tif"))
    with pytest.raises(RunError, match="NaN"):
        score(folder)
    with pytest.raises(RunError, match="built-in"):
        score_external(tmp / "c", "histmatch", good, "sim2real", micro, fields, scorer)
    with pytest.raises(RunError, match="NAME=VALUE"):
        parse_knob("0.5")
    assert not (tmp / "c" / "runs").exists() or not list((tmp / "c" / "runs").rglob("done"))


def test_the_commands_export_and_refuse_in_one_line(micro, tmp_path):
    import subprocess
    import sys

    from runs import ONE_THREAD, ROOT

    base = [sys.executable, "-m", "benchmark"]
    data = ["--preset", "micro", "--data-root", str(micro.root.parent.parent), "--results-dir", str(tmp_path / "r")]
    out = subprocess.run(base + ["export", "--split", "test", "--out", str(tmp_path / "x"), *data], cwd=ROOT,
                         env=ONE_THREAD, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "x" / "sim2real" / "sources" / "test").glob("*.png"))) == len(
        micro.rows("real_normal", "test"))
    out = subprocess.run(base + ["score", "--name", "cyclegan", "--translations", str(tmp_path / "x"), *data],
                         cwd=ROOT, env=ONE_THREAD, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "built-in" in out.stderr
