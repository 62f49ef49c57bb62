"""Rank against training compute (`benchmark.reporting.compute`) on records made here with known values: a method
that stops changing between its two largest budgets is converged, one whose fidelity still rises is not, one whose
change cannot be told from its noise is undecided, and a
ranking that flips between the first two budgets and then holds settles at the second."""
import numpy as np
import pandas as pd
import pytest

from benchmark.reporting.compute import (
    budget_rows,
    convergence_labels,
    ranking_settles,
    reversals,
    verdicts,
    write_compute,
)
from benchmark.reporting.compute_figure import compute_figure
from benchmark.reporting.tables import summary

BASE = 2.1e13  # skull-sim/tiny in budgets.yaml
SPREAD = (-0.004, 0.0, 0.004)  # per-seed offsets: a small, known training noise


def records(values: dict) -> pd.DataFrame:
    """{(method, multiple): (nps_dist, ssim_gt)} -> test records of 3 seeds x 2 sources (medshift at two tau values,
    validation choosing 0.3)."""
    rows = []
    for (method, multiple), (nps, gt) in values.items():
        setting = "" if multiple == 1 else f"budget={BASE * multiple:g}"
        name = method if not setting else f"{method} ({setting})"
        knobs = [(0.3, True, 0.0), (0.6, False, 0.05)] if method == "medshift" else [("", True, 0.0)]
        for seed, d in enumerate(SPREAD):
            for source in ("syn_low", "syn_high"):
                for knob, chosen, worse in knobs:
                    rows.append(dict(dataset="skull-sim", preset="tiny", task="sim2real", method=name,
                                     setting=setting, seed=seed, source=source, split="test", step=None,
                                     knob="tau" if method == "medshift" else "", knob_value=knob,
                                     val_choice=chosen, nps_dist=nps + d + worse, nps_flat=nps + d + worse,
                                     ssim_gt=gt + d - worse,
                                     ssim_src=0.7 + d, protocol=3, train_sec=100.0 * multiple))
    return pd.DataFrame(rows)


# The interval of a change between two budgets is ±0.009 here (3 seeds of SPREAD at each, Student t), within the
# thresholds of 0.01 SSIM and 5 % of a realism value above 0.18.
VALUES = {("identity", 1): (0.9, 0.6),
          ("cyclegan", 1): (0.20, 0.85), ("cyclegan", 3): (0.25, 0.88), ("cyclegan", 9): (0.25, 0.88),
          ("medshift", 1): (0.30, 0.70), ("medshift", 3): (0.10, 0.90), ("medshift", 9): (0.05, 0.95),
          ("unet-regression", 1): (0.30, 0.93), ("unet-regression", 3): (0.30, 0.935)}


@pytest.fixture(scope="module")
def table():
    return summary(records(VALUES))


def test_each_method_at_each_budget_at_its_validation_choice(table):
    rows = budget_rows(table)
    assert set(zip(rows["base"], rows["multiple"], strict=True)) == {
        (m, float(k)) for m, k in VALUES if m != "identity"}
    assert (rows.loc[rows["base"] == "medshift", "knob_value"] == 0.3).all()
    at1 = rows[(rows["base"] == "medshift") & (rows["multiple"] == 1)].iloc[0]
    assert at1["budget"] == BASE and at1["method"] == "medshift"  # the 1x fit is the headline fit
    # ranks among the methods at the same budget: at 1x CycleGAN leads on realism, from 3x MedShift
    r = rows.set_index(["base", "multiple"])["realism_rank"]
    assert (r[("cyclegan", 1.0)], r[("medshift", 1.0)]) == (1, 2)
    assert (r[("cyclegan", 3.0)], r[("medshift", 3.0)]) == (2, 1)
    assert rows.loc[rows["base"] == "unet-regression", "realism_rank"].eq(1).all()  # paired: among themselves


