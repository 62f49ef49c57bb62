"""The protocol: equal FLOP budgets, choices on validation, the test split read once at the end."""
import json

import pytest
import torch
from torch import nn

from benchmark.protocol.budget import flops_per_iteration, iterations_for, preset_budget
from benchmark.protocol.config import RunSpec
from benchmark.protocol.validation import curve_steps, task_rows
from benchmark.run.context import RunContext
from benchmark.run.stages import run_one
from benchmark.scoring.scorer import Scorer
from methods import get_method
from methods.base import TranslationMethod


class TwoConvs(TranslationMethod):
    """Two 1x1 convolutions (1 -> 4 -> 1 channels): FLOPs in closed form."""

    def __init__(self, domains=(), sources=(), target="", image_size=32, max_steps=1, batch_size=4):
        super().__init__(domains, sources, target, image_size)
        self.save_hyperparameters()
        self.a, self.b = nn.Conv2d(1, 4, 1, bias=False), nn.Conv2d(4, 1, 1, bias=False)

    def training_step(self, batch, batch_idx):
        return self.b(self.a(batch["image"])).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_flop_counter_semantics_pinned_by_closed_form(micro):
    """FlopCounterMode counts 2 FLOPs per multiply-add; backward computes the weight gradients of both convolutions
    and the input gradient of the second only (the data needs none): (4 + 4) + (4 + 4 + 4) MACs per pixel."""
    from datasets.datamodule import TranslationDataModule

    m = TwoConvs(micro.domains, ("syn_low",), "real_normal", micro.size)
    dm = TranslationDataModule(micro, ("syn_low",), batch_size=4)
    pixels = 4 * micro.size * micro.size
    assert flops_per_iteration(m, dm) == 2 * (8 + 12) * pixels
    assert iterations_for(1e6, 300_000) == 3 and iterations_for(1.0, 10) == 1


def test_every_learned_method_gets_the_same_budget(micro):
    from datasets.datamodule import TranslationDataModule

    budget = preset_budget("skull-sim", "micro")
    assert budget == 3.0e11 and preset_budget("skull-sim", "tiny") == 2.1e13
    iters = {}
    for name in ("medshift", "cyclegan"):
        from benchmark.protocol.config import resolve_config

        cls = get_method(name)
        cfg = resolve_config(RunSpec(name, preset="micro"))
        m = cls(micro.domains, ("syn_low", "syn_high"), "real_normal", micro.size, **cfg)
        doms = cls.training_domains(micro.domains, ("syn_low", "syn_high"), "real_normal")
        dm = TranslationDataModule(micro, doms, batch_size=cfg["batch_size"], pairing=cls.pairing,
                                   target="real_normal")
        flops = flops_per_iteration(m, dm)
        iters[name] = (iterations_for(budget, flops), flops)
    for steps, flops in iters.values():
        assert budget - flops < steps * flops <= budget  # the same compute, to within one iteration


def test_curve_steps_and_alternating_sources(micro):
    assert curve_steps(600) == [75, 150, 225, 300, 375, 450, 525, 600] and curve_steps(3) == [1, 2, 3]
    a = task_rows(micro, "syn_low", ("syn_low", "syn_high"), "test")
    b = task_rows(micro, "syn_high", ("syn_low", "syn_high"), "test")
    assert not set(a["subject"]) & set(b["subject"])  # each subject translated from one source
    assert set(a["scene"]) | set(b["scene"]) == set(micro.rows("syn_low", "test")["scene"])
    assert len(task_rows(micro, "real_low", ("real_low",), "test")) == len(micro.rows("real_low", "test"))


