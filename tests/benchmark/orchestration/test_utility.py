"""Downstream utility: skull-sim's per-structure labels, Dice, the segmenter, and the utility protocol end to end."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.errors import RunError
from datasets.labels import STRUCTURE_NAMES

SMALL = dict(ngf=8, iterations=24, batch_size=8, lr=1e-3)


def test_labels_are_projected_through_the_generators_own_geometry(micro):
    """Projecting the subject's phantom from the scene's pose by material gives back the path-length maps the
    generator saved beside the images: the labels (same phantom, same pose, other channels) are the images' own."""
    from datasets.labels import structure_channels
    from datasets.projector import VIEWS, Geometry, project
    from datasets.skull_sim import PRESETS, scene_pose, subject_head

    preset = PRESETS["micro"]
    for subject, view_index in ((0, 0), (7, 2)):
        view = preset.views[view_index]
        saved = np.load(micro.root / "paths" / f"s{subject:03d}_{view}.npz")["lengths"].astype(np.float32)
        prims = subject_head(0, subject)
        _, pose, shift = scene_pose(0, subject, view_index)
        again = project(prims, VIEWS[view], preset.size, Geometry(), preset.supersample, pose, shift)
        np.testing.assert_allclose(again, saved, rtol=2e-3, atol=0.05)  # the saved maps are float16
        by_structure = project(prims, VIEWS[view], preset.size, Geometry(), preset.supersample, pose, shift,
                               channels=structure_channels(prims), n_channels=7)
        np.testing.assert_allclose(by_structure.sum(0), again.sum(0), rtol=1e-5, atol=1e-4)  # a partition of the rays


def test_labels_lie_on_their_bright_bone_and_are_cached(micro, monkeypatch):
    import datasets.labels as L

    folder = L.ensure_labels(micro)
    rows = micro.rows("real_normal", None)
    labels = L.load_labels(micro, list(rows["scene"]))
    images = micro.load(rows)[:, 0].numpy()
    head = np.stack([np.array(Image.open(micro.root / p)) > 0 for p in rows["mask_path"]])
    unlabelled = head & ~labels.any(1)
    for k, name in enumerate(L.STRUCTURE_NAMES):
        assert labels[:, k].any(), name
        if name in ("calvarium", "mandible", "teeth", "cervical_spine"):  # bone: brighter than the rest of the head
            assert images[labels[:, k]].mean() > images[unlabelled].mean() + 0.05, name
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(L, "_scene_job", lambda *a: pytest.fail("labels computed again"))
    assert L.ensure_labels(micro) == folder  # cached
    monkeypatch.undo()
    import shutil

    shutil.rmtree(folder)
    L.ensure_labels(micro, workers=1)  # deterministic: the same bytes again
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_pack_and_unpack_are_inverse():
    from datasets.labels import pack, unpack

    labels = np.random.default_rng(0).random((6, 9, 9)) > 0.5
    packed = pack(labels)
    assert packed.dtype == np.uint8 and (unpack(packed) == labels).all()


def test_dice_against_a_closed_form():
    from benchmark.orchestration.utility import dice_scores, image_dice

    pred, target = torch.zeros(1, 3, 4, 4, dtype=torch.bool), torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    pred[0, 0, 0, :4] = True  # 4 pixels
    target[0, 0, 0, 1:4] = True
    target[0, 0, 1, :3] = True  # 6 pixels, 3 of them shared
    pred[0, 1, 2, 2] = True  # structure 1 predicted but absent: Dice 0
    scores = dice_scores(pred, target)
    assert scores[0, 0] == pytest.approx(2 * 3 / 10) and scores[0, 1] == 0 and np.isnan(scores[0, 2])
    assert image_dice(scores)[0] == pytest.approx(0.3)  # structure 2 absent from both: left out


def test_utility_intervals_use_the_scorers_subject_bootstrap():
    from benchmark.orchestration.utility import score_utility
    from benchmark.scoring.metrics import subject_bootstrap

    gen = torch.Generator().manual_seed(0)
    labels = torch.rand(12, 6, 8, 8, generator=gen) > 0.3
    pred = labels ^ (torch.rand(12, 6, 8, 8, generator=gen) > 0.8)
    subjects = [f"s{i // 3}" for i in range(12)]
    out = score_utility(pred, labels, subjects, n_boot=20)
    dice = lambda p, t: 2 * (p & t).sum().item() / (p.sum() + t.sum()).item()  # noqa: E731 (every map non-empty)
    per_image = np.array([np.mean([dice(p, t) for p, t in zip(a, b, strict=True)])
                          for a, b in zip(pred, labels, strict=True)])
    plan = subject_bootstrap(subjects, 20)
    assert out["dice"] == pytest.approx(per_image.mean())
    np.testing.assert_allclose(out["boot"]["dice"], plan @ per_image / plan.sum(1), atol=1e-6)
    assert out["dice_lo"] <= out["dice"] <= out["dice_hi"] and out["n_subjects"] == 4


