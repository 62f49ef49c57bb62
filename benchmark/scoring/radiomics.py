"""Fréchet Radiomics Distance (FRD v1; Konz, Osuala et al., Medical Image Analysis 2026): weight-free realism.

Radiomic features replace a network's features, so FRD needs no pretrained weights; it needs the optional
`frd-score` and `pyradiomics` packages (`make frd`, which `make setup` runs). Without them `frd` is recorded
unavailable with that command.

What is computed, matching `frd_score.compute_frd(paths)` with its defaults (checked by the tests on PNG
folders):
* per image: frd-score's own v1 pyradiomics configuration (`configs/extraction_2d.yaml`: Original, LoG with
  sigma 2-5 and wavelet images; first-order, 22 GLCM, GLRLM, GLSZM and NGTDM features; pyradiomics'
  per-image normalisation, resampling to 2 px spacing) on the image as a 1 x H x W volume with 1 mm spacing,
  masked by the whole image except one corner voxel (frd-score's work-around for a pyradiomics bug);
  numeric diagnostics (e.g. the image mean) are features too, as in the paper's code;
* intensities are those a 16-bit PNG of the image holds (round(65535 x), x in [0, 1]), so an exported
  folder scored by frd-score gives the same number;
* per set: images with a NaN feature are dropped; float32; both sets z-scored with the *reference*
  (real) set's mean and std (paper Eq. 3); feature columns that become NaN/Inf are dropped;
  FRD = log(d^2), d^2 the Fréchet distance of the two Gaussians (frd-score's default log convention).

Note: frd-score z-scores against its first argument; the suite always passes the real target set first.
Like FID, FRD with fewer images than features (~400) is biased; compare numbers computed with the same N.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

import benchmark.scoring.metrics as M
from benchmark.errors import WeightsUnavailable

INSTALL_HINT = "make frd  (pip install versioneer wheel; pip install --no-build-isolation pyradiomics==3.0.1 frd-score)"


def quantize16(x: torch.Tensor) -> np.ndarray:
    """Suite images (N, 1, H, W) in [-1, 1] -> (N, H, W) float32 holding 16-bit PNG values."""
    return torch.round(M.to_unit(x) * 65535.0)[:, 0].numpy().astype(np.float32)


_WORKER: RadiomicsFeatures | None = None


def _worker_init(settings: dict) -> None:
    import signal

    global _WORKER
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle (one line, not one per worker)
    _WORKER = RadiomicsFeatures(workers=1)
    _WORKER.extractor.settings.update(settings)


def _worker_features(images: np.ndarray) -> list[dict[str, float]]:
    return [_WORKER._one(img) for img in images]


class RadiomicsFeatures:
    """Per-image FRD v1 radiomic feature vectors (raw, un-normalised), via frd-score's pyradiomics setup.

    pyradiomics is single-threaded Python (0.18 s per 64-px image), so sets larger than `PARALLEL_MIN` images are
    split over `workers` processes (default: the CPU cores; started once, kept for the object's lifetime). The
    features are the same either way (tested).
    """

    prefix = ""
    PARALLEL_MIN = 32

    def __init__(self, workers: int | None = None):
        try:
            import radiomics
            import SimpleITK as sitk
            from frd_score import __version__ as frd_version
            from frd_score import frd
        except ImportError as exc:  # an optional extra: missing is a normal state, not an error
            raise WeightsUnavailable(f"FRD needs the optional packages frd-score and pyradiomics ({exc}); "
                                     f"install them with: {INSTALL_HINT}") from exc
        self._sitk, self._frd = sitk, frd
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        radiomics.setVerbosity(60)
        self.extractor = frd.get_feature_extractor(frd.FRD_VERSION_V1, image_dim=2)
        self.name = f"frd-v1 frd-score {frd_version} pyradiomics {radiomics.__version__}"
        self.weights_sha = None
        self.names: list[str] | None = None
        import os

        self.workers = workers or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
        self._pool = None

    def _rows(self, images: np.ndarray) -> list[dict[str, float]]:
        if self.workers <= 1 or len(images) < self.PARALLEL_MIN:
            return [self._one(img) for img in images]
        if self._pool is None:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: the parent holds torch's thread pools
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                             initializer=_worker_init, initargs=(dict(self.extractor.settings),))
        chunks = np.array_split(images, self.workers * 4)
        return [row for part in self._pool.map(_worker_features, chunks) for row in part]

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    def _one(self, img: np.ndarray) -> dict[str, float]:
        sitk = self._sitk
        image = sitk.GetImageFromArray(img[None])  # (1, H, W) volume, spacing 1, as frd-score lifts 2-D images
        mask_arr = np.ones((1, *img.shape), np.uint8)
        mask_arr[0, 0, 0] = 0
        mask = sitk.GetImageFromArray(mask_arr)
        mask.CopyInformation(image)
        out = self.extractor.execute(image, mask)
        feats = {}
        for key, value in out.items():
            if "diagnostics" not in key:
                feats[key] = float(value)
            else:  # numeric diagnostics count as features in FRD v1; strings and tuples do not
                try:
                    feats[key] = float(value)
                except (TypeError, ValueError):
                    pass
        return feats

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        """(N, 1, H, W) in [-1, 1] -> (N, F) float64 raw features (same column order for every image)."""
        rows = self._rows(quantize16(x))
        names = list(rows[0])
        if any(list(r) != names for r in rows):
            raise RuntimeError("pyradiomics returned different feature sets for images of one set")
        if self.names is None:
            self.names = names
        return np.array([[r[n] for n in names] for r in rows], np.float64)


def frd_from_features(f_real: np.ndarray, f_fake: np.ndarray) -> float:
    """FRD v1 = log(Fréchet distance^2) of the two feature sets, z-scored by the real set's statistics."""
    sets = []
    for f in (f_real, f_fake):
        f = np.asarray(f, np.float64)
        f = f[~np.isnan(f).any(axis=1)].astype(np.float32)  # frd-score v1: drop NaN images, then float32
        if len(f) < 2:
            raise ValueError("FRD needs at least 2 images per set with finite radiomic features")
        sets.append(f)
    mean, std = np.nanmean(sets[0], axis=0), np.nanstd(sets[0], axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = [(f - mean) / std for f in sets]  # a constant reference feature gives NaN/Inf: dropped below
    keep = np.ones(z[0].shape[1], bool)
    for f in z:
        keep &= np.isfinite(f).all(axis=0)
    if not keep.any():
        raise ValueError("FRD: no radiomic feature varies across the reference set")
    z = [f[:, keep] for f in z]
    d2 = M.frechet_distance(z[0].mean(0), np.cov(z[0], rowvar=False), z[1].mean(0), np.cov(z[1], rowvar=False))
    return float(np.log(max(d2, np.finfo(np.float64).tiny)))
