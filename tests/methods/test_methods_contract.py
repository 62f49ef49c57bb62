"""Contract test over every registered method: short fit, translate at every knob value, checkpoint round trip."""
import tempfile

import lightning as L
import pytest
import torch

from datasets.datamodule import TranslationDataModule
from methods import METHODS, TranslationMethod, get_method


def fit(name, tiny, precision="32-true", tmp_path=None, **extra):
    """Fit with the method's declared `smoke_settings`, through the same declarations the runner reads."""
    cls = get_method(name)
    method = cls(domains=tiny.domains, sources=("syn_low", "syn_high"), target="real_normal", image_size=tiny.size,
                 **{**cls.smoke_settings, **extra})
    if cls.teacher:  # a student distils a fit of its teacher: an untrained one of the smoke size here
        from pathlib import Path

        from methods import FitData

        t_cls = get_method(cls.teacher)
        teacher = t_cls(domains=tiny.domains, sources=("syn_low", "syn_high"), target="real_normal",
                        image_size=tiny.size, **t_cls.smoke_settings)
        rows = tiny.rows(cls.training_domains(tiny.domains, ("syn_low", "syn_high"), "real_normal"), "train")
        method.prepare_fit(FitData(train_images=lambda: tiny.load(rows), train_domains=lambda: list(rows["domain"]),
                                   cache_dir=Path(tmp_path or tempfile.mkdtemp()), identity={}, teacher=teacher,
                                   teacher_info=dict(run_id="untrained", sampling={"guidance": 1.0})))
    doms = cls.training_domains(tiny.domains, ("syn_low", "syn_high"), "real_normal")
    dm = TranslationDataModule(tiny, doms, batch_size=method.train_batch_size, pairing=cls.pairing,
                               target="real_normal", drop_last=cls.drop_last)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, precision=precision, **method.trainer_settings())
    trainer.fit(method, datamodule=dm)
    return method.eval(), trainer


@pytest.mark.parametrize("name", list(METHODS))
def test_method_contract(name, tiny, tmp_path):
    method, trainer = fit(name, tiny, tmp_path=tmp_path)
    assert isinstance(method, TranslationMethod)
    assert (method.knob_name is None) == (method.knob_grid == (None,))
    x, _ = tiny.images("syn_low", "test")
    x = x[:4]
    for knob in tuple(method.knob_grid) + tuple(method.knob_curve):
        y = method.translate(x, "syn_low", "real_normal", knob)
        assert y.shape == x.shape and y.dtype == torch.float32
        assert torch.isfinite(y).all() and y.min() >= -1 and y.max() <= 1
        assert method.nfe(knob) >= 0
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    restored = type(method).load_from_checkpoint(ckpt, weights_only=True).eval()
    knob = method.knob_grid[0]
    torch.testing.assert_close(restored.translate(x, "syn_low", "real_normal", knob),
                               method.translate(x, "syn_low", "real_normal", knob))
    assert restored.n_params == method.n_params


@pytest.mark.parametrize("name", [n for n, cls in METHODS.items() if cls.smoke_settings])
def test_bf16_mixed_training(name, tiny):
    """`--precision bf16-mixed` (what a GPU run uses) trains unchanged: Lightning's CPU autocast runs the
    same code path, so dtype mistakes in a training step show up here without a GPU."""
    torch.manual_seed(0)
    before = get_method(name)(domains=tiny.domains, sources=("syn_low", "syn_high"), target="real_normal",
                              image_size=tiny.size, **get_method(name).smoke_settings).state_dict()
    torch.manual_seed(0)  # the same initial weights
    method, _ = fit(name, tiny, precision="bf16-mixed")
    params = dict(method.named_parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params.values())  # fp32 master weights
    changed = [k for k in params if not torch.equal(before[k], params[k].detach())]
    assert changed and len(changed) > len(params) // 2  # the optimiser stepped (not NaN-skipped)
    y = method.translate(tiny.images("syn_low", "test")[0][:2], "syn_low", "real_normal", method.knob_grid[0])
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_every_method_declares_what_the_runner_reads():
    from benchmark.protocol.config import method_defaults

    for name, cls in METHODS.items():
        assert set(cls.sampling_settings) <= set(method_defaults(cls)), name
        assert {"color", "marker", "label"} <= set(cls.style), name
        m = cls(domains=("a", "b"), sources=("a",), target="b", image_size=16, **cls.smoke_settings)
        assert m.train_batch_size >= 1 and "max_steps" in m.trainer_settings() or "max_epochs" in m.trainer_settings()
        assert m.knob(None) == cls.knob_grid[0]
        if cls.knob_name is not None:  # learned and analytic methods with a knob
            assert m.nfe(None) == m.nfe(cls.knob_grid[0])


