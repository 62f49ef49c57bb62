"""Methods from other packages: a throw-away package that declares a `TranslationMethod` under the `xraybench.methods`
entry-point group (a dist-info folder on the path, as pip installs it) is listed by `--method all`, runs, is scored
and passes the contract test, without a line of this repository changed."""
import sys
import textwrap

import pytest
from runs import ROOT, micro_ctx, micro_spec, records_of_test_split

import methods
from benchmark.protocol.config import plan
from benchmark.run.stages import run_one

PLUGIN = textwrap.dedent('''
    """A learned per-domain intensity standardisation: the moments of each domain, learned by gradient descent."""
    import torch

    from methods import TranslationMethod


    class MomentMatch(TranslationMethod):
        knob_name = "strength"
        knob_grid = (1.0, 0.5)
        knob_bounds = (0.0, 1.0)
        style = dict(color="tab:brown", marker="v", label="moment matching (plugin)")

        def __init__(self, domains=(), sources=(), target="", image_size=64, batch_size=8, max_steps=20, lr=0.05):
            super().__init__(domains, sources, target, image_size)
            self.save_hyperparameters()
            self.mean = torch.nn.Parameter(torch.zeros(max(len(domains), 1)))
            self.log_std = torch.nn.Parameter(torch.zeros(max(len(domains), 1)))

        def training_step(self, batch, batch_idx):
            x, d = batch["image"].flatten(1), batch["domain"]
            m, s = self.mean[d], self.log_std[d].exp()
            return ((x.mean(1) - m) ** 2 + (x.std(1) - s) ** 2).mean()

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

        @torch.no_grad()
        def translate(self, images, source, target, knob_value=None):
            k = float(self.knob(knob_value))
            i, j = self.domain_index(source), self.domain_index(target)
            moved = (images - self.mean[i]) / self.log_std[i].exp() * self.log_std[j].exp() + self.mean[j]
            return ((1 - k) * images + k * moved).clamp(-1, 1)
''')


@pytest.fixture()
def installed(tmp_path, monkeypatch):
    """`xb_demo_plugin` as pip would leave it: the module and its dist-info with the entry point."""
    (tmp_path / "xb_demo_plugin.py").write_text(PLUGIN)
    info = tmp_path / "xb_demo_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: xb-demo-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[xraybench.methods]\nmoment-match = xb_demo_plugin:MomentMatch\n"
                                           "broken = xb_demo_plugin:NoSuchThing\n"
                                           "identity = xb_demo_plugin:MomentMatch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    saved, problems, plugins = dict(methods.METHODS), dict(methods.PLUGIN_PROBLEMS), dict(methods.PLUGINS)
    yield tmp_path
    for registry, before in ((methods.METHODS, saved), (methods.PLUGIN_PROBLEMS, problems), (methods.PLUGINS, plugins)):
        registry.clear()
        registry.update(before)
    sys.modules.pop("xb_demo_plugin", None)


def test_an_installed_plugin_is_listed_runs_and_is_scored(installed, micro, tmp_path):
    with pytest.warns(UserWarning) as caught:
        added = methods.load_plugins()
    assert added == ["moment-match"]
    said = " ".join(str(w.message) for w in caught)
    assert "broken = xb_demo_plugin:NoSuchThing (package xb-demo-plugin) left out" in said
    assert "identity = xb_demo_plugin:MomentMatch" in said and "already registered" in said
    assert methods.METHODS["identity"].__module__ == "methods.identity"  # a plugin never replaces a method
    assert methods.load_plugins() == []  # once each
    from benchmark.cli.precheck import method_names

    assert "moment-match" in method_names()  # `run --method moment-match` passes the check made before torch loads
    domains = ("syn_low", "syn_high", "real_low", "real_normal", "real_high")
    assert "moment-match" in [s.method for s in plan(["all"], [0], ["sim2real"], domains, preset="micro")]
    records = run_one(micro_spec(micro, "moment-match", max_steps=10, overrides=()), micro_ctx(tmp_path / "r"))
    tests = records_of_test_split(records)
    assert {r["knob_value"] for r in tests} >= {1.0, 0.5} and all(0 < r["ssim_src"] <= 1 for r in tests)
    assert sum(bool(r["val_choice"]) for r in tests) == 2  # one chosen value, for each source


def test_the_contract_test_takes_an_installed_plugin(installed, tiny, tmp_path):
    """The contract test's module, imported with the plugin installed, is parametrised over it, and its test passes on
    it (run here with the session's `tiny` data rather than in a second pytest)."""
    import importlib.util

    with pytest.warns(UserWarning):
        methods.load_plugins()
    spec = importlib.util.spec_from_file_location("contract_for_plugins",
                                                  ROOT / "tests" / "methods" / "test_methods_contract.py")
    contract = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(contract)
    names = next(m.args[1] for m in contract.test_method_contract.pytestmark if m.name == "parametrize")
    assert "moment-match" in names
    contract.test_method_contract("moment-match", tiny, tmp_path)
