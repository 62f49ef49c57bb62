"""Every metric against an independent reference (skimage, scipy, closed forms, direct formulas)."""
import numpy as np
import pytest
import scipy.linalg
import torch
from scipy import ndimage, stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import benchmark.scoring.declarations as D
import benchmark.scoring.metrics as M
from benchmark.errors import WeightsUnavailable
from benchmark.scoring.scorer import LPIPSAlex, RandomFeatures, Scorer
from benchmark.scoring.weights import WEIGHTS, locate


def _images(n=4, size=48, seed=0):
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.uniform(0, 1, (n, 1, size, size)), (0, 0, 3, 3))
    base = (base - base.min()) / (base.max() - base.min())
    noisy = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    return torch.from_numpy(base), torch.from_numpy(noisy)


def test_ssim_matches_skimage():
    x, y = _images()
    ours = M.ssim(x, y, data_range=1.0).numpy()
    for i in range(len(x)):
        ref = structural_similarity(x[i, 0].numpy(), y[i, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert abs(ours[i] - ref) < 1e-6
    assert M.ssim(x, x).numpy() == pytest.approx(1.0)


def test_psnr_matches_skimage_and_caps_identical():
    x, y = _images()
    ours = M.psnr(x, y).numpy()
    for i in range(len(x)):
        assert ours[i] == pytest.approx(peak_signal_noise_ratio(x[i, 0].numpy(), y[i, 0].numpy(), data_range=1.0),
                                        abs=1e-9)
    assert M.psnr(x, x).numpy() == pytest.approx(M.PSNR_CAP_DB)


def test_frechet_distance_closed_form_gaussians():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert M.frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-12)


def _fid_scipy(f1, f2):
    mu1, s1, mu2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(1)
    f1 = rng.normal(size=(400, 16))
    f2 = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) * 0.5 + 0.3
    assert M.fid_from_features(f1, f2) == pytest.approx(_fid_scipy(f1, f2), rel=1e-8)


def test_fid_with_fewer_samples_than_dims_is_finite_and_warns():
    rng = np.random.default_rng(2)
    f1, f2 = rng.normal(size=(10, 64)), rng.normal(size=(12, 64)) + 0.1
    with pytest.warns(UserWarning, match="rank-deficient"):
        v = M.fid_from_features(f1, f2)
    assert np.isfinite(v) and v >= 0 and isinstance(v, float)


def _mmd_loops(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_is_the_unbiased_mmd_and_subset_never_exceeds_n():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 5)), rng.normal(size=(12, 5)) + 0.5
    assert M.mmd2_unbiased(x, y) == pytest.approx(_mmd_loops(x, y), rel=1e-10)
    mean, std, m = M.kid_from_features(x, y, subset_size=1000, n_subsets=3)
    assert m == 12  # clamped to N; each subset is then a permutation of the full set
    assert mean == pytest.approx(_mmd_loops(x, y), rel=1e-10) and std == pytest.approx(0, abs=1e-12)


def _prdc_loops(real, fake, k):
    def radius(s, i):
        return sorted(np.linalg.norm(s[i] - s[j]) for j in range(len(s)))[k]

    rr, rf = [radius(real, i) for i in range(len(real))], [radius(fake, j) for j in range(len(fake))]
    d = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    precision = np.mean([any(d(fake[j], real[i]) < rr[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(d(real[i], fake[j]) < rf[j] for j in range(len(fake))) for i in range(len(real))])
    density = sum(d(fake[j], real[i]) < rr[i] for i in range(len(real)) for j in range(len(fake))) / (k * len(fake))
    coverage = np.mean([min(d(real[i], fake[j]) for j in range(len(fake))) < rr[i] for i in range(len(real))])
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def test_prdc_matches_definition_on_toy_sets():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(20, 2)), rng.normal(size=(15, 2)) * 1.5 + 0.7
    ours, ref = M.prdc(real, fake, k=3), _prdc_loops(real, fake, 3)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-12), key
    same = M.prdc(real, real, k=3)
    assert same["precision"] == 1.0 and same["coverage"] == 1.0