def test_verdicts_from_the_two_largest_budgets(table):
    v = verdicts(budget_rows(table)).set_index("method")["verdict"]
    assert v["cyclegan"] == "converged"  # 3x and 9x equal: every interval within its threshold
    assert v["medshift"].startswith("still changing") and "ssim_gt better" in v["medshift"]
    # +0.005 with seed noise of 0.004: not surely a change, and its interval reaches past 0.01
    assert v["unet-regression"] == "undecided (interval wider than the threshold: ssim_gt)"
    # a small realism value's threshold (5 % of 0.12) is narrower than the same interval: undecided, not converged
    small = verdicts(budget_rows(summary(records({("cyclegan", 1): (0.12, 0.85), ("cyclegan", 3): (0.12, 0.85)}))))
    assert small.iloc[0]["verdict"] == "undecided (interval wider than the threshold: nps_dist, nps_flat)"


def test_the_ranking_settles_where_it_stops_changing(table):
    rows = budget_rows(table)
    assert "stops changing from 6.3e+13" in ranking_settles(rows, "sim2real")
    # CycleGAN ahead on realism at 1x, MedShift ahead from 3x: a reversal, named
    assert "medshift passes cyclegan (2.1e+13 → 6.3e+13 FLOPs)" in ranking_settles(rows, "sim2real", "realism_rank")
    assert reversals(rows[rows["base"].isin(["cyclegan", "medshift"])], "realism_rank") == [
        "medshift passes cyclegan (2.1e+13 → 6.3e+13 FLOPs)"]
    # apart at one budget, tied at another: the ranking changes, but no method passes another
    tied = budget_rows(summary(records({("cyclegan", 1): (0.20, 0.85), ("cyclegan", 3): (0.20, 0.85),
                                        ("medshift", 1): (0.30, 0.70), ("medshift", 3): (0.20, 0.85)})))
    assert "no method passes another" in ranking_settles(tied, "sim2real", "realism_rank")
    flat = budget_rows(summary(records({k: v for k, v in VALUES.items() if k[1] != 1 or k[0] == "identity"})))
    assert "the same at every budget" in ranking_settles(flat, "sim2real")