def test_selection_rules_by_hand():
    from benchmark.protocol.validation import best_checkpoint, best_knob

    curve = [dict(step=s, nps_dist=v) for s, v in ((75, 0.4), (150, 0.2), (225, 0.3), (300, 0.2))]
    assert best_checkpoint(curve) == 300  # the best realism; a tie goes to the later step
    paired = [dict(step=s, nps_dist=n, ssim_gt=g) for s, n, g in ((75, 0.1, 0.70), (150, 0.3, 0.90), (225, 0.4, 0.85))]
    assert best_checkpoint(paired, "fidelity") == 150 and best_checkpoint(paired) == 75
    with pytest.raises(ValueError, match="aligned pairs"):
        best_checkpoint([dict(step=1, nps_dist=0.1, ssim_gt=None)], "fidelity")
    from methods import METHODS  # protocol 3: one rule for every learned method, paired or not

    assert {cls.selection_criterion() for cls in METHODS.values()} == {"realism"}
    knobs = [dict(knob_value=k, ssim_gt=g, nps_dist=0.1, ssim_src=0.5) for k, g in ((0.6, 0.80), (0.45, 0.85),
                                                                                    (0.3, 0.84))]
    assert best_knob(knobs) == 0.45  # fidelity where pairs exist
    unpaired = [dict(knob_value=k, ssim_gt=None, nps_dist=n, ssim_src=s)
                for k, n, s in ((0.6, 0.30, 0.70), (0.45, 0.20, 0.65), (0.3, 0.10, 0.50))]
    assert best_knob(unpaired) == 0.6  # ranks (2 + 0, 1 + 1, 0 + 2): a tie, the first in grid order


