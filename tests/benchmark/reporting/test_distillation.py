"""Students against their teachers (`benchmark.reporting.distillation`) on records made here with known values: the
teacher's interval (Student t over 3 seeds, checked in closed form), inside/outside, the order over tau, the pass
criterion the README states; rows of non-students are left out."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.reporting.distillation import distillation_table, write_distillation
from benchmark.reporting.tables import summary

SPREAD = (-0.004, 0.0, 0.004)


def records(ssim_gt: dict) -> pd.DataFrame:
    """{(method, setting): {tau: ssim_gt}} -> test records of 3 seeds x 2 sources with a known spread over seeds."""
    rows = []
    for (method, setting), by_tau in ssim_gt.items():
        name = f"{method} ({setting})" if setting else method
        for seed, d in enumerate(SPREAD):
            for source in ("syn_low", "syn_high"):
                for tau, gt in by_tau.items():
                    rows.append(dict(dataset="skull-sim", preset="tiny", task="sim2real", method=name,
                                     setting=setting, seed=seed, source=source, split="test", step=None,
                                     knob="tau" if tau is not None else "", knob_value=tau if tau is not None else "",
                                     val_choice=tau in (0.3, None), ssim_gt=gt + d, ssim_src=0.9 - gt + d,
                                     protocol=3, nfe=4 if "fewstep" in method else 28))
    return pd.DataFrame(rows)


HALF = stats.t.ppf(0.975, 2) * np.std(SPREAD, ddof=1) / np.sqrt(3)  # the teacher's half-width: 0.0099


@pytest.fixture(scope="module")
def table():
    return summary(records({
        ("medshift", ""): {0.6: 0.75, 0.3: 0.80},
        ("medshift-fewstep", ""): {0.6: 0.75 + 0.5 * HALF, 0.3: 0.80 - 0.5 * HALF},  # inside, same order
        ("medshift-fewstep", "jumps=1"): {0.6: 0.79, 0.3: 0.76},  # outside, order reversed
        ("cyclegan", ""): {None: 0.9}}))


def test_inside_the_teachers_interval_and_the_order_over_tau(table):
    t = distillation_table(table)
    assert set(t["student"]) == {"medshift-fewstep", "medshift-fewstep (jumps=1)"} and set(t["teacher"]) == {"medshift"}
    good = t[t["student"] == "medshift-fewstep"].set_index("tau")
    assert list(good.index) == ["0.6", "0.3"] and (good["pass"] == "yes").all() and (good["order"] == "preserved").all()
    assert good.loc["0.3", "SSIM (gt) ↑"] == f"0.795 vs 0.800 ± {HALF:.3f} ✓"
    assert good.loc["0.3", "nfe"] == "4 / 28"
    bad = t[t["student"] == "medshift-fewstep (jumps=1)"].set_index("tau")
    assert (bad["pass"] == "no").all() and bad.loc["0.6", "SSIM (gt) ↑"].endswith("✗")
    assert bad.loc["0.3", "order"].startswith("changed: ") and "SSIM (gt)" in bad.loc["0.3", "order"]


def test_just_outside_the_interval_is_outside(table):
    recs = records({("medshift", ""): {0.6: 0.75, 0.3: 0.80},
                    ("medshift-fewstep", ""): {0.6: 0.75 + 1.05 * HALF, 0.3: 0.80 + 0.95 * HALF}})
    t = distillation_table(summary(recs)).set_index("tau")
    assert t.loc["0.6", "SSIM (gt) ↑"].endswith("✗") and t.loc["0.3", "SSIM (gt) ↑"].endswith("✓")
    assert (t["pass"] == "no").all() and (t["order"] == "preserved").all()


def test_no_student_no_file(table, tmp_path):
    stale = tmp_path / "distillation.md"
    stale.write_text("old")
    no_students = table[~table["method"].str.startswith("medshift-fewstep")]
    assert write_distillation(no_students, tmp_path) == [] and not stale.exists()
    assert write_distillation(table, tmp_path) == [stale] and "pass" in stale.read_text()


def test_the_psnr_to_the_teacher_is_shown_as_the_mean_over_seeds():
    recs = records({("medshift", ""): {0.6: 0.75, 0.3: 0.80}, ("medshift-fewstep", ""): {0.6: 0.75, 0.3: 0.80}})
    student = recs["method"] == "medshift-fewstep"
    recs.loc[student, "teacher_psnr"] = 30.0 + recs.loc[student, "seed"]  # 30, 31, 32 dB over the seeds
    t = distillation_table(summary(recs)).set_index("tau")
    half = stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3)
    assert t.loc["0.3", "PSNR to teacher (dB)"] == f"31.0 ± {half:.1f}"
    assert "PSNR to teacher (dB)" not in distillation_table(summary(records(
        {("medshift", ""): {0.3: 0.8}, ("medshift-fewstep", ""): {0.3: 0.8}}))).columns


def test_seconds_per_image_and_the_round_trip_beside_the_teachers():
    recs = records({("medshift", ""): {0.6: 0.75, 0.3: 0.80}, ("medshift-fewstep", ""): {0.6: 0.75, 0.3: 0.80}})
    student = recs["method"] == "medshift-fewstep"
    recs["sec_per_image"] = np.where(student, 0.002, 0.04)
    chosen = recs["knob_value"] == 0.3  # the round trip is made at the knob value validation chose
    recs.loc[chosen, "roundtrip_ssim"] = np.where(student[chosen], 0.90, 0.95)
    t = distillation_table(summary(recs)).set_index("tau")
    assert t.loc["0.3", "s/image"] == "2.00ms / 40.00ms"
    assert t.loc["0.3", "round trip SSIM"] == "0.900 / 0.950" and pd.isna(t.loc["0.6", "round trip SSIM"])


def test_a_value_only_one_seed_went_to_counts_that_seed_only_in_the_share_of_choices():
    """Seed 1's validation chose tau 0.15, beyond the grid's edge: only seed 1 has that row, and its share of the
    choices is 1 seed of 3 (33 %), not 100 % of the seeds that have the row."""
    recs = records({("medshift", ""): {0.6: 0.75, 0.3: 0.80}})
    recs.loc[recs["seed"] == 1, "val_choice"] = False
    extra = recs[(recs["seed"] == 1) & (recs["knob_value"] == 0.3)].assign(knob_value=0.15, val_choice=True)
    table = summary(pd.concat([recs, extra], ignore_index=True)).set_index("knob_value")
    assert table.loc[0.15, "val_choice"] == pytest.approx(1 / 3)
    assert table.loc[0.3, "val_choice"] == pytest.approx(2 / 3) and table.loc[0.6, "val_choice"] == 0


def test_students_are_ranked_among_themselves_never_among_the_unpaired_methods(table):
    """A student's compute is its teacher's budget and its own: it sits in the "distilled" group, ranked among the
    students, and neither takes nor shares an unpaired method's rank nor enters the unpaired leaders' sentences."""
    from benchmark.reporting.load import GROUP_LABELS, method_group
    from benchmark.reporting.report import leaders
    from benchmark.reporting.tables import add_ranks, formatted

    assert method_group("medshift-fewstep (jumps=1)") == method_group("medshift-onestep") == "distilled"
    assert method_group("medshift") == method_group("cyclegan") == "unpaired"
    ranked = add_ranks(table).set_index(["method", "knob_value"])["fidelity_rank"]
    # unpaired alone: cyclegan (0.9) first, medshift's 0.80 and 0.75 after it, whatever the students score
    assert ranked[("cyclegan", "")] == 1 and ranked[("medshift", 0.3)] == 2 and ranked[("medshift", 0.6)] == 3
    # students alone: the jumps=1 student's 0.79 at tau 0.6 leads them
    assert ranked[("medshift-fewstep (jumps=1)", 0.6)] == 1
    groups = set(formatted(add_ranks(table))["group"])
    assert GROUP_LABELS["distilled"] in groups and GROUP_LABELS["unpaired"] in groups
    assert not any("fewstep" in sentence for sentence in leaders(add_ranks(table)))


def test_a_student_at_a_budget_is_held_against_its_teacher_at_that_budget():
    """`run --budgets 3x` distils the 3x student from the 3x teacher (the headline fit of the same budget); its row
    is compared with that teacher's, not with the 1x teacher's."""
    recs = records({("medshift", ""): {0.6: 0.60, 0.3: 0.65},
                    ("medshift", "budget=6.3e+13"): {0.6: 0.75, 0.3: 0.80},
                    ("medshift-fewstep", "budget=6.3e+13"): {0.6: 0.75, 0.3: 0.80}})
    t = distillation_table(summary(recs)).set_index("tau")
    assert set(t["teacher"]) == {"medshift (budget=6.3e+13)"}
    assert t.loc["0.3", "SSIM (gt) ↑"] == f"0.800 vs 0.800 ± {HALF:.3f} ✓" and (t["pass"] == "yes").all()