def test_the_segmenter_learns_a_toy_task():
    """Discs and squares in noise: the fixed segmenter finds both (Dice > 0.88 on unseen images) in a small budget."""
    from benchmark.orchestration.utility import dice_scores, image_dice, segment, train_segmenter

    def toy(n, seed):
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:32, :32]
        x, y = rng.normal(0, 0.1, (n, 1, 32, 32)) - 0.5, np.zeros((n, 2, 32, 32), bool)
        for i in range(n):
            cy, cx, r = rng.integers(8, 24, 2).tolist() + [rng.integers(3, 7)]
            y[i, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            sy, sx = rng.integers(2, 24, 2)
            y[i, 1] = (yy >= sy) & (yy < sy + 6) & (xx >= sx) & (xx < sx + 6) & ~y[i, 0]
            x[i, 0] += 0.8 * y[i, 0] + 0.4 * y[i, 1]
        return torch.tensor(x, dtype=torch.float32), torch.from_numpy(y)

    (xt, yt), (xv, yv), (xs, ys) = toy(64, 0), toy(16, 1), toy(32, 2)
    torch.manual_seed(0)
    net, info = train_segmenter(xt, yt, xv, yv, seed=0, settings=dict(ngf=16, iterations=200, batch_size=8, lr=2e-3))
    assert len(info["curve"]) == 8 and info["selected_step"] in [s for s, _ in info["curve"]]
    assert np.nanmean(image_dice(dice_scores(segment(net, xs), ys))) > 0.88  # 0.92 measured; 0.08 untrained


def test_utility_end_to_end_on_micro(tmp_path, micro, monkeypatch):
    """identity and histmatch runs -> utility records with the oracle; stored records are reused; collect's gap is 0
    for no translation and 1 for the oracle; a method without a finished run is refused with the command to run."""
    import benchmark.orchestration.utility as U
    from benchmark.protocol.config import RunSpec
    from benchmark.reporting.utility_tables import formatted_utility, load_utility, utility_summary
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer

    results = tmp_path / "r"
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False), quiet=True)
    for method in ("identity", "histmatch"):
        run_one(RunSpec(method, preset="micro", data_root=str(micro.root.parent.parent)), ctx)
    root = str(micro.root.parent.parent)
    records = U.run_utility(results, ["identity", "histmatch"], "skull-sim", "micro", [0], ["sim2real"], root,
                            progress=lambda *_: None, settings=SMALL)
    assert {r["method"] for r in records} == {"identity", "histmatch", "oracle"}
    for r in records:
        assert r["split"] == "utility" and r["n_images"] == len(micro.rows("real_normal", "test"))
        assert r["n_train"] == {"oracle": 15}.get(r["method"], 30) and 0 <= r["dice"] <= 1
        assert set(r["boot"]) == {"dice"} | {f"dice_{s}" for s in STRUCTURE_NAMES}
    hist = json.loads(U.record_path(results, "skull-sim", "micro", "sim2real", "histmatch", 0).read_text())
    assert hist["knob_value"] == U.chosen_knob(U.find_run(results, "histmatch", "skull-sim", "micro", 0, "sim2real"),
                                               "sim2real")
    # a stored record follows its run's records, not only its id: the same run trained or evaluated again (a code
    # change that moved its budget) has other records, and its utility is made again
    point = (results, "histmatch", "skull-sim", "micro", 0, "sim2real")
    assert hist["translator_records"] is not None and U._current(hist, *point)
    assert not U._current(dict(hist, translator_records="0" * 64), *point)
    assert U._current(dict(hist, translator_records=None), *point)  # a record from before the field: by id
    monkeypatch.setattr(U, "utility_record", lambda *a, **k: pytest.fail("recomputed a stored utility record"))
    assert len(U.run_utility(results, ["identity", "histmatch"], "skull-sim", "micro", [0], ["sim2real"], root,
                             progress=lambda *_: None, settings=SMALL)) == 3
    usum = utility_summary(load_utility(results))
    gap = dict(zip(usum["method"], usum["gap_closed"], strict=True))
    if (usum["gap_note"] == "").all():  # the gap is measured well enough to divide by (Fieller's rule)
        assert gap["identity"] == pytest.approx(0) and gap["oracle"] == pytest.approx(1)
    else:  # one seed on micro: too uncertain, and then no row has a ratio
        assert usum["gap_closed"].isna().all() and usum["gap_note"].str.startswith("gap too small").all()
    assert usum["utility_rank"].isna().all()  # identity, histmatch and the oracle are reference rows
    assert "oracle (real images)" in set(formatted_utility(usum)["method"])
    from benchmark.reporting.figures import utility_figure
    from benchmark.reporting.load import load_records
    from benchmark.reporting.tables import summary
    from benchmark.reporting.utility_tables import attach_utility

    df = load_records(results)
    table = attach_utility(summary(df), usum)
    hist_rows = table[(table["method"] == "histmatch") & (table["task"] == "sim2real")]
    assert hist_rows["dice"].notna().sum() == 1  # on the row of the knob value validation chose
    assert hist_rows.loc[hist_rows["dice"].notna(), "knob_value"].iloc[0] == hist["knob_value"]
    assert utility_figure(df, usum, "sim2real", ["nps_dist"]) is None  # reference rows only: nothing to compare
    import benchmark.reporting.figures as F

    group = F.method_group
    monkeypatch.setattr(F, "method_group", lambda m: "unpaired" if m == "histmatch" else group(m))
    fig = utility_figure(df, usum, "sim2real", ["nps_dist"])
    assert len(fig.axes) == 2
    with pytest.raises(RunError, match="python -m benchmark run --method medshift"):
        U.find_run(results, "medshift", "skull-sim", "micro", 0, "sim2real")


