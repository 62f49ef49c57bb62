"""The runner: records, resume, skipping, bad input; and the CLI's one-line errors."""
import json

import pytest

from benchmark.cli.main import main
from benchmark.errors import RunError
from benchmark.protocol.config import RunSpec, resolve_config
from benchmark.protocol.records import RECORD_KEYS, of_split, read_records
from benchmark.run.context import RunContext
from benchmark.run.stages import run_one
from benchmark.scoring.scorer import Scorer


@pytest.fixture
def ctx(tmp_path, data_root):
    return RunContext(tmp_path / "results", Scorer(weights_dir=tmp_path / "w", cache_dir=tmp_path / "results/cache",
                                                   frd=False), quiet=True)  # FRD: tests/benchmark/scoring/test_frd.py


def test_identity_and_histmatch_records(ctx, tiny):
    recs = of_split(run_one(RunSpec("identity", data_root=str(tiny.root.parent.parent)), ctx))  # protocol: tiny
    assert len(recs) == 2  # two sources, one point
    r = recs[0]
    assert set(RECORD_KEYS) <= set(r) and r["knob"] is None and r["knob_value"] is None
    assert r["ssim_src"] == pytest.approx(1.0) and r["nfe"] == 0
    # sim2real translates each of the 180 test scenes once, the sources alternating by subject
    assert [x["n_images"] for x in recs] == [90, 90] and [x["n_subjects"] for x in recs] == [15, 15]
    assert r["n_real"] == 18 * 6 and r["protocol"] == 3  # realism vs the ref split
    assert len(r["boot"]["ssim_gt"]) == 200 and r["ssim_gt_lo"] < r["ssim_gt"] < r["ssim_gt_hi"]
    assert r["fid"] is None and "make weights" in r["unavailable"]["fid"]
    assert r["ssim_gt"] < 0.9  # the domain gap is real
    hm = of_split(run_one(RunSpec("histmatch", data_root=str(tiny.root.parent.parent)), ctx))
    assert [x["knob_value"] for x in hm][:4] == [1.0, 0.5, 1.0, 0.5]  # the grid, then a value validation chose
    assert all(x["val_choice"] for x in hm[4:]) and {x["knob_value"] for x in hm[4:]} <= {0.0}  # beyond it (0.5 - 0.5)
    by_src = {x["source"]: x for x in hm if x["knob_value"] == 1.0}
    for rec in recs:
        assert by_src[rec["source"]]["hist_w1"] < rec["hist_w1"]  # closer to the target's intensities


def test_rerun_skips_and_resume_recomputes_only_missing(ctx, micro):
    spec = RunSpec("histmatch", preset="micro", data_root=str(micro.root.parent.parent))
    first = run_one(spec, ctx)
    folder = spec.folder(ctx.results_dir)
    config = json.loads((folder / "config.json").read_text())
    assert config["split_hash"] == micro.split_hash and "git_sha" in config and config["packages"]["torch"]
    mtime = (folder / "records.jsonl").stat().st_mtime_ns
    assert run_one(spec, ctx) == first and (folder / "records.jsonl").stat().st_mtime_ns == mtime
    # simulate an interruption after the first record
    lines = (folder / "records.jsonl").read_text().splitlines()
    (folder / "records.jsonl").write_text(lines[0] + "\n")
    (folder / "done").unlink()
    again = run_one(spec, ctx)
    assert len(again) == len(first) and again[0] == first[0]
    assert [r["knob_value"] for r in again] == [r["knob_value"] for r in first]


def test_knobs_add_test_points_to_a_finished_run_without_changing_it(ctx, micro):
    """`--knobs` (a knob value off the grid) is outside the run's identity: the same folder, its records kept as they
    were, the new values' test points appended and scored like the grid's; a value outside the knob's bounds or a
    method without a knob is refused in one line."""
    from dataclasses import replace

    from benchmark.protocol.config import plan
    from datasets import get_task

    spec = RunSpec("histmatch", preset="micro", data_root=str(micro.root.parent.parent))
    first = run_one(spec, ctx)
    wider = replace(spec, knobs=(0.25,))
    assert wider.run_id == spec.run_id and wider.folder(ctx.results_dir) == spec.folder(ctx.results_dir)
    again = run_one(wider, ctx)
    assert again[:len(first)] == first
    added = [r for r in again[len(first):] if r["split"] == "test"]
    sources = get_task("sim2real", micro.domains).sources
    assert sorted({r["knob_value"] for r in added}) == [0.25] and len(added) == len(sources)
    by = {(r["source"], r["knob_value"]): r["hist_w1"] for r in of_split(again)}
    for (source, knob), w1 in by.items():  # a quarter blend lies between no matching and the half blend
        if knob == 0.25:
            assert by[(source, 0.5)] < w1
    with pytest.raises(RunError, match=r"--knobs 1\.5: histmatch's blend must lie in \[0, 1\]"):
        plan(["histmatch"], [0], ["sim2real"], micro.domains, preset="micro", knobs=(1.5,))
    with pytest.raises(RunError, match="identity has no knob"):
        plan(["identity"], [0], ["sim2real"], micro.domains, preset="micro", knobs=(0.5,))