def test_every_method_is_drawn_apart_from_the_others():
    """A figure tells methods apart by colour and marker: no two registered methods share both (U-Net regression and
    the one-step student did, and the cost figure drew them as one)."""
    seen = {}
    for name, cls in METHODS.items():
        look = (cls.style["color"], cls.style["marker"])
        assert look not in seen, f"{name} is drawn like {seen.get(look)}"
        seen[look] = name


def test_a_method_without_its_budget_settings_fails_loudly():
    class Forgetful(TranslationMethod):
        def __init__(self, domains=(), sources=(), target="", image_size=16):
            super().__init__(domains, sources, target, image_size)
            self.save_hyperparameters()

    m = Forgetful()
    with pytest.raises(TypeError, match="no batch_size setting"):
        _ = m.train_batch_size
    with pytest.raises(TypeError, match="no max_steps setting"):
        m.trainer_settings()


def test_the_template_method_meets_the_contract(tiny, tmp_path):
    """`methods/template.py` (what a newcomer copies) fits through the runner's declarations and learns its map."""
    import methods
    from methods.template import AffineIntensity

    methods.METHODS["affine-template"] = AffineIntensity
    try:
        method, trainer = fit("affine-template", tiny, max_steps=60, lr=0.05)
    finally:
        del methods.METHODS["affine-template"]
    x = tiny.images("syn_low", "train")[0]
    real = tiny.images("real_normal", "train")[0]
    y = method.translate(x, "syn_low", "real_normal")
    assert abs(y.mean() - real.mean()) < abs(x.mean() - real.mean())  # moved towards the target's moments
    assert torch.equal(method.translate(x, "syn_low", "real_normal", 0.0), x)


def test_the_template_runs_through_the_budgeted_runner(micro, tmp_path, monkeypatch):
    """The old bug: the template (scalar parameters, no matrix FLOPs) stopped the runner with "measured no FLOPs";
    it now trains its own max_steps under the preset's budget, and its plan says why."""
    import json

    import methods
    from benchmark.protocol.config import RunSpec
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer
    from methods.template import AffineIntensity

    monkeypatch.setitem(methods.METHODS, "template", AffineIntensity)
    ctx = RunContext(tmp_path, Scorer(weights_dir=tmp_path / "w", cache_dir=tmp_path / "cache", frd=False),
                     quiet=True)
    spec = RunSpec("template", preset="micro", data_root=str(micro.root.parent.parent), overrides=(("max_steps", 7),))
    records = [r for r in run_one(spec, ctx) if r["split"] == "test"]
    cfg = json.loads((spec.folder(tmp_path) / "config.json").read_text())
    assert cfg["budget"] is None and cfg["method_config"]["max_steps"] == 7  # --set max_steps bypasses the budget
    spec = RunSpec("template", preset="micro", data_root=str(micro.root.parent.parent))
    records = [r for r in run_one(spec, ctx) if r["split"] == "test"]
    cfg = json.loads((spec.folder(tmp_path) / "config.json").read_text())
    assert cfg["budget"]["flops_per_iteration"] == 0 and cfg["budget"]["max_steps"] == 200  # its own default
    assert {r["train_steps"] for r in records} == {200} and {r["train_flops"] for r in records} == {0}


def test_registry_error_lists_names():
    with pytest.raises(KeyError, match="available: identity, histmatch"):
        get_method("nope")


def test_histmatch_matches_target_distribution(tiny):
    method, _ = fit("histmatch", tiny)
    x, _ = tiny.images("syn_high", "train")
    y = method.translate(x, "syn_high", "real_normal", 1.0)
    real, _ = tiny.images("real_normal", "train")
    q = torch.linspace(0.05, 0.95, 19)
    # pooled quantiles of the matched source equal the target's (up to the 4096-bin resolution)
    torch.testing.assert_close(torch.quantile(y.flatten(), q), torch.quantile(real.flatten(), q), atol=0.01, rtol=0)
    torch.testing.assert_close(method.translate(x, "syn_high", "real_normal", 0.0), x)


def test_histmatch_counts_every_training_image(micro):
    """A one-pass statistic must see every image: with drop_last a deterministic baseline lost up to 15 images
    (and gained seed variance)."""
    method, _ = fit("histmatch", micro)
    n_train = sum(len(micro.rows(d, "train")) for d in ("syn_low", "syn_high", "real_normal"))
    assert n_train % 8 != 0  # the case that used to drop images (batch 8 here, 16 in the runner)
    assert method.counts.sum().item() == n_train * micro.size * micro.size
