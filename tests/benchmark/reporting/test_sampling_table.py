"""The sampling choice table (`paper.sampling_choices`, `sampling.md`) on records made here with known values: each
candidate's validation fidelity is the mean over sources and then seeds, per seed in seed order, and `used_by`
counts the seeds whose chosen test records used the candidate; a `--set` variant is not listed."""
import pandas as pd
import pytest

from benchmark.reporting.paper import sampling_choices

CANDIDATES = ({"guidance": 2.0, "solver": "euler"}, {"guidance": 1.0, "solver": "euler"})


def records() -> pd.DataFrame:
    rows = []
    # seed s, candidate c, source k: SSIM (gt) 0.7 + 0.1 c + 0.01 s + 0.002 k; seed 2 used candidate 1, the others 0
    for setting in ("", "solver=heun"):
        method = "medshift" if not setting else f"medshift ({setting})"
        for seed in range(3):
            for c, cand in enumerate(CANDIDATES):
                label = "sampling " + ",".join(f"{k}={v}" for k, v in cand.items())
                for k, source in enumerate(("syn_low", "syn_high")):
                    rows.append(dict(task="sim2real", method=method, setting=setting, seed=seed, source=source,
                                     split="val", step=label, knob_value=0.6, sampling=cand, val_choice=None,
                                     ssim_gt=0.7 + 0.1 * c + 0.01 * seed + 0.002 * k, nps_dist=0.3 - 0.1 * c))
            for source in ("syn_low", "syn_high"):
                rows.append(dict(task="sim2real", method=method, setting=setting, seed=seed, source=source,
                                 split="test", step=None, knob_value=0.3, val_choice=True, ssim_gt=0.8, nps_dist=0.2,
                                 sampling=CANDIDATES[1 if seed == 2 else 0]))
    return pd.DataFrame(rows)


def test_each_candidates_validation_scores_and_the_seeds_that_used_it():
    t = sampling_choices(records()).set_index("candidate")
    assert list(t["method"].unique()) == ["medshift"]  # the variant pins its settings: not listed
    first, second = "guidance=2.0,solver=euler", "guidance=1.0,solver=euler"
    assert t.loc[first, "val_ssim_gt"] == pytest.approx(0.7 + 0.01 + 0.001)  # mean of seeds 0, 0.01, 0.02 + 0.001
    assert t.loc[second, "val_ssim_gt"] == pytest.approx(0.8 + 0.01 + 0.001)
    assert t.loc[second, "val_nps_dist"] == pytest.approx(0.2)
    assert t.loc[first, "val_ssim_gt_per_seed"] == "0.701/0.711/0.721"
    assert t.loc[first, "used_by"] == "2/3" and t.loc[second, "used_by"] == "1/3"
    assert (t["seeds"] == 3).all()


def test_no_sampling_records_no_table():
    recs = records()
    assert sampling_choices(recs[recs["split"] == "test"]).empty
    assert sampling_choices(recs.drop(columns="sampling")).empty