def test_edited_record_is_rejected(ctx, micro):
    spec = RunSpec("identity", preset="micro", data_root=str(micro.root.parent.parent))
    run_one(spec, ctx)
    path = spec.folder(ctx.results_dir) / "records.jsonl"
    rec = json.loads(path.read_text().splitlines()[0])
    rec["ssim_gt"] = 0.99
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(RunError, match="checksum mismatch"):
        read_records(path)


def test_config_layers_and_unknown_set_key():
    spec = RunSpec("medshift", overrides=(("guidance", 3.0),), max_steps=7)
    cfg = resolve_config(spec)
    assert cfg["guidance"] == 3.0 and cfg["max_steps"] == 7
    assert cfg["base_channels"] == 16  # skull-sim/tiny delta from benchmark/configs/medshift.yaml
    with pytest.raises(RunError, match="valid keys: .*guidance"):
        resolve_config(RunSpec("medshift", overrides=(("gudiance", 3.0),)))


def test_corrupted_checkpoint_is_reported(ctx, micro):
    spec = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent), max_steps=2,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2])))
    ckpt = spec.folder(ctx.results_dir) / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="cannot be loaded.*delete it"):
        run_one(spec, ctx)
    assert ckpt.read_bytes() == b"not a checkpoint"  # nothing touched


@pytest.mark.parametrize("argv, message", [
    (["run", "--method", "nope"], "unknown method 'nope'; available: identity"),
    (["run", "--method", "identity", "--dataset", "mnist"], "unknown dataset 'mnist'; available: skull-sim"),
    (["run", "--method", "identity", "--task", "ct2mr"], "unknown task 'ct2mr'; available: sim2real, dose"),
    (["run", "--method", "identity", "--task", "syn_low->ct"], "does not have"),
    (["run", "--method", "identity", "--preset", "huge"], "unknown preset 'huge'; available: micro, tiny"),
    (["run", "--method", "medshift", "--set", "nope=1", "--dry-run"], "valid keys"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_unwritable_results_dir(tmp_path, capsys, data_root):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--method", "identity", "--results-dir", str(blocker / "results"), "--quiet"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_dry_run_prints_resolved_plan(capsys):
    assert main(["run", "--method", "medshift", "identity", "--seeds", "0", "1", "--task", "sim2real", "dose",
                 "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    medshift = [p for p in plan if p["method"] == "medshift"]
    identity = [p for p in plan if p["method"] == "identity"]
    assert len(medshift) == 2 and medshift[0]["tasks"] == ["sim2real", "dose"]  # one fit serves both pairs
    assert len(identity) == 4  # identity's training domains differ per task
    assert medshift[0]["config"]["guidance"] == 2.0


def test_sampling_only_change_reuses_the_fit(ctx, micro):
    from dataclasses import asdict, replace

    from benchmark.protocol.config import fit_key

    base = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent), max_steps=2,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2])))
    first = of_split(run_one(base, ctx))
    swept = replace(base, overrides=base.overrides + (("guidance", 1.0),))
    second = of_split(run_one(swept, ctx))
    cfg = json.loads((swept.folder(ctx.results_dir) / "config.json").read_text())
    domains = micro.domains
    assert cfg["fit_from"] == base.folder(ctx.results_dir).name and cfg["fit_key"] == fit_key(
        asdict(base), resolve_config(base), domains)
    assert {r["train_sec"] for r in second} == {first[0]["train_sec"]}
    assert [r["nfe"] for r in second] == [r["nfe"] // 2 for r in first]  # w = 1: one branch instead of two
    import torch
    a, b = (torch.load(s.folder(ctx.results_dir) / "checkpoints/final.ckpt", weights_only=True)["state_dict"]
            for s in (base, swept))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the same weights, not a new fit
    # a training setting (or a new seed) is a new fit
    lr = replace(base, overrides=base.overrides + (("lr", 5e-4),))
    assert fit_key(asdict(lr), resolve_config(lr), domains) != cfg["fit_key"]
    assert fit_key(asdict(replace(base, seed=1)), resolve_config(base), domains) != cfg["fit_key"]
    # another task with the same training domains is the same fit for MedShift, not for SDEdit
    dose = replace(base, tasks=("dose",))
    assert fit_key(asdict(dose), resolve_config(dose), domains) == cfg["fit_key"]
    sd = RunSpec("sdedit")
    assert fit_key(asdict(sd), resolve_config(sd), domains) != fit_key(asdict(replace(sd, tasks=("dose",))),
                                                                      resolve_config(sd), domains)
    # a donor from before a setting existed (its config.json lacks the key) is still the same fit
    for done in (base, swept):
        cfg_path = done.folder(ctx.results_dir) / "config.json"
        old = json.loads(cfg_path.read_text())
        del old["method_config"]["coupling"], old["method_config"]["bridge_sigma"]
        cfg_path.write_text(json.dumps(old))
    coarse = replace(base, overrides=base.overrides + (("step_size", 0.25),))
    run_one(coarse, ctx)
    assert json.loads((coarse.folder(ctx.results_dir) / "config.json").read_text())["fit_from"] in {
        base.folder(ctx.results_dir).name, swept.folder(ctx.results_dir).name}
    # variants stay apart in the tables
    assert {r["setting"] for r in second} == {"base_channels=8,channel_mults=[1, 2],guidance=1.0,max_steps=2"}
    from benchmark.reporting.load import load_records
    methods = set(load_records(ctx.results_dir)["method"])
    assert methods == {"medshift (base_channels=8,channel_mults=[1, 2],max_steps=2)",
                       "medshift (base_channels=8,channel_mults=[1, 2],guidance=1.0,max_steps=2)",
                       "medshift (base_channels=8,channel_mults=[1, 2],step_size=0.25,max_steps=2)"}


def test_sampling_settings_are_config_keys():
    from benchmark.protocol.config import method_defaults
    from methods import METHODS

    for name, cls in METHODS.items():
        assert set(cls.sampling_settings) <= set(method_defaults(cls)), name


def test_the_round_trip_is_recorded_at_the_chosen_knob(ctx, micro):
    """MedShift's test records at the validation-chosen tau carry the round trip of the target's real test images
    (encode and decode under the target's label, with the chosen sampling settings), equal to skimage's SSIM and PSNR
    of the run's own weights' round trip; the other records and a method without a round trip carry none."""
    import numpy as np
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from benchmark.orchestration.utility import load_translator
    from benchmark.run.evaluate import translate

    spec = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent), max_steps=2,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2])))
    recs = of_split(run_one(spec, ctx))
    chosen = [r for r in recs if r["val_choice"]]
    assert chosen and all("roundtrip_ssim" not in r for r in recs if not r["val_choice"])
    method, _ = load_translator(spec.folder(ctx.results_dir))
    x = micro.images(chosen[0]["target"], "test")[0]
    method.hparams.update(chosen[0]["sampling"] or {})
    method.apply_sampling()
    x_rt, _ = translate(method, x, chosen[0]["target"], chosen[0]["target"], chosen[0]["knob_value"])
    a, b = (((t.double() + 1) / 2).clamp(0, 1).numpy()[:, 0] for t in (x_rt, x))
    want_ssim = np.mean([structural_similarity(p, q, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                               data_range=1.0) for p, q in zip(a, b, strict=True)])
    want_psnr = np.mean([peak_signal_noise_ratio(q, p, data_range=1.0) for p, q in zip(a, b, strict=True)])
    for r in chosen:
        assert r["roundtrip_ssim"] == pytest.approx(want_ssim, abs=1e-6)
        assert r["roundtrip_psnr"] == pytest.approx(want_psnr, abs=1e-4)
    assert 0 < want_ssim < 1 and torch.isfinite(x_rt).all()  # two iterations: far from the identity
    ident = of_split(run_one(RunSpec("identity", preset="micro", data_root=str(micro.root.parent.parent)), ctx))
    assert all("roundtrip_ssim" not in r for r in ident)
    assert all("ae_recon_ssim" not in r for r in recs)  # pixel space: no first stage, no ceiling


