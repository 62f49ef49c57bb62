"""Golden test of the summary tables from committed fixture records (see tests/data/make_fixture.py)."""
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.reporting.load import load_records
from benchmark.reporting.report import write_tables
from benchmark.reporting.tables import formatted, summary

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def table():
    return summary(load_records(DATA / "records"))


def test_summary_matches_golden_file(table, tmp_path):
    written = write_tables(table, tmp_path)
    got = pd.read_csv(written[0])
    golden = DATA / "expected_summary.csv"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(written[0].read_text())
    pd.testing.assert_frame_equal(got, pd.read_csv(golden), check_exact=False, rtol=1e-9)
    assert {p.suffix for p in written} == {".csv", ".md", ".tex"}
    assert "medshift | tau=0.6" in (tmp_path / "headline.md").read_text()


def test_mean_and_interval_by_hand(table):
    row = table[(table["method"] == "medshift") & (table["knob_value"] == 0.6)].iloc[0]
    per_seed = [(0.55 + 0.57) / 2, (0.53 + 0.55) / 2]  # sources averaged within each seed first
    assert row["ssim_src"] == pytest.approx(sum(per_seed) / 2)
    half = stats.t.ppf(0.975, 1) * pd.Series(per_seed).std() / 2**0.5
    assert row["ssim_src_ci"] == pytest.approx(half) and row["n_seeds"] == 2


def test_ranks_follow_the_paper_convention(table):
    t = table.set_index(["method", "knob_value"])
    assert t.loc[("identity", ""), ["realism_rank", "structure_rank", "fidelity_rank"]].isna().all()  # reference row
    ranked = t.drop(index=("identity", ""))
    assert (ranked["realism_by"] == "fid").all()
    # FID 152 (cyclegan), 173 (tau 0.3), 201 (tau 0.6), two seeds each, no replicates: ranks come from the interval of
    # each pair's difference (Welch-Satterthwaite t over the seeds), which separates every pair here although the
    # marginal intervals of cyclegan and tau 0.3 overlap (they tied under the old overlap rule)
    assert ranked["realism_rank"].to_dict() == {("medshift", 0.6): 3, ("medshift", 0.3): 2, ("cyclegan", ""): 1}
    assert t.loc[("medshift", 0.6), "avg_rank"] == pytest.approx(
        (t.loc[("medshift", 0.6), "realism_rank"] + t.loc[("medshift", 0.6), "structure_rank"]) / 2)


def test_overlap_rank_by_hand():
    from benchmark.reporting.tables import overlap_rank

    mean = pd.Series([1.0, 2.0, 3.0, 10.0])
    lo, hi = mean - 0.6, mean + 0.6  # 1 and 2 overlap, 2 and 3 overlap, 1 and 3 do not, 10 is apart
    assert overlap_rank(mean, lo, hi, higher_is_better=False).tolist() == [1, 1, 2, 4]
    assert overlap_rank(mean, lo, hi, higher_is_better=True).tolist() == [3, 2, 2, 1]


def test_interval_combines_subject_bootstrap_and_seeds():
    """One seed: the normal interval of its subject-bootstrap replicates (sources averaged) around the estimate.
    Several seeds: `stats.interval` of the per-seed values and their replicates (t over seeds plus test-set spread)."""
    import numpy as np
    from scipy import stats as st

    from benchmark.protocol.records import RECORD_KEYS
    from benchmark.reporting.stats import Sample, interval

    rng = np.random.default_rng(0)
    reps = {(seed, src): rng.normal(0.7 + 0.01 * seed, 0.02, 200) for seed in (0, 1, 2) for src in ("a", "b")}
    rows = []
    for (seed, src), r in reps.items():
        rec = {k: None for k in RECORD_KEYS}
        rec.update(method="m", dataset="d", preset="p", task="t", seed=seed, source=src, knob="", knob_value="",
                   ssim_gt=float(r.mean()), boot={"ssim_gt": r.tolist()}, setting="")
        rows.append(rec)
    df = pd.DataFrame(rows)
    one = summary(df[df["seed"] == 0]).iloc[0]
    per_seed0 = (reps[(0, "a")] + reps[(0, "b")]) / 2
    half = st.norm.ppf(0.975) * per_seed0.std(ddof=1)
    assert (one["ssim_gt_lo"], one["ssim_gt_hi"]) == pytest.approx((one["ssim_gt"] - half, one["ssim_gt"] + half))
    three = summary(df).iloc[0]
    stacked = np.stack([(reps[(s, "a")] + reps[(s, "b")]) / 2 for s in (0, 1, 2)])
    seeds = np.array([df[df["seed"] == s]["ssim_gt"].mean() for s in (0, 1, 2)])
    iv = interval(Sample(seeds, stacked))
    assert (three["ssim_gt_lo"], three["ssim_gt_hi"]) == pytest.approx((iv.lo, iv.hi))
    assert three["ssim_gt_lo"] < three["ssim_gt"] < three["ssim_gt_hi"]
    assert three["ssim_gt_ci"] == pytest.approx((three["ssim_gt_hi"] - three["ssim_gt_lo"]) / 2)