def test_cmmd_matches_direct_rbf_mmd():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(5, 4)) + 2.0
    k = lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 10.0**2))  # noqa: E731
    mean_k = lambda A, B: np.mean([[k(a, b) for b in B] for a in A])  # noqa: E731
    ref = 1000 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))
    assert M.cmmd(x, y) == pytest.approx(ref, rel=1e-10)
    assert M.cmmd(x, x) == pytest.approx(0.0, abs=1e-9) and M.cmmd(x, y) > 0


def test_hist_w1_matches_scipy_wasserstein():
    rng = np.random.default_rng(5)
    a, b = rng.beta(2, 5, (3, 1, 16, 16)), rng.beta(3, 3, (3, 1, 16, 16))
    ours = M.hist_w1(M.intensity_quantiles(torch.from_numpy(a)), M.intensity_quantiles(torch.from_numpy(b)))
    assert ours == pytest.approx(stats.wasserstein_distance(a.ravel(), b.ravel()), rel=0.02)


def test_power_spectrum_of_white_noise_is_flat_at_closed_form_level_and_blur_lowers_high_freqs():
    rng = np.random.default_rng(6)
    sigma, size = 0.1, 64
    x = torch.from_numpy(rng.normal(0.5, sigma, (64, 1, size, size)))
    spec = 10 ** M.radial_power_spectrum(x)
    w = np.hanning(size)
    level = sigma**2 * np.mean(np.outer(w, w) ** 2)  # E|FFT(x w)|^2 / N = sigma^2 mean(w^2)
    np.testing.assert_allclose(spec[4:], level, rtol=0.1)
    blurred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 0, 1, 1)))
    spec_b = 10 ** M.radial_power_spectrum(blurred)
    assert spec_b[-1] < 0.05 * spec[-1]
    assert M.nps_distance(np.log10(spec), np.log10(spec)) == 0.0


def test_bootstrap_and_seed_intervals():
    v = np.random.default_rng(7).normal(1.0, 0.1, 200)
    lo, hi = M.bootstrap_ci(v)
    assert lo < v.mean() < hi and hi - lo == pytest.approx(2 * 1.96 * 0.1 / np.sqrt(200), rel=0.25)
    mean, half = M.mean_ci_over_seeds(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(stats.t.ppf(0.975, 2) * 1.0 / np.sqrt(3))


def test_metric_declarations_are_consistent():
    assert D.METRICS["fid"].higher_is_better is False and D.METRICS["ssim_src"].axis == "structure"
    assert {s.axis for s in D.METRICS.values()} == {"structure", "fidelity", "realism"}
    with pytest.raises(KeyError, match="available"):
        D.get_metric("nope")


def test_adapter_ranges():
    x = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8)
    u8 = M.to_inception_uint8(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 8, 8) and u8.min() == 0 and u8.max() == 255
    assert M.to_unit(x).dtype == torch.float64 and M.to_unit(x).min() == 0 and M.to_unit(x).max() == 1


# ------------------------------------------------------------------------------- weights and the scorer
def test_corrupted_weights_are_refused(tmp_path):
    (tmp_path / WEIGHTS["alexnet"].filename).write_bytes(b"not the weights")
    with pytest.raises(WeightsUnavailable, match="refused: SHA-256"):
        locate("alexnet", tmp_path)
    scorer = Scorer(weights_dir=tmp_path, feature_extractor=RandomFeatures())
    assert "refused" in scorer.unavailable["lpips_src"]


def test_missing_weights_recorded_unavailable_with_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    scorer = Scorer(weights_dir=tmp_path)
    x, y = _images(6, 32)
    xs = x.float() * 2 - 1
    ref = scorer.reference(xs, {"set": "t"})
    out = scorer.score(xs, xs, None, ref, gt_reason="no pairs")
    for m in ("fid", "kid", "coverage", "lpips_src"):
        assert m not in out and "make weights" in out["unavailable"][m]
    assert "cmmd" not in out and "--clip-dir" in out["unavailable"]["cmmd"]
    assert out["unavailable"]["ssim_gt"] == "no pairs"
    assert out["ssim_src"] == pytest.approx(1.0) and out["nps_dist"] == 0.0 and out["hist_w1"] == 0.0