@pytest.mark.slow
def test_the_oracle_beats_no_translation_on_tiny(tmp_path, tiny):
    """The axis can separate methods at all: with the real budget, real training images beat raw synthetic ones."""
    import benchmark.orchestration.utility as U
    from benchmark.protocol.config import RunSpec
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer

    results = tmp_path / "r"
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False), quiet=True)
    run_one(RunSpec("identity", preset="tiny", data_root=str(tiny.root.parent.parent)), ctx)
    recs = {r["method"]: r for r in U.run_utility(results, ["identity"], "skull-sim", "tiny", [0], ["sim2real"],
                                                   str(tiny.root.parent.parent), progress=lambda *_: None)}
    assert recs["oracle"]["dice_lo"] > recs["identity"]["dice_hi"]


def _utility_rows(method: str, seed: int, dice: np.ndarray) -> dict:
    """A utility record whose subject-bootstrap replicates are `dice` (its mean is the point estimate)."""
    return dict(dataset="skull-sim", preset="tiny", task="dose", method=method, seed=seed, knob="", knob_value=np.nan,
                dice=float(dice.mean()), seg_val_dice=0.9, translate_sec=0.0, boot={"dice": dice.tolist()})


def test_no_gap_closed_where_the_oracle_is_not_surely_better():
    """Gap closed = (Dice - identity's) / (oracle's - identity's) with its interval from paired replicates; where the
    oracle's lead over no translation has an interval reaching 0 the ratio is noise over noise, so it is n/a and says
    why, while a task with a clear gap gets the closed form."""
    import pandas as pd

    from benchmark.reporting.utility_tables import formatted_utility, utility_summary

    rng = np.random.default_rng(0)
    base = 0.8 + rng.normal(0, 0.01, 200)  # shared subject draws: the methods' replicates move together
    rows = []
    for seed in (0, 1):
        rows += [_utility_rows("identity", seed, base), _utility_rows("oracle", seed, base + 0.1),
                 _utility_rows("histmatch", seed, base + 0.025 + rng.normal(0, 0.002, 200))]
        flat = dict(identity=base, oracle=base + 0.002 + rng.normal(0, 0.004, 200), histmatch=base + 0.001,
                    cyclegan=base + 0.05, sdedit=base - 0.05)
        rows += [{**_utility_rows(m, seed, d), "task": "sim2real"} for m, d in flat.items()]
    usum = utility_summary(pd.DataFrame(rows)).set_index(["task", "method"])
    assert usum.loc[("dose", "histmatch"), "gap_closed"] == pytest.approx(0.25, abs=0.01)
    assert usum.loc[("dose", "histmatch"), "gap_closed_lo"] < 0.25 < usum.loc[("dose", "histmatch"), "gap_closed_hi"]
    assert usum.loc[("dose", "histmatch"), "gap_note"] == ""
    flat_rows = usum.loc["sim2real"]
    assert flat_rows["gap_closed"].isna().all() and flat_rows["gap_note"].str.startswith("gap too small").all()
    # no ratio, but the methods are still ranked by their Dice (the rank does not divide by the gap)
    assert flat_rows.loc[["cyclegan", "sdedit"], "utility_rank"].tolist() == [1, 2]
    shown = formatted_utility(usum.reset_index()).set_index(["task", "method"])
    assert shown.loc[("sim2real", "histmatch"), "gap closed"].startswith("n/a (gap too small to divide by: oracle - "
                                                                           "no translation = +0.0")


