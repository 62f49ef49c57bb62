"""Metric declarations and the math behind them, in float64, each tested against an independent reference.

`METRICS` is the one metric schema: each declaration says how the metric is computed (per image against the
source or the aligned real image, or on a set through a named per-image feature extractor against the real
reference set), what it needs, its direction and its display; the scorer loops over the declarations, and
record columns, table columns, ranks and plot axes read them. Adding a metric is one declaration at the end of
this file (plus an extractor in `EXTRACTORS` if it reads new features).

Three axes:
* structure - translated image vs its own source (ssim_src, psnr_src, lpips_src);
* fidelity  - translated image vs its aligned real counterpart, where one exists (ssim_gt, psnr_gt, lpips_gt);
* realism   - translated set vs the real target set (fid, kid, precision/recall/density/coverage on
  Inception features; weight-free nps_dist and hist_w1 that run everywhere, and FRD on radiomic features,
  `radiomics.py`, where its optional packages are installed).

Conventions: suite images are float tensors in [-1, 1]; `to_unit` maps them to [0, 1] in float64 and
SSIM/PSNR use data_range = 1 explicitly. PSNR of identical images is capped at `PSNR_CAP_DB`.
"""
from __future__ import annotations

import math
import warnings

import numpy as np


class _Lazy:
    """A module imported on first use: the declarations (`METRICS`) and the interval statistics serve `collect`
    without torch (building tables needs none); computing a metric imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        import importlib

        return getattr(importlib.import_module(self._name), attr)


torch = _Lazy("torch")
F = _Lazy("torch.nn.functional")

PSNR_CAP_DB = 100.0


# ---------------------------------------------------------------- adapters (the only place images are converted)
def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Suite images (N, 1, H, W) in [-1, 1] -> float64 in [0, 1] (no quantisation)."""
    return ((x.double() + 1.0) * 0.5).clamp(0.0, 1.0)


def to_inception_uint8(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) [-1, 1] -> (N, 3, H, W) uint8 [0, 255] for torch-fidelity's Inception.

    The reference FID protocol defines Inception on 8-bit RGB (torch-fidelity asserts uint8) and
    resizes inside the network to 299x299 with antialiased bilinear interpolation; this is the only
    metric input quantised to 8 bits. Grey is repeated to 3 channels.
    """
    return torch.round(to_unit(x) * 255.0).to(torch.uint8).repeat(1, 3, 1, 1)


def to_lpips(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) [-1, 1] -> (N, 3, H, W) float32 [-1, 1] at native size (LPIPS's expected range)."""
    return x.float().clamp(-1.0, 1.0).repeat(1, 3, 1, 1)


# ---------------------------------------------------------------- structure / fidelity
#: Smallest image side every metric accepts (SSIM's 11-pixel Gaussian window); checked before any training.
MIN_IMAGE_SIZE = 2 * int(3.5 * 1.5 + 0.5) + 1


def _gaussian_window(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage.gaussian_filter / skimage
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) with skimage's Gaussian settings.

    Equals `skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=data_range)`: skimage filters with a reflect-padded
    Gaussian (radius 5) and averages the map after cropping 5 px; a 'valid' convolution computes
    exactly that cropped map.

    Args:
        x, y: (N, 1, H, W) float in [0, data_range], H, W >= 11.

    Returns:
        (N,) float64.
    """
    x, y = x.double(), y.double()
    g = _gaussian_window()
    k = g.numel()
    if min(x.shape[-2:]) < k:
        raise ValueError(f"SSIM needs images of at least {k}x{k} pixels, got {tuple(x.shape[-2:])}")
    wx, wy = g.view(1, 1, 1, k), g.view(1, 1, k, 1)

    def filt(z):
        return F.conv2d(F.conv2d(z, wx), wy)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(y)
    vx, vy, cxy = filt(x * x) - mx * mx, filt(y * y) - my * my, filt(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3))


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR in dB (skimage `peak_signal_noise_ratio`), capped at PSNR_CAP_DB for identical images."""
    mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3))
    with np.errstate(divide="ignore"):
        out = 10.0 * torch.log10(data_range**2 / mse)
    return out.clamp(max=PSNR_CAP_DB)