def test_compute_table_and_figure_are_written_only_with_a_budget_axis(table, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    paths = write_compute(table, tmp_path)
    text = paths[0].read_text()
    assert "| medshift" in text and "still changing" in text and "stops changing" in text
    assert "| NPS dist (flat) ↓ " in text and "texture rank" in text  # the headline's texture axis
    for axis in ("realism_rank", "texture_rank", "fidelity_rank", "avg_rank"):  # each axis's ranking on its own line
        assert f"* the ranking ({axis}) of cyclegan, medshift " in text
    # 100 s per fit per 1x, 3 seeds: 1x cyclegan+medshift+unet 900 s, 3x 2700 s, 9x cyclegan+medshift 5400 s
    assert "1×: 0.25 h, 3×: 0.75 h, 9×: 1.50 h; 2.50 h in all" in text
    assert compute_figure(table, "sim2real") is not None
    one = summary(records({k: v for k, v in VALUES.items() if k[1] == 1}))
    assert write_compute(one, tmp_path) == [] and not (tmp_path / "compute.md").exists()
    assert compute_figure(one, "sim2real") is None
    assert np.isfinite(budget_rows(table)["ssim_gt_lo"]).all()


def test_the_headline_says_which_methods_converged(table, tmp_path):
    from benchmark.reporting.report import write_tables

    labels = convergence_labels(table)
    assert labels[("sim2real", "cyclegan")] == "converged 3× → 9×"
    assert labels[("sim2real", "medshift")].startswith("still changing 3× → 9×: ")
    assert "ssim_gt better" in labels[("sim2real", "medshift")]
    assert labels[("sim2real", "unet-regression")] == "undecided 1× → 3×: ssim_gt too wide"
    partial = summary(records({k: v for k, v in VALUES.items() if k[0] != "medshift" or k[1] == 1}))
    assert convergence_labels(partial)[("sim2real", "medshift")] == "one budget (1×)"
    write_tables(table, tmp_path / "a")
    text = (tmp_path / "a" / "headline.md").read_text()
    lines = text.splitlines()
    column = [c.strip() for c in lines[0].split("|")].index("compute")
    cells = {row[3].strip(): row[column].strip()
             for row in (line.split("|") for line in lines[2:] if line.startswith("| sim2real"))}
    assert cells["cyclegan"] == "converged 3× → 9×"
    assert cells["unet-regression"] == "undecided 1× → 3×: ssim_gt too wide"
    assert cells["identity"] == "–" and "\ncompute: " in text  # no training: no verdict
    write_tables(summary(records({k: v for k, v in VALUES.items() if k[1] == 1})), tmp_path / "b")
    text = (tmp_path / "b" / "headline.md").read_text()
    assert "compute" not in text.splitlines()[0] and "\ncompute: " not in text


def test_a_paired_bound_at_one_budget_is_a_horizontal_line_in_the_figure():
    import matplotlib

    matplotlib.use("Agg")
    fig = compute_figure(summary(records({**VALUES, ("pix2pix", 1): (0.13, 0.92)})), "sim2real")
    ax = fig.axes[0]  # the realism metric (nps_dist here)
    lines = {line.get_label(): line for line in ax.get_lines()}
    flat = next(line for label, line in lines.items() if label.startswith("pix2pix") and label.endswith("1× only"))
    assert np.allclose(flat.get_ydata(), 0.13)  # drawn across the axis at its 1x value
    assert not any(label.startswith("pix2pix") and "only" not in label for label in lines)
    # every method with two budgets or more stays a line of points, each shifted sideways by its own amount, less
    # than a tenth of a decade
    shifts = []
    for c in ax.containers:
        x = np.asarray(c.lines[0].get_xdata(), dtype=float)
        shift = np.log10(x / np.array([BASE * k for k in (1, 3, 9)][:len(x)]))
        assert np.allclose(shift, shift[0]) and abs(shift[0]) < 0.1, c.get_label()
        shifts.append(round(shift[0], 6))
    assert len(shifts) == 3 and len(set(shifts)) == 3


def test_utility_of_seeds_that_chose_apart_is_read_at_their_own_choices(tmp_path):
    """attach_utility puts a utility measured at several knob values (each seed at its own choice) on no row of the
    per-value summary; compute.md and its figure read such a method at each seed's own choice (`own_choices`), where
    that utility belongs, instead of showing n/a."""
    import matplotlib

    from benchmark.reporting.compute import own_choices
    from benchmark.reporting.utility_tables import attach_utility

    matplotlib.use("Agg")
    recs = records(VALUES)
    at = (recs["method"] == "medshift") & (recs["seed"] == 1)  # 1x: seed 1 chose tau 0.6
    recs.loc[at, "val_choice"] = recs.loc[at, "knob_value"] == 0.6
    at = (recs["method"] == f"medshift (budget={3 * BASE:g})") & (recs["seed"] == 0)  # 3x: seed 0 chose 0.6
    recs.loc[at, "val_choice"] = recs.loc[at, "knob_value"] == 0.6
    usum = pd.DataFrame([
        dict(dataset="skull-sim", preset="tiny", task="sim2real", method="medshift", n_seeds=3,
             knob_values=(0.3, 0.6, 0.3), dice=0.849, dice_lo=0.821, dice_hi=0.877, dice_ci=0.028, utility_rank=1.0),
        dict(dataset="skull-sim", preset="tiny", task="sim2real", method=f"medshift (budget={3 * BASE:g})", n_seeds=1,
             knob_values=(0.6,), dice=0.84, dice_lo=0.833, dice_hi=0.847, dice_ci=0.007, utility_rank=1.0)])
    joined = attach_utility(summary(recs), usum)
    # the three seeds' utility on no per-value row; seed 0's at 3x on the tau 0.6 row, not the one most seeds chose
    assert joined.loc[joined["method"] == "medshift", "dice"].isna().all()
    at3 = joined[joined["method"] == f"medshift (budget={3 * BASE:g})"].set_index("knob_value")["dice"]
    assert at3[0.6] == 0.84 and np.isnan(at3[0.3])

    def medshift_rows(text):
        return [next(line for line in text.splitlines() if line.startswith("| medshift ") and f" {b} |" in line)
                for b in ("2.1e+13", "6.3e+13")]

    at1, at3 = medshift_rows(write_compute(joined, tmp_path, own_choices(recs, None, usum))[0].read_text())
    assert "| 0.3/0.6/0.3 |" in at1.replace("tau=", "") and "| 0.849 ± 0.028 " in at1
    assert "| 0.6/0.3/0.3 |" in at3.replace("tau=", "") and "| 0.840 ± 0.007 " in at3
    at1, at3 = medshift_rows(write_compute(joined, tmp_path)[0].read_text())  # without: the most-chosen value, n/a
    assert "0.849" not in at1 and "0.840" not in at3
    ax = compute_figure(joined, "sim2real", own_choices(recs, None, usum)).axes[-1]  # the utility panel
    from benchmark.reporting.styles import method_style

    medshift = next(c for c in ax.containers if c.get_label() == method_style("medshift")["label"])
    assert np.allclose(np.asarray(medshift.lines[0].get_ydata(), dtype=float), [0.849, 0.84, np.nan], equal_nan=True)


def test_one_sentence_where_every_axis_says_the_same(tmp_path):
    one_method = summary(records({k: v for k, v in VALUES.items() if k[0] in ("identity", "medshift")}))
    text = write_compute(one_method, tmp_path)[0].read_text()
    assert text.count("no ranking to compare") == 1 and "Ranking across budgets: fewer than two" in text


def test_a_method_whose_seeds_chose_apart_is_read_at_each_seeds_own_choice():
    """Seed 1 of MedShift at 1x chooses tau 0.6 (worse by 0.05 SSIM (gt)): with `own_choices`, its point is the
    mean of each seed at its own choice, as chosen.md reads it; without, the value most seeds chose."""
    from benchmark.reporting.compute import own_choices

    recs = records(VALUES)
    apart = (recs["method"] == "medshift") & (recs["seed"] == 1)
    recs.loc[apart, "val_choice"] = recs.loc[apart, "knob_value"] == 0.6
    at1 = (lambda rows: rows[(rows["base"] == "medshift") & (rows["multiple"] == 1)].iloc[0])
    plain = at1(budget_rows(summary(recs)))
    assert plain["knob_value"] == 0.3 and plain["ssim_gt"] == pytest.approx(0.70)
    own = at1(budget_rows(summary(recs), own_choices(recs)))
    assert own["knob_value"] == "0.3/0.6/0.3" and own["budget"] == BASE
    assert own["ssim_gt"] == pytest.approx((0.696 + 0.65 + 0.704) / 3)
    # the seeds that agree keep their row; the ranks are made again over the replaced rows
    rows = budget_rows(summary(recs), own_choices(recs))
    assert (rows.loc[(rows["base"] == "medshift") & (rows["multiple"] > 1), "knob_value"] == 0.3).all()
    assert rows["realism_rank"].notna().all()


def test_a_budget_fitted_on_fewer_seeds_is_compared_on_the_seeds_both_have(tmp_path):
    """9x on seed 0 only, 3x on seeds 0-2, seed 0 scoring 0.06 SSIM (gt) above seeds 1-2 at 3x and the same at 9x:
    compute did not change seed 0, so the change is taken seed 0 against seed 0 (zero, within the threshold), not
    seed 0 against the mean of three (+0.04, seed 0's own offset read as a change of compute)."""
    rng = np.random.default_rng(0)
    rows = []
    for multiple, seeds in ((1, (0, 1, 2)), (3, (0, 1, 2)), (9, (0,))):
        setting = "" if multiple == 1 else f"budget={BASE * multiple:g}"
        for seed in seeds:
            gt = 0.90 + (0.06 if seed == 0 else 0.0) + (0.0 if multiple > 1 else -0.05)
            for source in ("syn_low", "syn_high"):
                value = dict(nps_dist=0.30, nps_flat=0.30, ssim_gt=gt, ssim_src=0.70)
                rows.append(dict(dataset="skull-sim", preset="tiny", task="sim2real", method="medshift" + (
                    f" ({setting})" if setting else ""), setting=setting, seed=seed, source=source, split="test",
                    step=None, knob="", knob_value="", val_choice=True, protocol=3, train_sec=100.0 * multiple,
                    boot={k: list(v + rng.normal(0, 0.001, 50)) for k, v in value.items()}, **value))
    table = summary(pd.DataFrame(rows))
    v = verdicts(budget_rows(table)).iloc[0]
    assert v["× preset" if "× preset" in v else "span"] == "3× → 9×" and v["seeds"].startswith("seed 0 only")
    change = (lambda verdict: float(verdict["change"].split("ssim_gt ")[1].split()[0]))
    assert abs(change(v)) < 0.002 and v["verdict"] == "converged"
    assert convergence_labels(table)[("sim2real", "medshift")] == "converged 3× → 9× (seed 0)"
    text = write_compute(table, tmp_path)[0].read_text()
    assert "Rows of one seed (medshift at 9×)" in text and "seed 0 only: training noise not covered" in text
    # the same seeds at both budgets (1x -> 3x, all three): compared as they are, seed noise included
    both = verdicts(budget_rows(summary(pd.DataFrame([r for r in rows if "1.89e+14" not in r["setting"]])))).iloc[0]
    assert both["seeds"] == "–" and change(both) == pytest.approx(0.05, abs=0.002)


def test_a_sample_restricted_to_some_of_its_seeds():
    from benchmark.reporting.stats import Sample

    s = Sample(np.array([0.1, 0.2, 0.3]), np.arange(6.0).reshape(3, 2), (0, 1, 2))
    sub = s.on_seeds((2, 0))
    assert sub.ids == (0, 2) and np.allclose(sub.seeds, [0.1, 0.3]) and np.allclose(sub.replicates, [[0, 1], [4, 5]])
    with pytest.raises(ValueError, match="seeds \\[3\\] are not all among"):
        s.on_seeds((3,))


def test_the_ranking_across_budgets_is_also_read_on_the_seeds_every_fit_shares(table, tmp_path):
    """9x on seed 0 only: compute.md ranks every budget again on seed 0 alone, each point seed 0's own value (its
    own knob choice where the seeds chose apart); with every seed at every budget there is nothing to add."""
    from benchmark.reporting.compute import on_shared_seeds, own_choices

    assert on_shared_seeds(budget_rows(table)) is None
    recs = records(VALUES)
    recs = recs[~recs["method"].str.contains(f"budget={9 * BASE:g}", regex=False) | (recs["seed"] == 0)]
    at = (recs["method"] == "medshift") & (recs["seed"] == 1)  # 1x: seed 1 chose tau 0.6
    recs.loc[at, "val_choice"] = recs.loc[at, "knob_value"] == 0.6
    rows = budget_rows(summary(recs), own_choices(recs))
    same = on_shared_seeds(rows)
    assert set(same["base"]) == {"cyclegan", "medshift"}  # the U-Net has no 9x: not at every budget
    assert (same["n_seeds"] == 1).all() and len(same) == 6
    at1 = same[(same["base"] == "medshift") & (same["multiple"] == 1)].iloc[0]
    assert at1["knob_value"] == "0.3" and at1["ssim_gt"] == pytest.approx(0.70 + SPREAD[0])
    assert at1["ssim_gt_hi"] == at1["ssim_gt_lo"] or np.isnan(at1["ssim_gt_hi"])  # one seed, no replicates
    assert same.loc[same["multiple"] == 9, "ssim_gt"].tolist() == pytest.approx(
        rows.loc[rows["multiple"] == 9, "ssim_gt"].tolist())  # 9x was seed 0 already
    assert (same["realism_rank"] == 1).all()  # one seed without test-set replicates: nothing is surely apart
    text = write_compute(summary(recs), tmp_path, own_choices(recs))[0].read_text()
    assert "### On seed 0 alone at every budget" in text and "Ranking across budgets on seed 0" in text
    # the figure: the 9x points (one seed) hollow and off the methods' solid lines
    import matplotlib

    matplotlib.use("Agg")
    ax = compute_figure(summary(recs), "sim2real", own_choices(recs)).axes[0]
    hollow = [c for c in ax.containers if c.lines[0].get_markerfacecolor() == "white"]
    solid = [c for c in ax.containers if c.lines[0].get_markerfacecolor() != "white"]
    assert len(hollow) == 2 and all(np.allclose(np.asarray(c.lines[0].get_xdata()) / (9 * BASE), 1, atol=0.1)
                                    for c in hollow)
    assert all(np.asarray(c.lines[0].get_xdata()).max() < 4 * BASE for c in solid)
