"""The metric schema: `METRICS`, one declaration per metric, which the scorer loops over and record columns,
table columns, ranks and plot axes read; `EXTRACTORS`, the per-image features the set metrics read.

Each declaration says how the metric is computed (per image against the source or the aligned real image, or on
a set through a named per-image feature extractor against the real reference set), what it needs, its direction
and its display. Adding a metric is one declaration at the end of `METRICS` (plus an extractor in `EXTRACTORS`
if it reads new features); its maths goes in `benchmark.scoring.metrics`, tested against an independent reference.
Imports neither torch nor scipy at module level: `collect` reads the declarations without them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

from benchmark.errors import UnknownName
from benchmark.scoring.metrics import (
    QUANTILES,
    cmmd,
    fid_from_features,
    flat_region_nps,
    hist_w1,
    intensity_histograms,
    log_spectrum,
    mmd2_unbiased,
    nps_distance,
    prdc,
    psnr,
    quantiles_from_histogram,
    radial_power,
    ssim,
    to_unit,
    torch,
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: metadata and how the scorer computes it.

    Attributes:
        name: Record column.
        axis: "structure" | "fidelity" | "realism".
        higher_is_better: Direction (drives arrows, ranks, bolding).
        needs: Weights or optional packages needed ("inception", "alexnet", "clip", "radiomics") or None.
        label: Display label.
        per_image: Averaged over images, or a statistic of the whole set.
        compare: Per-image metrics: "src" (vs the source image) or "gt" (vs the aligned real image).
        extractor: Set metrics: the `EXTRACTORS` entry whose per-image features `compute` reads.
        compute: Per image: (x_hat, x_other, models) -> (N,) values, images in [-1, 1]. Set: (features,
            reference summary, plan) -> the value (plan None) or one value per bootstrap replicate (plan: (B, N)
            image multiplicities).
        summarize: Set metrics: reference features -> what `compute` needs of them (cached per reference set).
        in_table: Shown in the tables (`collect`).
    """

    name: str
    axis: str
    higher_is_better: bool
    needs: str | None
    label: str
    per_image: bool
    compare: str | None = None
    extractor: str | None = None
    compute: Callable | None = None
    summarize: Callable = staticmethod(lambda features: features)
    in_table: bool = True

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def _pair(fn: Callable) -> Callable:
    """A per-image metric of two [0, 1] images, lifted to suite images."""
    return lambda x_hat, x_other, models: fn(to_unit(x_hat), to_unit(x_other)).numpy()


def _lpips(x_hat, x_other, models):
    return models["alexnet"](x_hat, x_other)


def replicate_rows(plan: np.ndarray) -> list[np.ndarray]:
    """Row indices of each bootstrap replicate (images repeated by their multiplicity)."""
    return [np.repeat(np.arange(plan.shape[1]), row) for row in plan]


def _resampled(stat: Callable) -> Callable:
    """A set statistic stat(reference features, features) evaluated on the set or on each replicate's rows."""
    def compute(features, reference, plan=None):
        if plan is None:
            return stat(reference, features)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. FID's rank-deficiency warning, once per replicate
            return np.array([stat(reference, features[rows]) for rows in replicate_rows(plan)])
    return compute


def _spectrum_distance(power, reference, plan=None):
    if plan is None:
        return nps_distance(log_spectrum(power.mean(axis=0)), reference)
    weights = plan / plan.sum(axis=1, keepdims=True)
    return np.array([nps_distance(log_spectrum(p), reference) for p in weights @ power])


def _flat_nps_distance(power, reference, plan=None):
    """`nps_distance` of set-mean flat-region NPS (images without a usable tile are skipped; NaN when no image of
    the set, or of a replicate, has one: the metric is not defined there)."""
    ok = np.isfinite(power).all(axis=1)
    power = np.where(ok[:, None], power, 0.0)
    if plan is None:
        return nps_distance(log_spectrum(power.sum(axis=0) / ok.sum()), reference) if ok.any() else float("nan")
    weights = plan * ok[None, :]
    total = weights.sum(axis=1, keepdims=True)
    weights = weights / np.maximum(total, 1)
    return np.array([nps_distance(log_spectrum(p), reference) if t > 0 else np.nan
                     for p, t in zip(weights @ power, total[:, 0], strict=True)])