# ---------------------------------------------------------------- realism on features
def _stats(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(f, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2}) computed without complex numbers.

    tr((S1 S2)^{1/2}) = sum sqrt(eig(A S2 A)) with A = S1^{1/2} (symmetric PSD), which stays real and
    finite for singular covariances (fewer samples than dimensions); tiny negative eigenvalues from
    rounding are clipped to 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    w1, v1 = np.linalg.eigh((s1 + s1.T) / 2)
    a = (v1 * np.sqrt(np.clip(w1, 0, None))) @ v1.T
    m = a @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean, 0.0))


def fid_from_features(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    n, d = min(len(f_real), len(f_fake)), f_real.shape[1]
    if n < d:
        warnings.warn(f"FID with {n} images and {d}-dim features: covariances are rank-deficient, so the value "
                      "is biased upwards; compare only numbers computed with the same N", stacklevel=2)
    return frechet_distance(*_stats(f_real), *_stats(f_fake))


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (KID, Binkowski et al. 2018)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2.0 * kxy.mean())


def kid_from_features(f_real: np.ndarray, f_fake: np.ndarray, subset_size: int = 1000, n_subsets: int = 100,
                      seed: int = 0) -> tuple[float, float, int]:
    """KID as mean and std of the unbiased MMD^2 over random subsets; subset size never exceeds N.

    Returns:
        (mean, std, subset_size used).
    """
    m = min(subset_size, len(f_real), len(f_fake))
    if m < 2:
        raise ValueError("KID needs at least 2 images per set")
    rng = np.random.default_rng(seed)
    vals = [mmd2_unbiased(f_real[rng.choice(len(f_real), m, replace=False)],
                          f_fake[rng.choice(len(f_fake), m, replace=False)]) for _ in range(n_subsets)]
    return float(np.mean(vals)), float(np.std(vals)), m


