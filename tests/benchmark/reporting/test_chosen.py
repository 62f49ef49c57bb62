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