def _flat_nps_summary(power):
    ok = np.isfinite(power).all(axis=1)
    return log_spectrum(power[ok].mean(axis=0))


def _hist_w1(pixels, reference, plan=None):
    if plan is None:
        return hist_w1(np.quantile(pixels.ravel(), QUANTILES), reference)
    counts = intensity_histograms(torch.from_numpy(pixels)[:, None])
    return np.array([hist_w1(quantiles_from_histogram(w @ counts), reference) for w in plan.astype(np.float64)])


def _prdc(key: str) -> Callable:
    return _resampled(lambda real, fake: prdc(real, fake)[key])


#: Per-image feature extractors of the set metrics: (images in [-1, 1], models) -> (N, ...) array.
EXTRACTORS: dict[str, Callable] = {
    "spectrum": lambda x, models: radial_power(to_unit(x)),
    "flat_nps": lambda x, models: flat_region_nps(to_unit(x)),
    "pixels": lambda x, models: to_unit(x).reshape(len(x), -1).numpy(),
    "inception": lambda x, models: models["inception"](x),
    "clip": lambda x, models: models["clip"](x),
    "radiomics": lambda x, models: models["radiomics"](x),
}

METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        MetricSpec("ssim_src", "structure", True, None, "SSIM (src)", True, "src", compute=_pair(ssim)),
        MetricSpec("psnr_src", "structure", True, None, "PSNR (src)", True, "src", compute=_pair(psnr)),
        MetricSpec("lpips_src", "structure", False, "alexnet", "LPIPS (src)", True, "src", compute=_lpips),
        MetricSpec("ssim_gt", "fidelity", True, None, "SSIM (gt)", True, "gt", compute=_pair(ssim)),
        MetricSpec("psnr_gt", "fidelity", True, None, "PSNR (gt)", True, "gt", compute=_pair(psnr)),
        MetricSpec("lpips_gt", "fidelity", False, "alexnet", "LPIPS (gt)", True, "gt", compute=_lpips),
        MetricSpec("fid", "realism", False, "inception", "FID", False, extractor="inception",
                   compute=_resampled(fid_from_features)),
        MetricSpec("kid", "realism", False, "inception", "KID", False, extractor="inception",
                   compute=_resampled(lambda real, fake: mmd2_unbiased(real, fake))),
        MetricSpec("precision", "realism", True, "inception", "Precision", False, extractor="inception",
                   compute=_prdc("precision"), in_table=False),
        MetricSpec("recall", "realism", True, "inception", "Recall", False, extractor="inception",
                   compute=_prdc("recall"), in_table=False),
        MetricSpec("density", "realism", True, "inception", "Density", False, extractor="inception",
                   compute=_prdc("density"), in_table=False),
        MetricSpec("coverage", "realism", True, "inception", "Coverage", False, extractor="inception",
                   compute=_prdc("coverage")),
        MetricSpec("cmmd", "realism", False, "clip", "CMMD", False, extractor="clip", compute=_resampled(cmmd)),
        MetricSpec("frd", "realism", False, "radiomics", "FRD", False, extractor="radiomics",
                   compute=_resampled(lambda real, fake: _frd(real, fake))),
        MetricSpec("nps_dist", "realism", False, None, "Spectrum dist", False, extractor="spectrum",
                   compute=_spectrum_distance, summarize=lambda power: log_spectrum(power.mean(axis=0))),
        MetricSpec("nps_flat", "realism", False, None, "NPS dist (flat)", False, extractor="flat_nps",
                   compute=_flat_nps_distance, summarize=_flat_nps_summary),
        MetricSpec("hist_w1", "realism", False, None, "Hist W1", False, extractor="pixels", compute=_hist_w1,
                   summarize=lambda pixels: np.quantile(pixels.ravel(), QUANTILES)),
    )
}


def _frd(real: np.ndarray, fake: np.ndarray) -> float:
    from benchmark.scoring.radiomics import frd_from_features

    return frd_from_features(real, fake)


def get_metric(name: str) -> MetricSpec:
    if name not in METRICS:
        raise UnknownName(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
    return METRICS[name]
