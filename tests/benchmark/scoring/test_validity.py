"""Metric validity: controlled degradations of real images, and the realism metrics that must grow with them."""
import numpy as np
import pytest
import torch

from benchmark.scoring.scorer import Scorer
from benchmark.scoring.validity import degrade, metric_validity, rising, valid_realism_metrics, write_report


def test_degradations_match_their_closed_forms():
    flat = torch.full((64, 1, 32, 32), 0.0)  # x = 0.5 in [0, 1]
    for strength, gain in ((1, 0.0005), (3, 0.008)):
        noisy = (degrade(flat, "noise", strength).double() + 1) / 2
        assert noisy.var().item() == pytest.approx(0.5 * gain, rel=0.05)  # variance proportional to the signal
        assert noisy.mean().item() == pytest.approx(0.5, abs=1e-3)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    from scipy import ndimage

    u = ((x.double() + 1) / 2).numpy()
    blurred = (degrade(x, "blur", 2).double() + 1) / 2
    ref = np.stack([ndimage.gaussian_filter(u[i, 0], 1.2, mode="mirror", truncate=3.0) for i in range(4)])
    np.testing.assert_allclose(blurred[:, 0].numpy(), ref, atol=2e-3)  # scipy as the independent reference
    gamma = (degrade(x, "gamma", 3).double() + 1) / 2
    np.testing.assert_allclose(gamma.numpy(), np.clip(u, 0, 1) ** 2.0, atol=1e-6)
    assert torch.equal(degrade(x, "blur", 0), x)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade(x, "jpeg", 1)


def test_weight_free_metrics_grow_with_degradation(micro, tmp_path):
    scorer = Scorer(weights_dir=tmp_path / "w", frd=False)
    result = metric_validity(micro, scorer, "real_normal")
    values = result["values"]
    assert set(values) == {"nps_dist", "nps_flat", "hist_w1"} and result["n_reference"] == 3 * 3
    # the NPS distance sees noise and blur; the histogram distance sees the contrast change
    for kind in ("noise", "blur"):
        v = values["nps_dist"][kind]
        assert rising(v), (kind, v)
    v = values["hist_w1"]["gamma"]
    assert v[3] > v[2] > v[0]  # strong contrast changes (a mild one can move the test set towards the reference)
    for m, per in values.items():  # `passed` = strictly rising for every degradation
        assert result["passed"][m] == all(rising(x) for x in per.values())
    paths = write_report(result, "skull-sim/micro", tmp_path)
    assert "| nps_dist |" in paths[1].read_text()
    passed = valid_realism_metrics(tmp_path, "skull-sim", "micro")
    assert set(passed) == {m for m, ok in result["passed"].items() if ok}
    assert valid_realism_metrics(tmp_path, "skull-sim", "tiny") is None


def test_validity_never_reads_the_test_split_and_a_test_split_result_does_not_choose(micro, tmp_path, monkeypatch):
    """Its result decides which metric ranks realism, so it reads validation and reference images only; a result
    written before that rule (on test images) is shown but chooses nothing."""
    import json

    from datasets.base import XrayDataset

    real_images = XrayDataset.images
    read = []

    def spy(self, domain, split, *a, **k):
        read.append(split)
        return real_images(self, domain, split, *a, **k)

    monkeypatch.setattr(XrayDataset, "images", spy)
    result = metric_validity(micro, Scorer(weights_dir=tmp_path / "w", frd=False), "real_normal")
    assert "test" not in read and set(read) == {"val", "ref"} and result["split"] == "val"
    write_report(result, "skull-sim/micro", tmp_path)
    assert valid_realism_metrics(tmp_path, "skull-sim", "micro") is not None
    stored = json.loads((tmp_path / "metric_validity.json").read_text())
    stored["skull-sim/micro"].pop("split")  # as written before the rule
    (tmp_path / "metric_validity.json").write_text(json.dumps(stored))
    assert valid_realism_metrics(tmp_path, "skull-sim", "micro") is None