def test_a_latent_methods_round_trip_carries_its_autoencoders_ceiling(ctx, micro):
    """Latent MedShift's chosen test records carry its autoencoder's reconstruction of the target's test images
    (decode(encode(x)) against x), equal to skimage's SSIM and PSNR of the run's own first stage, beside the round
    trip through the flow."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from benchmark.orchestration.utility import load_translator

    spec = RunSpec("medshift", preset="micro", data_root=str(micro.root.parent.parent), max_steps=2,
                   overrides=(("base_channels", 8), ("channel_mults", [1, 2]), ("space", "latent"),
                              ("ae_channels", [8, 16]), ("ae_latent_channels", 2), ("ae_steps", 3)))
    recs = of_split(run_one(spec, ctx))
    chosen = [r for r in recs if r["val_choice"]]
    method, _ = load_translator(spec.folder(ctx.results_dir))
    x = micro.images(chosen[0]["target"], "test")[0]
    x_ae = method.first_stage.decode(method.first_stage.encode(x.float()))
    a, b = (((t.double() + 1) / 2).clamp(0, 1).numpy()[:, 0] for t in (x_ae, x))
    want_ssim = np.mean([structural_similarity(p, q, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                               data_range=1.0) for p, q in zip(a, b, strict=True)])
    want_psnr = np.mean([peak_signal_noise_ratio(q, p, data_range=1.0) for p, q in zip(a, b, strict=True)])
    assert chosen and 0 < want_ssim < 1  # three autoencoder steps: far from a perfect reconstruction
    for r in chosen:
        assert r["ae_recon_ssim"] == pytest.approx(want_ssim, abs=1e-6)
        assert r["ae_recon_psnr"] == pytest.approx(want_psnr, abs=1e-4)
        assert r["roundtrip_ssim"] is not None
