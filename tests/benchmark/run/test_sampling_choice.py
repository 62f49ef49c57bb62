"""Sampling settings chosen on validation (a method's `sampling_grid`), like the knob: every candidate at the default
knob value on the whole validation split, the choice used by the knob choice and the test records."""
import torch
from runs import micro_ctx, micro_spec, records_of_test_split

import benchmark.protocol.validation as V
from benchmark.run.stages import run_one


def test_candidates_are_the_configs_own_values_first_then_every_other_combination():
    grid = {"guidance": (2.0, 1.0), "solver": ("euler", "heun")}
    got = V.sampling_candidates({"guidance": 2.0, "solver": "heun", "lr": 1e-3}, grid)
    assert got[0] == {"guidance": 2.0, "solver": "heun"} and len(got) == 4
    assert {tuple(c.items()) for c in got} == {(("guidance", g), ("solver", s)) for g in (2.0, 1.0)
                                               for s in ("euler", "heun")}
    assert len(V.sampling_candidates({"guidance": 3.0, "solver": "euler"}, grid)) == 5  # own value outside the grid
    assert V.sampling_candidates({"guidance": 2.0}, {}) == []


def test_the_choice_is_the_best_candidate_at_its_best_knob_value():
    def rec(label, knob, ssim):
        return {"step": label, "knob_value": knob, "ssim_gt": ssim, "ssim_src": 0.5, "nps_dist": 0.1}

    a, b = V.sampling_label({"w": 2.0}), V.sampling_label({"w": 1.0})
    # a is better on average over the knob values, b has the best single (candidate, knob value) pair
    records = [rec(a, 0.6, 0.80), rec(a, 0.3, 0.80), rec(b, 0.6, 0.50), rec(b, 0.3, 0.85)]
    assert V.best_sampling(records) == b
    tie = [rec(a, 0.6, 0.80), rec(b, 0.6, 0.80)]
    assert V.best_sampling(tie) == a  # ties keep the config's own values (listed first)


def test_a_run_chooses_its_sampling_on_validation_and_tests_with_it(micro, tmp_path, monkeypatch):
    from methods.medshift import MedShift

    monkeypatch.setattr(MedShift, "sampling_grid", {"guidance": (2.0, 1.0), "step_size": (0.25, 0.5)})  # 4, fast
    monkeypatch.setattr(V, "NO_SAMPLING_CHOICE", ())  # micro keeps its settings otherwise
    spec = micro_spec(micro, "medshift", max_steps=20)
    ctx = micro_ctx(tmp_path)
    records = run_one(spec, ctx)
    sampling = [r for r in records if str(r.get("step", "")).startswith(V.SAMPLING_STEP)]
    candidates = V.sampling_candidates({"guidance": 2.0, "step_size": 0.25}, MedShift.sampling_grid)
    assert len(sampling) == len(candidates) * 2  # every candidate and source, at the default knob value
    assert {r["knob_value"] for r in sampling} == {MedShift.knob_grid[0]}
    assert {r["split"] for r in sampling} == {"val"}
    chosen = next(c for c in candidates if V.sampling_label(c) == V.best_sampling(sampling))
    tests = records_of_test_split(records)
    assert tests and all(r["sampling"] == chosen for r in tests)
    selected = [r for r in records if r.get("step") == "selected"]
    assert selected and all(r["sampling"] == chosen for r in selected)
    # the knob choice copies the chosen candidate's validation records instead of translating them again (a fresh
    # translation would have its own timing)
    label = V.sampling_label(chosen)
    made = {(r["source"], r["knob_value"]): r for r in sampling if r["step"] == label}
    copied = [r for r in selected if (r["source"], r["knob_value"]) in made]
    assert len(copied) == len(made)
    for r in copied:
        twin = made[(r["source"], r["knob_value"])]
        assert (r["sec_per_image"], r["ssim_gt"], r["frd"]) == (twin["sec_per_image"], twin["ssim_gt"], twin["frd"])
    # the test records were translated with the chosen settings: their cost is the chosen candidate's
    nfe = {(r["source"], r["knob_value"]): r["nfe"] for r in sampling if r["step"] == label}
    assert all(r["nfe"] == nfe[(r["source"], r["knob_value"])] for r in tests
               if r["knob_value"] == MedShift.knob_grid[0])
    # learning-curve points are scored with the configured settings (the choice comes after the checkpoint)
    curve = [r for r in records if isinstance(r.get("step"), int)]
    assert curve and all(r["sampling"] is None for r in curve)
    # resuming a finished run translates nothing again and changes no record
    assert run_one(spec, micro_ctx(tmp_path)) == records


def test_a_method_without_a_grid_keeps_its_settings(micro, tmp_path, monkeypatch):
    monkeypatch.setattr(V, "NO_SAMPLING_CHOICE", ())
    records = run_one(micro_spec(micro, "cyclegan", max_steps=4), micro_ctx(tmp_path))
    assert not [r for r in records if str(r.get("step", "")).startswith(V.SAMPLING_STEP)]
    assert all(r["sampling"] is None for r in records_of_test_split(records))


def test_micro_runs_keep_their_configured_sampling(micro, tmp_path):
    records = run_one(micro_spec(micro, "medshift", max_steps=4), micro_ctx(tmp_path))
    assert not [r for r in records if str(r.get("step", "")).startswith(V.SAMPLING_STEP)]
    assert all(r["sampling"] is None for r in records_of_test_split(records))


def test_target_diffusion_rebuilds_its_sampler_from_the_settings():
    from methods.sdedit import SDEdit

    m = SDEdit(domains=("a", "b"), sources=("a",), target="b", image_size=16, base_channels=8, channel_mults=(1, 2),
               num_inference_steps=10)
    before = m.nfe(0.5)
    m.hparams.update(sampler="ddim", num_inference_steps=50)
    m.apply_sampling()
    assert (m.ddpm.core.sampler, m.ddpm.core.num_inference_steps) == ("ddim", 50) and m.nfe(0.5) == 5 * before
    x = torch.zeros(1, 1, 16, 16)
    assert m.eval().translate(x, "a", "b", 0.1).shape == x.shape


def test_a_setting_the_run_sets_is_pinned_and_the_others_are_chosen(micro, tmp_path, monkeypatch):
    """`--set solver=heun` is an ablation of the solver: validation keeps it and chooses among the other settings."""
    from dataclasses import replace

    from methods.medshift import MedShift

    grid = {"guidance": (2.0, 1.0), "step_size": (0.25, 0.5)}
    assert V.sampling_candidates({"guidance": 2.0, "step_size": 0.5}, grid, pinned={"step_size"}) == [
        {"guidance": 2.0, "step_size": 0.5}, {"guidance": 1.0, "step_size": 0.5}]
    monkeypatch.setattr(MedShift, "sampling_grid", grid)
    monkeypatch.setattr(V, "NO_SAMPLING_CHOICE", ())
    spec = micro_spec(micro, "medshift", max_steps=20)
    spec = replace(spec, overrides=spec.overrides + (("step_size", 0.5),))
    records = run_one(spec, micro_ctx(tmp_path))
    sampling = [r for r in records if str(r.get("step", "")).startswith(V.SAMPLING_STEP)]
    assert {r["step"] for r in sampling} == {V.sampling_label({"guidance": g, "step_size": 0.5}) for g in (2.0, 1.0)}
    assert all(r["sampling"]["step_size"] == 0.5 for r in records_of_test_split(records))