def test_random_features_are_never_reported_as_fid_and_cache_is_hit(tmp_path):
    scorer = Scorer(weights_dir=tmp_path, cache_dir=tmp_path / "cache", feature_extractor=RandomFeatures())
    x, y = _images(8, 32)
    real, fake = x.float() * 2 - 1, y.float() * 2 - 1
    ident = {"dataset": "toy", "split": "test", "domain": "b"}
    ref = scorer.reference(real, ident)
    assert scorer.extractor_calls == 1 and len(list((tmp_path / "cache").glob("ref-*.npz"))) == 1
    scorer2 = Scorer(weights_dir=tmp_path, cache_dir=tmp_path / "cache", feature_extractor=RandomFeatures())
    ref2 = scorer2.reference(real, ident)
    assert scorer2.extractor_calls == 0  # served from the disk cache
    np.testing.assert_array_equal(ref.summaries["fid"], ref2.summaries["fid"])
    out = scorer2.score(fake, real, real, ref2)
    assert "fid" not in out and "randfeat_fid" in out and out["randfeat_fid"] > 0
    assert "Inception" in out["unavailable"]["fid"]
    same = scorer2.score(real, real, real, ref2)
    assert same["randfeat_fid"] == pytest.approx(0, abs=1e-6) and same["ssim_gt"] == pytest.approx(1.0)
    assert out["n_images"] == 8 and out["ssim_src_lo"] <= out["ssim_src"] <= out["ssim_src_hi"]


def test_lpips_backbone_loaded_from_verified_file(tmp_path, monkeypatch):
    import torchvision

    net = torchvision.models.alexnet()
    path = tmp_path / "alexnet.pth"
    torch.save(net.state_dict(), path)
    monkeypatch.setattr("benchmark.scoring.scorer.locate", lambda key, d=None: path)
    lp = LPIPSAlex()
    assert torch.equal(getattr(lp.model.net.slice2, "3").weight, net.features[3].weight)
    x, y = _images(3, 64)
    xs, ys = x.float() * 2 - 1, y.float() * 2 - 1
    d_same, d_diff = lp(xs, xs), lp(xs, ys)
    assert np.allclose(d_same, 0, atol=1e-6) and (d_diff > 0).all()


def test_subject_bootstrap_plan_is_paired_and_clustered():
    subjects = [f"s{i // 3}" for i in range(30)]  # 10 subjects, 3 images each
    plan = M.subject_bootstrap(subjects, 50)
    assert plan.shape == (50, 30) and (plan.sum(axis=1) == 30).all()  # as many subjects drawn as there are
    # all images of a subject share its multiplicity: the cluster is the subject
    assert (plan.reshape(50, 10, 3) == plan.reshape(50, 10, 3)[:, :, :1]).all()
    assert np.array_equal(plan, M.subject_bootstrap(list(subjects), 50))  # same test set -> same replicates
    assert not np.array_equal(plan, M.subject_bootstrap(subjects, 50, seed=1))


def test_scorer_replicates_recompute_each_metric_on_the_resampled_subjects():
    from benchmark.scoring.scorer import Scorer

    g = torch.Generator().manual_seed(0)
    x_hat, x_src, x_gt = (torch.rand(12, 1, 32, 32, generator=g) * 2 - 1 for _ in range(3))
    subjects = [f"s{i // 2}" for i in range(12)]
    scorer = Scorer(weights_dir="/nonexistent", frd=False, n_boot=40)
    ref = scorer.reference(torch.rand(8, 1, 32, 32, generator=g) * 2 - 1, dict(test=1))
    out = scorer.score(x_hat, x_src, x_gt, ref, subjects=subjects)
    plan = M.subject_bootstrap(subjects, 40)
    per_image = M.ssim(M.to_unit(x_hat), M.to_unit(x_gt)).numpy()
    b = 7
    rows = np.repeat(np.arange(12), plan[b])
    assert out["boot"]["ssim_gt"][b] == pytest.approx(per_image[rows].mean(), abs=1e-6)
    nps = M.nps_distance(M.radial_power_spectrum(M.to_unit(x_hat[rows])), ref.summaries["nps_dist"])
    assert out["boot"]["nps_dist"][b] == pytest.approx(nps, abs=1e-6)
    w1 = M.hist_w1(M.intensity_quantiles(M.to_unit(x_hat[rows])), ref.summaries["hist_w1"])
    assert out["boot"]["hist_w1"][b] == pytest.approx(w1, abs=2 / M.HIST_BINS)  # histogram resolution
    assert out["ssim_gt_lo"] <= out["ssim_gt"] <= out["ssim_gt_hi"] and out["n_subjects"] == 6