def test_a_gap_surely_above_zero_but_uncertain_gets_no_ratio():
    """The rule (Fieller's g = (half-width / gap)^2 < 0.05): a gap whose interval excludes 0 but is uncertain
    against its size (the dose gap's +0.004 [+0.003, +0.006]) gives no ratio."""
    from benchmark.reporting.stats import Interval
    from benchmark.reporting.utility_tables import gap_is_measured

    assert gap_is_measured(Interval(0.10, 0.08, 0.12, 4.0))  # g = 0.04
    assert not gap_is_measured(Interval(0.10, 0.077, 0.123, 4.0))  # g = 0.053
    assert not gap_is_measured(Interval(0.0045, 0.003, 0.006, 4.0))  # surely > 0, but half a third of it
    assert not gap_is_measured(Interval(0.002, -0.001, 0.005, 4.0))  # not surely > 0


def test_utility_at_each_budget(tmp_path, micro):
    """`utility --budgets`: a record per fit at each budget (its own setting and file, the oracle once), named in the
    tables as the records name the fit, attached to that fit's row of the compute table, kept out of utility.md's
    ranking and correlations; a budget without a finished fit is refused with the command to run."""
    import benchmark.orchestration.utility as U
    from benchmark.protocol.budget import budget_values
    from benchmark.protocol.config import RunSpec
    from benchmark.reporting.compute import budget_rows, compute_markdown
    from benchmark.reporting.load import load_records
    from benchmark.reporting.tables import summary
    from benchmark.reporting.utility_tables import attach_utility, load_utility, utility_summary, write_utility
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer

    results, root = tmp_path / "r", str(micro.root.parent.parent)
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False), quiet=True)
    assert budget_values(["1x", "2x"], "skull-sim", "micro")[0] is None  # 1x: the headline fit (find_run's None)
    budgets = budget_values(["1e10", "2e10"], "skull-sim", "micro")  # a few iterations each: seconds
    for b in budgets:
        run_one(RunSpec("cyclegan", preset="micro", data_root=root, budget=b), ctx)
    recs = U.run_utility(results, ["cyclegan"], "skull-sim", "micro", [0], ["sim2real"], root,
                         progress=lambda *_: None, settings=SMALL, budgets=budgets)
    assert sorted((r["method"], r["setting"]) for r in recs) == [
        ("cyclegan", "budget=1e+10"), ("cyclegan", "budget=2e+10"), ("oracle", "")]
    runs = {r["setting"]: r["translator_run"] for r in recs if r["method"] == "cyclegan"}
    assert runs["budget=1e+10"] != runs["budget=2e+10"]  # each budget's own fit translated
    assert U.record_path(results, "skull-sim", "micro", "sim2real", "cyclegan", 0, budgets[1]).is_file()
    usum = utility_summary(load_utility(results))
    variant = "cyclegan (budget=2e+10)"
    assert set(usum["method"]) == {"cyclegan (budget=1e+10)", variant, "oracle"}
    assert np.isnan(usum.loc[usum["method"] == variant, "utility_rank"]).all()  # budget rows: compute.md's
    paths = write_utility(usum, tmp_path)
    assert "budget=" not in paths[1].read_text() and "oracle" in paths[1].read_text()
    table = attach_utility(summary(load_records(results)), usum)
    rows = budget_rows(table)
    assert rows.set_index("method").loc[variant, "dice"] == pytest.approx(usum.set_index("method").loc[variant, "dice"])
    assert "Utility (Dice)" in compute_markdown(rows)
    with pytest.raises(RunError, match="--budget 9e"):
        U.find_run(results, "cyclegan", "skull-sim", "micro", 0, "sim2real", budget=9e11)