def test_choices_on_validation_and_the_test_split_read_once_at_the_end(tmp_path, micro, monkeypatch):
    from datasets.base import XrayDataset

    loaded = []
    real_load = XrayDataset.load

    def spy(self, rows):
        if len(rows):
            loaded.append(tuple(sorted(set(rows["split"]))))
        return real_load(self, rows)

    monkeypatch.setattr(XrayDataset, "load", spy)
    results = tmp_path / "r"
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False), quiet=True)
    spec = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent))
    records = run_one(spec, ctx)
    folder = spec.folder(results)
    cfg = json.loads((folder / "config.json").read_text())
    info = json.loads((folder / "train.json").read_text())
    plan = cfg["budget"]
    assert plan["budget"] == 3.0e11 and cfg["method_config"]["max_steps"] == plan["max_steps"] == info["train_steps"]
    assert info["train_flops"] == plan["max_steps"] * plan["flops_per_iteration"] <= 3.0e11
    curve = [r for r in records if r["split"] == "val" and isinstance(r["step"], int)]
    assert sorted({r["step"] for r in curve}) == curve_steps(plan["max_steps"])  # 8 points
    assert len(curve) == 2 * 8 and {r["source"] for r in curve} == {"syn_low", "syn_high"}  # every source
    assert {r["knob_value"] for r in curve} == {0.6} and all(r["flops"] for r in curve)  # the default knob
    mean = {s: sum(r["nps_dist"] for r in curve if r["step"] == s) / 2 for s in {r["step"] for r in curve}}
    best = min(mean, key=lambda s: (mean[s], -s))  # realism, over the whole validation split, selects it
    assert info["selected_step"] == best and info["selection_metric"] == "nps_dist"
    sel = torch.load(folder / "checkpoints/selected.ckpt", weights_only=True)["state_dict"]
    step = torch.load(folder / f"checkpoints/step{best}.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(sel[k], step[k]) for k in sel)
    tests = [r for r in records if r["split"] == "test"]
    assert {r["selected_step"] for r in tests} == {best} and {r["train_flops"] for r in tests} == {info["train_flops"]}
    for source in ("syn_low", "syn_high"):  # exactly one knob value per source is the validation choice
        chosen = [r["knob_value"] for r in tests if r["source"] == source and r["val_choice"]]
        assert len(chosen) == 1
    val_knobs = [r for r in records if r["step"] == "selected"]
    top = max({r["knob_value"] for r in val_knobs},
              key=lambda k: sum(r["ssim_gt"] for r in val_knobs if r["knob_value"] == k))
    assert {r["knob_value"] for r in tests if r["val_choice"]} == {top}
    # the test split is read once per (task, source) and only after every training and validation read
    first_test = loaded.index(("test",))
    assert set(loaded[first_test:]) == {("test",)} and loaded.count(("test",)) == 2 * 2  # sources x (images, pairs)
    assert ("test",) not in loaded[:first_test]


def test_a_paired_upper_bound_selects_its_checkpoint_by_the_same_rule_as_every_method(tmp_path, micro):
    """Protocol 3: validation realism for every learned method (protocol 2 selected the paired bounds by fidelity)."""
    results = tmp_path / "r"
    ctx = RunContext(results, Scorer(weights_dir=tmp_path / "w", cache_dir=results / "cache", frd=False), quiet=True)
    spec = RunSpec("unet-regression", preset="micro", data_root=str(micro.root.parent.parent), max_steps=16)
    records = run_one(spec, ctx)
    info = json.loads((spec.folder(results) / "train.json").read_text())
    curve = [r for r in records if r["split"] == "val" and isinstance(r["step"], int)]
    mean = {s: sum(r["nps_dist"] for r in curve if r["step"] == s) / 2 for s in {r["step"] for r in curve}}
    assert info["selection_metric"] == "nps_dist" and info["selected_step"] == min(mean, key=lambda s: (mean[s], -s))


def test_a_knob_choice_at_the_grids_edge_extends_the_grid_within_its_bounds():
    from benchmark.protocol.validation import beyond_edge

    assert beyond_edge([0.6, 0.45, 0.3], 0.3, (0.05, 0.95)) == 0.15  # the lowest value: one step further down
    assert beyond_edge([0.6, 0.45, 0.3, 0.15], 0.15, (0.05, 0.95)) is None  # 0.0 lies outside the bounds
    assert beyond_edge([0.1, 0.2, 0.3], 0.1, (0.05, 1.0)) is None  # 0.0 < 0.05
    assert beyond_edge([1.0, 0.5], 1.0, (0.1, 1.0)) is None  # at the bound already
    assert beyond_edge([1.0, 0.5], 0.5, (0.0, 1.0)) == 0.0
    assert beyond_edge([0.6, 0.45, 0.3], 0.45, (0.05, 0.95)) is None  # interior: nothing to extend
    assert beyond_edge([0.1, 0.2, 0.3], 0.3, None) is None  # a method without bounds keeps its grid


def test_the_learning_curve_reads_the_whole_validation_split_at_the_default_knob(tmp_path, micro):
    """Protocol 3: every source, every validation scene, the first value of the table grid; and a validation choice
    at the grid's edge is extended and tested."""
    from benchmark.protocol.validation import best_knob, task_rows

    spec = RunSpec("sdedit", preset="micro", data_root=str(micro.root.parent.parent), max_steps=8,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2]), ("num_inference_steps", 20)))
    records = run_one(spec, RunContext(tmp_path, Scorer(cache_dir=tmp_path / "c", frd=False), quiet=True))
    curve = [r for r in records if r["split"] == "val" and isinstance(r["step"], int)]
    sources = ("syn_low", "syn_high")
    assert {r["source"] for r in curve} == set(sources) and {r["knob_value"] for r in curve} == {0.1}
    for r in curve:
        assert r["n_images"] == len(task_rows(micro, r["source"], sources, "val"))
    assert sum(len(task_rows(micro, s, sources, "val")) for s in sources) == len(micro.rows("real_normal", "val"))
    chosen = {r["knob_value"] for r in records if r["split"] == "test" and r["val_choice"]}
    val = {r["knob_value"] for r in records if r["split"] == "val" and r["step"] == "selected"}
    tested = {r["knob_value"] for r in records if r["split"] == "test"}
    assert len(chosen) == 1 and chosen <= tested and {0.1, 0.2, 0.3} <= val
    grid = [r for r in records
            if r["split"] == "val" and r["step"] == "selected" and r["knob_value"] in (0.1, 0.2, 0.3)]
    if best_knob(grid) == 0.3:  # the grid's upper edge, with room up to 1.0: validation scored 0.4 (and on)
        assert 0.4 in val
    else:  # 0.1 is an edge too, but 0.0 lies below the bounds; 0.2 is interior
        assert val == {0.1, 0.2, 0.3} and chosen <= {0.1, 0.2}