def test_flat_region_nps_is_the_noise_variance_on_flat_tiles_and_ignores_edges():
    """White noise of variance s^2: every bin above the lowest ring is s^2 (periodogram closed form; the
    flattest-quarter selection lowers it by a few percent, the plane fit also takes power out of bin 1). Edges
    in part of the image do not enter, the whole-image spectrum does see them; doubling the noise quadruples
    the NPS; blur removes its high frequencies."""
    rng = np.random.default_rng(8)
    sigma = 0.02
    flat = np.full((16, 1, 72, 72), 0.4)
    edges = flat.copy()
    edges[:, :, 16:48, 16:48] += 0.3 * (np.arange(32)[None, :] % 6 < 3)  # bars in the middle tiles
    noise = rng.normal(0, sigma, flat.shape)
    nps_flat = M.flat_region_nps(torch.from_numpy(flat + noise)).mean(axis=0)
    nps_edges = M.flat_region_nps(torch.from_numpy(edges + noise)).mean(axis=0)
    assert nps_flat[0] < 1e-20  # detrending removes DC (and part of the lowest ring, bin 1)
    np.testing.assert_allclose(nps_flat[2:], sigma**2, rtol=0.2)
    np.testing.assert_allclose(nps_edges[1:], nps_flat[1:], rtol=0.2)  # other noise tiles, same level
    whole = M.radial_power(torch.from_numpy(edges + noise)).mean(axis=0)
    assert whole[1:8].mean() > 10 * M.radial_power(torch.from_numpy(flat + noise)).mean(axis=0)[1:8].mean()
    double = M.flat_region_nps(torch.from_numpy(flat + 2 * noise)).mean(axis=0)
    np.testing.assert_allclose(double[1:] / nps_flat[1:], 4.0, rtol=0.15)
    blurred = M.flat_region_nps(torch.from_numpy(ndimage.gaussian_filter(flat + noise, (0, 0, 1, 1)))).mean(axis=0)
    assert blurred[-1] < 0.05 * nps_flat[-1]
    # the set metric: zero against itself, larger for noisier sets; clipped images give no usable tile (skipped)
    spec = D.METRICS["nps_flat"]
    ref = spec.summarize(M.flat_region_nps(torch.from_numpy(flat + noise)))
    feats = M.flat_region_nps(torch.from_numpy(flat + noise))
    assert spec.compute(feats, ref) == 0.0
    assert spec.compute(M.flat_region_nps(torch.from_numpy(flat + 2 * noise)), ref) > 0.5  # log10(4) = 0.6
    clipped = np.vstack([flat + noise, np.ones((2, 1, 72, 72))])
    mixed = M.flat_region_nps(torch.from_numpy(clipped))
    assert np.isnan(mixed[-2:]).all() and spec.compute(mixed, ref) == pytest.approx(0.0, abs=1e-12)
    plan = M.subject_bootstrap([f"s{i}" for i in range(18)], n_boot=5)
    assert np.isfinite(spec.compute(mixed, ref, plan)).all()


def test_flat_region_nps_of_a_set_without_a_flat_unclipped_tile_is_unavailable_not_a_number():
    """Images whose every tile touches a clipped pixel (0 or 1) give no NPS; a set of only such images used to score
    a spectrum of zeros (28 decades); now the metric is unavailable for that set, and replicates without a usable
    image are NaN (left out of the interval)."""
    import numpy as np

    from benchmark.scoring.scorer import Scorer

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.uniform(-0.5, 0.5, (6, 1, 32, 32))).float()
    clipped = real.clone()
    clipped[:, :, ::8, ::8] = -1.0  # a black pixel in every 16-px tile
    scorer = Scorer(weights_dir=None, frd=False, n_boot=20)
    ref = scorer.reference(real, dict(test="flat-nps-degenerate"))
    out = scorer.score(clipped, real, None, ref, subjects=["a", "a", "b", "b", "c", "c"])
    assert "nps_flat" not in out and "not defined" in out["unavailable"]["nps_flat"]
    power = D.EXTRACTORS["flat_nps"](torch.cat([clipped[:2], real[2:]]), {})
    plan = np.array([[2, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0]])
    reps = D.METRICS["nps_flat"].compute(power, ref.summaries["nps_flat"], plan)
    assert np.isnan(reps[0]) and np.isfinite(reps[1])