def prdc(f_real: np.ndarray, f_fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density, coverage (Naeem et al. 2020) with k-nearest-neighbour balls."""
    f_real, f_fake = np.asarray(f_real, np.float64), np.asarray(f_fake, np.float64)
    k = min(k, len(f_real) - 1, len(f_fake) - 1)
    if k < 1:
        raise ValueError("PRDC needs at least 2 images per set")
    d_rr = np.linalg.norm(f_real[:, None] - f_real[None], axis=-1)
    d_ff = np.linalg.norm(f_fake[:, None] - f_fake[None], axis=-1)
    d_rf = np.linalg.norm(f_real[:, None] - f_fake[None], axis=-1)  # (R, F)
    r_real = np.sort(d_rr, axis=1)[:, k]  # k-th neighbour, index 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    inside = d_rf < r_real[:, None]  # fake j inside the ball of real i
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d_rf < r_fake[None, :]).any(axis=1).mean()),
        "density": float(inside.sum() / (k * len(f_fake))),
        "coverage": float((d_rf.min(axis=1) < r_real).mean()),
    }


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD (Jayasumana et al., CVPR 2024): scale * MMD^2 with a Gaussian RBF kernel of bandwidth sigma
    on CLIP embeddings, the V-statistic over all pairs (diagonals included), as in the authors' code."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1.0 / (2 * sigma**2)

    def k(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T
        return np.exp(-gamma * sq).mean()

    return float(scale * (k(x, x) + k(y, y) - 2 * k(x, y)))


# ---------------------------------------------------------------- weight-free physics statistics
def radial_power(x01: torch.Tensor, n_bins: int | None = None) -> np.ndarray:
    """Per-image radially averaged power spectra (linear), (N, n_bins).

    Each image is mean-subtracted and Hann-windowed before the FFT; bins are rings of unit width in
    frequency-index units, up to Nyquist. Radial binning is linear, so the mean of these rows is the radial
    spectrum of the set's mean power (`radial_power_spectrum`), which lets a bootstrap re-weight images cheaply.
    """
    x = x01.double()[:, 0]
    n, h, w = x.shape
    hann = torch.outer(torch.hann_window(h, periodic=False, dtype=torch.float64),
                       torch.hann_window(w, periodic=False, dtype=torch.float64))
    x = (x - x.mean(dim=(1, 2), keepdim=True)) * hann
    power = (torch.fft.fft2(x).abs() ** 2).reshape(n, -1) / (h * w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None] * h
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :] * w
    r = torch.sqrt(fx**2 + fy**2).round().long().reshape(-1)
    n_bins = n_bins or min(h, w) // 2
    keep = r < n_bins
    sums = torch.zeros(n, n_bins, dtype=torch.float64).index_add_(1, r[keep], power[:, keep])
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, r[keep], torch.ones(int(keep.sum()),
                                                                                        dtype=torch.float64))
    return (sums / counts).numpy()


def log_spectrum(power: np.ndarray) -> np.ndarray:
    """log10 of a (mean) radial power spectrum, floored at 1e-30."""
    return np.log10(np.maximum(power, 1e-30))


def radial_power_spectrum(x01: torch.Tensor, n_bins: int | None = None) -> np.ndarray:
    """Mean radially averaged power spectrum of a set, log10, (n_bins,).

    Noise level sets the high-frequency floor, detector blur its roll-off and anatomy/contrast the
    low-frequency part (see `radial_power`).
    """
    return log_spectrum(radial_power(x01, n_bins).mean(axis=0))


def nps_distance(spec_a: np.ndarray, spec_b: np.ndarray) -> float:
    """Mean absolute difference of two log10 radial spectra, DC bin excluded (decades)."""
    return float(np.mean(np.abs(spec_a[1:] - spec_b[1:])))


NPS_TILE = 16  # pixels; a 72-px `tiny` image gives 16 tiles, of which the flattest quarter are used


def flat_region_nps(x01: torch.Tensor, tile: int = NPS_TILE, keep: float = 0.25) -> np.ndarray:
    """Per-image noise power spectra measured on flat regions, (N, tile // 2): the quantity IEC 62220-1 defines
    on flat-field exposures, taken here from the flattest parts of anatomical images.

    Each image is cut into non-overlapping `tile` x `tile` tiles; each tile is detrended (least-squares plane
    removed, which takes slow anatomy and heel-effect gradients out). Tiles with clipped pixels (0 or 1: no
    noise there) are left out; of the rest the `keep` fraction with the smallest detrended variance (at least
    one) are the image's flat regions: there the variance is noise, elsewhere it is mostly edges. Their
    periodograms |FFT|^2 / tile^2 are radially binned (unit rings up to Nyquist) and averaged: for white noise
    of variance s^2 every bin above the lowest ring is s^2 (a test checks the closed form; the plane fit removes
    DC and about a quarter of bin 1, and picking the flattest tiles lowers the level by a few percent - the same
    for every set compared). Images with no usable tile give
    NaN rows, which set statistics skip. This needs no masks, so skull-sim and folder data are measured alike.
    """
    x = x01.double()[:, 0]
    n, h, w = x.shape
    ty, tx = h // tile, w // tile
    if ty * tx == 0:
        raise ValueError(f"flat-region NPS needs images of at least {tile}x{tile} pixels, got {h}x{w}")
    tiles = x[:, :ty * tile, :tx * tile].reshape(n, ty, tile, tx, tile).permute(0, 1, 3, 2, 4)
    tiles = tiles.reshape(n, ty * tx, tile * tile)
    yy, xx = torch.meshgrid(torch.arange(tile, dtype=torch.float64), torch.arange(tile, dtype=torch.float64),
                            indexing="ij")
    design = torch.stack([torch.ones(tile * tile, dtype=torch.float64), yy.reshape(-1), xx.reshape(-1)], 1)
    fit = design @ torch.linalg.pinv(design)  # projection onto planes
    resid = tiles - tiles @ fit.T
    var = resid.var(dim=2)
    clipped = ((tiles <= 0) | (tiles >= 1)).any(dim=2)
    var = torch.where(clipped | (var <= 0), torch.full_like(var, float("inf")), var)
    n_keep = max(1, int(round(keep * ty * tx)))
    order = var.argsort(dim=1)[:, :n_keep]
    usable = torch.gather(torch.isfinite(var), 1, order)
    chosen = torch.gather(resid, 1, order[..., None].expand(-1, -1, tile * tile)).reshape(n, n_keep, tile, tile)
    power = (torch.fft.fft2(chosen).abs() ** 2).reshape(n, n_keep, -1) / (tile * tile)
    fy = torch.fft.fftfreq(tile, dtype=torch.float64)[:, None] * tile
    fx = torch.fft.fftfreq(tile, dtype=torch.float64)[None, :] * tile
    r = torch.sqrt(fx**2 + fy**2).round().long().reshape(-1)
    n_bins = tile // 2
    inside = r < n_bins
    ones = torch.ones(int(inside.sum()), dtype=torch.float64)
    counts = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, r[inside], ones)
    sums = torch.zeros(n, n_keep, n_bins, dtype=torch.float64).index_add_(2, r[inside], power[..., inside])
    per_tile = sums / counts
    weight = usable.double()[..., None]
    out = (per_tile * weight).sum(dim=1) / weight.sum(dim=1)
    return out.numpy()  # 0/0 -> NaN for images without a usable tile


QUANTILES = np.linspace(0.0, 1.0, 1001)


def intensity_quantiles(x01: torch.Tensor) -> np.ndarray:
    return np.quantile(x01.double().numpy().ravel(), QUANTILES)


HIST_BINS = 4096


def intensity_histograms(x01: torch.Tensor, n_bins: int = HIST_BINS) -> np.ndarray:
    """Per-image intensity histograms on [0, 1], (N, n_bins): a bootstrap pools them by re-weighting."""
    idx = (x01.double().reshape(len(x01), -1).clamp(0, 1) * n_bins).long().clamp(max=n_bins - 1)
    out = torch.zeros(len(x01), n_bins, dtype=torch.float64)
    return out.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64)).numpy()


def quantiles_from_histogram(counts: np.ndarray) -> np.ndarray:
    """The `QUANTILES` of a pooled histogram on [0, 1] (linear inside each bin; resolution 1/n_bins)."""
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    cdf = np.concatenate([[0.0], np.cumsum(counts)]) / max(counts.sum(), 1e-300)
    return np.interp(QUANTILES, cdf, edges)


def hist_w1(q_a: np.ndarray, q_b: np.ndarray) -> float:
    """1-Wasserstein distance between pooled intensity distributions, from their quantile functions.

    W1 = integral_0^1 |F_a^-1(p) - F_b^-1(p)| dp, by the trapezoidal rule on 1001 quantiles.
    """
    return float(np.trapezoid(np.abs(q_a - q_b), QUANTILES))


# ---------------------------------------------------------------- intervals
def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over images."""
    v = np.asarray(values, np.float64)
    if len(v) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def subject_bootstrap(subjects: list[str], n_boot: int = 200, seed: int = 0) -> np.ndarray:
    """Cluster-bootstrap plan over subjects: (n_boot, N) multiplicity of each image in each replicate.

    Each replicate draws as many subjects as there are, with replacement, and takes all images of every drawn
    subject (views of one subject are not independent). The plan depends only on the sorted subject ids and
    `seed`, so every method, seed and source scored on the same test set gets the same replicates, which makes
    replicate b of two methods a paired comparison.
    """
    ids = sorted(set(subjects))
    index = {s: i for i, s in enumerate(ids)}
    of_image = np.array([index[s] for s in subjects])
    import hashlib

    digest = int(hashlib.sha256(("|".join(ids) + f"|{seed}").encode()).hexdigest()[:15], 16)
    draws = np.random.default_rng(digest).integers(0, len(ids), size=(n_boot, len(ids)))
    per_subject = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])  # (B, S)
    return per_subject[:, of_image]  # (B, N)


def percentile_interval(replicates, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(replicates, np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return (float("nan"), float("nan"))
    alpha = (1 - level) / 2
    return float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha))


def mean_ci_over_seeds(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t interval over seeds (0 half-width for one seed)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    from scipy import stats

    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean()), float(half)
