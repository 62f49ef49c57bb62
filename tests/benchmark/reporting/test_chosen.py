"""Each seed at its own validation choice (`tables.validation_choice`, `chosen.md`): on records made here with known
values, the row's mean is the mean over seeds of each seed's chosen point, its interval Student t over those seeds
(checked in closed form), its knob names the choices in seed order; variants are left out."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchmark.reporting.report import write_chosen
from benchmark.reporting.tables import validation_choice

#: seed -> (the tau its validation chose, SSIM (gt) at each tau it was scored at)
SEEDS = {0: (0.3, {0.6: 0.78, 0.3: 0.81}), 1: (0.15, {0.6: 0.77, 0.3: 0.83, 0.15: 0.87}), 2: (0.6, {0.6: 0.82,
                                                                                                      0.3: 0.80})}


def records() -> pd.DataFrame:
    rows = []
    for seed, (chosen, by_tau) in SEEDS.items():
        for source in ("syn_low", "syn_high"):
            common = dict(dataset="skull-sim", preset="tiny", task="sim2real", seed=seed, source=source,
                          split="test", step=None, protocol=3)
            for tau, gt in by_tau.items():
                rows.append(dict(common, method="medshift", setting="", knob="tau", knob_value=tau,
                                 val_choice=tau == chosen, ssim_gt=gt, ssim_src=0.6))
                rows.append(dict(common, method="medshift (guidance=1.0)", setting="guidance=1.0", knob="tau",
                                 knob_value=tau, val_choice=tau == chosen, ssim_gt=0.5, ssim_src=0.6))
            rows.append(dict(common, method="identity", setting="", knob="", knob_value="", val_choice=True,
                             ssim_gt=0.63, ssim_src=1.0))
    return pd.DataFrame(rows)


def test_each_seed_at_its_own_choice():
    table = validation_choice(records()).set_index("method")
    assert set(table.index) == {"medshift", "identity"}  # the `--set` variant is not a configured method
    row = table.loc["medshift"]
    assert row["knob_value"] == "0.3/0.15/0.6"
    chosen = np.array([0.81, 0.87, 0.82])  # seed 0 at 0.3, seed 1 at 0.15, seed 2 at 0.6
    assert row["ssim_gt"] == pytest.approx(chosen.mean())
    half = stats.t.ppf(0.975, 2) * chosen.std(ddof=1) / np.sqrt(3)
    assert row["ssim_gt_ci"] == pytest.approx(half)
    assert table.loc["identity", "knob_value"] == "" and table.loc["identity", "ssim_gt"] == pytest.approx(0.63)


def test_chosen_md_is_written_only_where_there_are_choices(tmp_path):
    assert [p.name for p in write_chosen(records(), None, tmp_path)] == ["chosen.md"]
    text = (tmp_path / "chosen.md").read_text()
    assert "tau=0.3/0.15/0.6" in text and "guidance=1.0" not in text
    assert write_chosen(records().assign(val_choice=False), None, tmp_path) == []
    assert not (tmp_path / "chosen.md").exists()


def _utility(taus: dict) -> pd.DataFrame:
    """Utility records of medshift (seed -> the tau it translated with) and identity, Dice known."""
    rows = [dict(dataset="skull-sim", preset="tiny", task="sim2real", method="medshift", seed=s, knob="tau",
                 knob_value=t, dice=0.80 + 0.01 * s, seg_val_dice=0.8, translate_sec=1.0) for s, t in taus.items()]
    rows += [dict(rows[0], method="identity", seed=s, knob="", knob_value="", dice=0.7) for s in taus]
    return pd.DataFrame(rows)


def test_utility_sits_on_the_row_of_the_setting_it_was_measured_at(tmp_path):
    """Seed 0 alone chose tau 0.3, while the most-chosen row of three seeds' choices (a tie) is the grid's first:
    the utility of seed 0 belongs to tau 0.3, not to the most-chosen row; where the seeds' utility used different
    taus, no per-tau row holds it and the row of each seed's own choice (chosen.md) does."""
    from benchmark.reporting.tables import summary
    from benchmark.reporting.utility_tables import attach_utility, utility_rows, utility_summary

    table = summary(records())
    table = table[table["method"] == "medshift"]
    one = attach_utility(table, utility_summary(_utility({0: 0.3})))
    assert one.loc[one["dice"].notna(), "knob_value"].tolist() == [0.3]
    assert one["dice"].dropna().tolist() == pytest.approx([0.80])
    three = utility_summary(_utility({0: 0.3, 1: 0.15, 2: 0.6}))
    assert attach_utility(table, three)["dice"].isna().all()
    own = utility_rows(records(), three).set_index("method")
    assert own.loc["medshift", "knob_value"] == "0.3/0.15/0.6"
    assert own.loc["medshift", "dice"] == pytest.approx(0.81) and own.loc["identity", "dice"] == pytest.approx(0.7)
    text = write_chosen(records(), None, tmp_path, three)[0].read_text()
    assert "Utility (Dice)" in text and "0.810" in text