def test_mixed_protocols_and_two_fits_of_one_point_are_refused(tmp_path):
    import json

    from benchmark.protocol.records import record_sha

    lines = (DATA / "records" / "fixture.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    newer = dict(first, protocol=2)
    newer.pop("_sha")
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.jsonl").write_text(json.dumps(dict(newer, _sha=record_sha(newer))) + "\n")
    with pytest.raises(ValueError, match="protocol versions \\[1, 2\\] are mixed"):
        load_records(tmp_path)
    (tmp_path / "b.jsonl").write_text(lines[0] + "\n")  # the same point recorded by a second fit
    with pytest.raises(ValueError, match="two fits record identity seed 0 .*one fit per"):
        load_records(tmp_path)


def test_markdown_has_arrows_bold_best_and_single_points(table):
    md = formatted(table)
    assert "FID ↓" in md.columns and "SSIM (src) ↑" in md.columns
    fid = dict(zip(md["method"] + md["knob"], md["FID ↓"], strict=True))
    assert fid["cyclegan–"].startswith("**152.0") and not fid["identity–"].startswith("**")
    assert set(md[md["method"] == "cyclegan"]["knob"]) == {"–"}  # no knob: one point


def test_variants_are_separate_rows_and_keep_their_grid(tmp_path):
    """Records of a `--set` variant (field `setting`) become their own rows: in the variants table, not the headline."""
    import json

    from benchmark.protocol.records import record_sha
    from benchmark.reporting.tables import headline

    lines = (DATA / "records" / "fixture.jsonl").read_text().splitlines()
    variant = []
    for line in lines:
        r = json.loads(line)
        if r["method"] == "medshift":
            r.pop("_sha")
            r["setting"], r["ssim_src"] = "guidance=3.0", r["ssim_src"] - 0.1
            r["_sha"] = record_sha(r)
            variant.append(json.dumps(r))
    (tmp_path / "all.jsonl").write_text("\n".join(lines + variant) + "\n")
    table = summary(load_records(tmp_path))
    base, var = (table[table["method"] == m] for m in ("medshift", "medshift (guidance=3.0)"))
    assert len(var) == len(base) > 0
    assert var["ssim_src"].to_numpy() == pytest.approx(base["ssim_src"].to_numpy() - 0.1)
    shown = set(headline(table)["method"])
    assert "medshift" in shown and "medshift (guidance=3.0)" not in shown
    var_table = headline(table, variants=True)
    assert list(dict.fromkeys(var_table["method"])) == ["medshift", "medshift (guidance=3.0)"]
    assert len(var_table) == 2 * len(headline(table).query("method == 'medshift'"))
    paths = write_tables(table, tmp_path / "tables")
    assert (tmp_path / "tables" / "variants.md") in paths and "guidance=3.0" in paths[-1].read_text()
    assert "guidance=3.0" not in (tmp_path / "tables" / "headline.md").read_text()


def test_each_table_names_the_metric_it_was_ranked_by(tmp_path):
    """An off-grid curve point without FID makes the summary rank by nps_dist; the headline (grid rows only, all
    with FID) still ranks by FID, and each footer says which."""
    import json

    from benchmark.protocol.records import record_sha
    from benchmark.reporting.tables import headline

    lines = (DATA / "records" / "fixture.jsonl").read_text().splitlines()
    extra = []
    for line in lines:
        r = json.loads(line)
        if r["method"] == "medshift" and r["knob_value"] == 0.6:
            r.pop("_sha")
            r["knob_value"], r["fid"] = 0.9, None
            r["_sha"] = record_sha(r)
            extra.append(json.dumps(r))
    (tmp_path / "all.jsonl").write_text("\n".join(lines + extra) + "\n")
    table = summary(load_records(tmp_path))
    assert set(table["realism_by"].dropna()) == {"nps_dist"} and set(headline(table)["realism_by"].dropna()) == {"fid"}
    write_tables(table, tmp_path / "tables")
    assert "realism rank (global statistics) by nps_dist" in (tmp_path / "tables" / "summary.md").read_text()
    assert "realism rank (global statistics) by fid" in (tmp_path / "tables" / "headline.md").read_text()


def test_collect_and_figures_build_without_torch(tmp_path, micro):
    """Building tables needs no torch: method facts come from the runs' config.json, metric declarations and
    statistics import torch only to compute a metric."""
    import subprocess
    import sys

    from benchmark.protocol.config import RunSpec
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer

    ctx = RunContext(tmp_path, Scorer(weights_dir=tmp_path / "w", cache_dir=tmp_path / "c", frd=False), quiet=True)
    run_one(RunSpec("identity", preset="micro", data_root=str(micro.root.parent.parent)), ctx)
    code = ("import sys; from benchmark.cli.main import main; "
            f"assert main(['collect', '--results-dir', {str(tmp_path)!r}]) == 0; "
            f"assert main(['figures', '--results-dir', {str(tmp_path)!r}]) == 0; "
            "print(sorted(m for m in ('torch', 'lightning', 'methods') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[3])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "tables" / "summary.csv").is_file()


def test_the_gap_to_the_paired_bound_uses_paired_replicates():
    """gaps.md: the best unpaired row against the best paired bound, the difference signed so that > 0 favours the
    bound, its interval (`stats.difference`) from the replicate-wise differences (the same test-subject draws)."""
    import numpy as np

    from benchmark.protocol.records import RECORD_KEYS
    from benchmark.reporting.tables import headline
    from benchmark.reporting.utility_tables import paired_gap

    rng = np.random.default_rng(1)
    rows, reps = [], {}
    for method, level in (("cyclegan", 0.90), ("medshift", 0.80), ("unet-regression", 0.92)):
        common = rng.normal(0, 0.01, 200)  # subject-draw effect shared by every method
        reps[method] = level + common + rng.normal(0, 0.002, 200)
        knob = ("tau", 0.6) if method == "medshift" else ("", "")
        rec = {k: None for k in RECORD_KEYS}
        rec.update(method=method, dataset="d", preset="p", task="t", seed=0, source="s", knob=knob[0],
                   knob_value=knob[1], ssim_gt=float(level), boot={"ssim_gt": reps[method].tolist()}, setting="",
                   split="test")
        rows.append(rec)
    df = pd.DataFrame(rows)
    gaps = paired_gap(df, headline(summary(df)))
    row = gaps[gaps["metric"].str.startswith("SSIM (gt)")].iloc[0]
    assert row["best_unpaired"].startswith("cyclegan") and row["best_paired"].startswith("unet-regression")
    assert row["advantage_of_pairs"] == pytest.approx(0.02)
    diff = reps["unet-regression"] - reps["cyclegan"]
    half = 1.959964 * diff.std(ddof=1)  # one seed each: the test-set part alone, from the replicate-wise differences
    assert (row["lo"], row["hi"]) == pytest.approx((0.02 - half, 0.02 + half), rel=1e-5)


def test_utility_correlations_are_signed_so_that_one_means_the_same_order():
    from benchmark.reporting.utility_tables import utility_correlations

    table = pd.DataFrame(dict(task="t", method=["cyclegan", "medshift", "sdedit", "contourdiff", "identity",
                                                "medshift-onestep"],
                              dice=[0.9, 0.8, 0.7, 0.6, 0.5, 0.1], frd=[5.0, 6.0, 7.0, 8.0, 1.0, 1.0],
                              ssim_src=[0.1, 0.2, 0.3, 0.4, 1.0, 1.0]))
    corr = utility_correlations(table).set_index("metric")
    assert corr.loc["FRD ↓", "spearman_rho"] == pytest.approx(1.0)  # lower FRD, higher utility: the same order
    # identity (a reference row) and the student (a copy of MedShift, distilled) are left out
    assert corr.loc["SSIM (src) ↑", "spearman_rho"] == pytest.approx(-1.0) and (corr["methods"] == 4).all()


def test_structure_is_ranked_by_its_distance_to_the_ideal_point(tmp_path):
    """A perfect translation of an aligned scene is the aligned image: its SSIM to the source is no translation's
    SSIM (gt), not 1. The gap |SSIM (src) - ideal| is computed per seed from the records, and ranks structure; with
    the ideal moved below every method (under-translation everywhere), the lowest SSIM (src) is the closest."""
    import json

    from benchmark.protocol.records import record_sha
    from benchmark.reporting.tables import structure_ideal

    recs = [json.loads(line) for line in (DATA / "records" / "fixture.jsonl").read_text().splitlines()]
    ideal = np.mean([r["ssim_gt"] for r in recs if r["method"] == "identity"])
    table = summary(load_records(DATA / "records"))
    assert structure_ideal(table, "skull-sim", "tiny", "sim2real") == pytest.approx(ideal)
    for (method, knob), g in pd.DataFrame(recs).fillna({"knob_value": -1}).groupby(["method", "knob_value"]):
        per_seed = g.groupby("seed")["ssim_src"].mean()
        row = table[(table["method"] == method) & (table["knob_value"].replace("", -1) == knob)].iloc[0]
        assert row["ssim_src_gap"] == pytest.approx(np.mean(np.abs(per_seed - ideal)))
    assert set(table["structure_by"].dropna()) == {"ssim_src_gap"}
    low = [dict(r, ssim_gt=0.30) if r["method"] == "identity" else r for r in recs]
    low = [dict({k: v for k, v in r.items() if k != "_sha"}, _sha=record_sha(r)) for r in low]
    (tmp_path / "low.jsonl").write_text("".join(json.dumps(r) + "\n" for r in low))
    moved = summary(load_records(tmp_path))
    ranked = moved[moved["structure_rank"].notna()].sort_values("ssim_src")
    assert list(ranked["ssim_src_gap"]) == sorted(ranked["ssim_src_gap"])  # lowest SSIM (src) = closest to 0.30
    assert ranked["structure_rank"].iloc[0] <= ranked["structure_rank"].iloc[-1]


def test_a_realism_metric_that_failed_validity_never_ranks(table):
    """Two realism axes, each ranked only by a metric that passed validity on the records' preset."""
    df = load_records(DATA / "records")
    only_spectrum = summary(df, {("skull-sim", "tiny"): ["nps_dist"]})  # FID failed there
    assert set(only_spectrum["realism_by"].dropna()) == {"nps_dist"}
    nothing = summary(df, {("skull-sim", "tiny"): []})
    assert nothing["realism_rank"].isna().all() and nothing["realism_by"].isna().all()
    assert nothing["texture_rank"].isna().all()  # the fixture has no nps_flat: no texture rank either
    from benchmark.reporting.report import rank_note

    assert "realism rank (global statistics): none" in rank_note(nothing)
    assert "not checked" in rank_note(table) and "not checked" not in rank_note(only_spectrum)


def test_the_ceiling_on_fidelity_is_printed_under_the_tables_of_its_data(table, tmp_path):
    from benchmark.scoring.ceiling import write_ceiling

    d, p = table["dataset"].iloc[0], table["preset"].iloc[0]
    entry = {"ssim_gt": [0.9871, 0.98, 0.99], "psnr_gt": [41.25, 40.0, 42.0], "share_flat": 0.001, "share_bone": 0.02}
    write_ceiling({"split": "test", "n_images": 6, "n_subjects": 2, "real_normal": entry}, "other/tiny", tmp_path)
    write_tables(table, tmp_path)
    assert "Ceiling on fidelity" not in (tmp_path / "summary.md").read_text()  # another dataset's ceiling
    write_ceiling({"split": "test", "n_images": 6, "n_subjects": 2, "real_normal": entry}, f"{d}/{p}", tmp_path)
    write_tables(table, tmp_path)
    for name in ("summary.md", "headline.md"):
        assert f"Ceiling on fidelity of {d}/{p}" in (tmp_path / name).read_text()
        assert "real_normal 0.9871 / 41.2 dB" in (tmp_path / name).read_text()
    assert "| other/tiny (6 test images, 2 subjects) | real_normal | 0.9871 [0.9800, 0.9900]" in \
        (tmp_path / "ceiling.md").read_text()
