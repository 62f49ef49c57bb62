"""What the real domains' fine anatomy (skull-sim v3, `datasets.detail`) does to an image, measured on the generator.

* The **ceiling on fidelity**: a translator sees a synthetic image, which holds none of the subject's fine anatomy,
  so even a perfect one cannot tell which of its realisations the real image holds. Two real images of the same
  scene that differ only in that anatomy (`draw` 0, the dataset's, and `draw` 1, under the same noise: coupled
  Poisson quanta) bound what SSIM (gt) and PSNR (gt) can reach.
* **Where the detail is**: its share of the real image's variance, var(with - without) / var(with), in the flat
  soft-tissue region (label 1 of the scene's mask) and in bone (label 2), the same noise in both images.

`benchmark.scoring.ceiling` scores these images with the suite's own SSIM and PSNR and writes the table.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np

from .physics import DOMAIN_STYLES
from .skull_sim import PRESETS, label_mask, render_scene


def _quantised(img: np.ndarray) -> np.ndarray:
    """As the dataset stores it (16-bit PNG), back in [0, 1]."""
    return np.round(np.clip(img, 0.0, 1.0) * 65535.0) / 65535.0


def _scene_job(args: tuple) -> dict:
    seed, subject, preset, view_index, domains = args
    with_detail = render_scene(seed, subject, preset, view_index, domains=domains)
    other = render_scene(seed, subject, preset, view_index, domains=domains, draw=1)
    without = render_scene(seed, subject, preset, view_index, domains=domains, detail=False)
    out = {"mask": label_mask(with_detail["lengths"])}
    for d in domains:
        out[d] = tuple(_quantised(x[d]) for x in (with_detail, other, without))
    return out


def detail_images(seed: int, preset: str, subjects: list[int], domains: tuple[str, ...] | None = None,
                  workers: int = 1) -> list[dict]:
    """For every view of `subjects`: {"mask": labels, domain: (dataset image, another draw, without the detail)}.

    Raises:
        ValueError: a domain that is not a real one (the synthetic domains carry no fine anatomy).
    """
    domains = tuple(domains or [d for d, s in DOMAIN_STYLES.items() if s.kind == "real"])
    synthetic = [d for d in domains if DOMAIN_STYLES[d].kind != "real"]
    if synthetic:
        raise ValueError(f"{synthetic[0]} is a synthetic domain: the fine anatomy is in the real domains only")
    jobs = [(seed, s, preset, v, domains) for s in subjects for v in range(len(PRESETS[preset].views))]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            return list(pool.map(_scene_job, jobs))
    return [_scene_job(j) for j in jobs]


def variance_share(with_detail: np.ndarray, without: np.ndarray, region: np.ndarray) -> float:
    """var(with - without) / var(with) over `region` (NaN where the region has fewer than 2 pixels)."""
    if region.sum() < 2:
        return float("nan")
    return float(np.var((with_detail - without)[region]) / np.var(with_detail[region]))


__all__ = ["detail_images", "variance_share"]
