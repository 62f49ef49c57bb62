"""The one scorer every method goes through: features extracted once, real-set statistics cached.

`Scorer.score(x_hat, x_src, x_gt, reference, subjects=...)` returns one flat dict of values (plus `n_images`,
`unavailable`: {metric: reason}, and with the test images' subject ids a subject-level cluster bootstrap:
`boot` = {metric: replicate values}, the same replicates for every method scored on the same test set, and
their 95 % percentile interval `<metric>_lo/_hi`). Set-level metrics are recomputed on each replicate's images
(spectra and histograms re-weighted, features re-sampled); FRD/FID/KID use the same plan. A metric whose weights
are missing or refused is reported unavailable with the reason and the fix, never computed with a
stand-in network under its name. Feature extractors other than the reference Inception (e.g. the
random network used by the plumbing tests) write their results under `<prefix>fid` etc., never `fid`.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .radiomics import RadiomicsFeatures, frd_from_features
from .weights import WeightsUnavailable, locate, sha256_of


class InceptionFeatures:
    """torch-fidelity Inception-v3 pool features (2048-d) via torchmetrics, from verified local weights."""

    name, prefix, batch_size = "inception-v3-compat", "", 64

    def __init__(self, weights_dir: str | Path | None = None):
        path = locate("inception", weights_dir)  # raises WeightsUnavailable
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.weights_sha = sha256_of(path)[:16]
        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(path)).eval()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = [self.net(M.to_inception_uint8(x[i:i + self.batch_size])).double()
               for i in range(0, len(x), self.batch_size)]
        return torch.cat(out).reshape(len(x), -1).numpy()


class RandomFeatures:
    """A small *random* conv net: for testing the FID/KID/PRDC plumbing only, never reported as FID."""

    name, prefix, batch_size = "random-conv-features", "randfeat_", 256

    def __init__(self, dim: int = 64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.convs = [torch.randn(16, 3, 5, 5, generator=g) * 0.2, torch.randn(dim, 16, 5, 5, generator=g) * 0.1]
        self.weights_sha = f"random-seed{seed}-dim{dim}"

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        z = M.to_inception_uint8(x).float() / 127.5 - 1
        z = torch.relu(torch.nn.functional.conv2d(z, self.convs[0], stride=2))
        z = torch.relu(torch.nn.functional.conv2d(z, self.convs[1], stride=2))
        return z.mean(dim=(2, 3)).double().numpy()


class LPIPSAlex:
    """LPIPS v0.1 (AlexNet): linear heads from the lpips package, backbone from verified torchvision weights."""

    def __init__(self, weights_dir: str | Path | None = None):
        path = locate("alexnet", weights_dir)
        import lpips

        self.model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
        state = torch.load(path, map_location="cpu", weights_only=True)
        # lpips keeps torchvision's layer indices inside its slices: features.<i>.* -> slice<k>.<i>.*
        own = self.model.net.state_dict()
        mapped = {}
        for key in own:
            _, idx, param = key.split(".")
            mapped[key] = state[f"features.{idx}.{param}"]
        self.model.net.load_state_dict(mapped)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> np.ndarray:
        out = [self.model(M.to_lpips(x[i:i + batch_size]), M.to_lpips(y[i:i + batch_size])).reshape(-1)
               for i in range(0, len(x), batch_size)]
        return torch.cat(out).double().numpy()


class CLIPEmbeddings:
    """L2-normalised CLIP image embeddings for CMMD, from a local transformers folder (never downloaded).

    The CMMD paper uses `openai/clip-vit-large-patch14-336`; save it once with
    `CLIPVisionModelWithProjection.from_pretrained(...).save_pretrained(DIR)` (plus its image processor)
    where the hub is reachable, then pass `--clip-dir DIR`. Needs the `transformers` package.
    """

    name = "clip"

    def __init__(self, clip_dir: str | Path | None):
        if clip_dir is None or not (Path(clip_dir) / "config.json").is_file():
            raise WeightsUnavailable(f"CMMD needs CLIP weights saved with transformers in --clip-dir (got {clip_dir}); "
                                     "see benchmark/scorer.py CLIPEmbeddings")
        try:
            from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection
        except ImportError as exc:
            raise WeightsUnavailable("CMMD needs the transformers package: pip install transformers") from exc
        self.model = CLIPVisionModelWithProjection.from_pretrained(clip_dir, local_files_only=True).eval()
        self.processor = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> np.ndarray:
        rgb = list(M.to_inception_uint8(x).permute(0, 2, 3, 1).numpy())  # processor resizes/normalises
        out = []
        for i in range(0, len(rgb), 32):
            pixels = self.processor(images=rgb[i:i + 32], return_tensors="pt")["pixel_values"]
            e = self.model(pixel_values=pixels).image_embeds
            out.append(torch.nn.functional.normalize(e, dim=-1).double())
        return torch.cat(out).numpy()


@dataclass
class Reference:
    """Statistics of a real target set, computed once and cached on disk.

    Attributes:
        key: Cache key (dataset, split hash, split, domain, extractor and its weights hash).
        n: Number of real images.
        spectrum: log10 radial power spectrum.
        quantiles: Intensity quantiles.
        features: Extractor features (None when the extractor is unavailable).
    """

    key: str
    n: int
    spectrum: np.ndarray
    quantiles: np.ndarray
    features: np.ndarray | None = None
    clip: np.ndarray | None = None
    radiomics: np.ndarray | None = None


@dataclass
class Scorer:
    """Scores translated images; see module docstring.

    Args:
        weights_dir: Extra folder searched for Inception/AlexNet weights.
        cache_dir: Where real-set statistics are cached (None: memory only).
        feature_extractor: Override (tests); default is Inception, or unavailable.
        lpips_model: Override (tests); default is LPIPS-AlexNet, or unavailable.
        clip_dir: Local CLIP folder for CMMD (optional; CMMD is unavailable without it).
        frd: Compute FRD when its optional packages are installed (False: recorded unavailable, e.g. for speed).
        radiomics: Override of the FRD feature extractor (tests).
        kid_subset_size: KID subset size (clamped to N).
        n_boot: Subject-bootstrap replicates (per-image and set-level metrics).
    """

    weights_dir: str | Path | None = None
    cache_dir: Path | None = None
    feature_extractor: object | None = None
    lpips_model: object | None = None
    clip_dir: str | Path | None = None
    clip_model: object | None = None
    frd: bool = True
    radiomics: object | None = None
    kid_subset_size: int = 1000
    n_boot: int = 200
    unavailable: dict = field(default_factory=dict)
    extractor_calls: int = 0

    def __post_init__(self):
        if self.feature_extractor is not None and self.feature_extractor.prefix:
            for m in ("fid", "kid", "precision", "recall", "density", "coverage"):
                self.unavailable[m] = f"scored with {self.feature_extractor.name} instead of the reference Inception"
        if self.feature_extractor is None:
            try:
                self.feature_extractor = InceptionFeatures(self.weights_dir)
            except WeightsUnavailable as exc:
                for m in ("fid", "kid", "precision", "recall", "density", "coverage"):
                    self.unavailable[m] = str(exc)
        if self.clip_model is None:
            try:
                self.clip_model = CLIPEmbeddings(self.clip_dir)
            except WeightsUnavailable as exc:
                self.unavailable["cmmd"] = str(exc)
        if not self.frd:
            self.radiomics = None
            self.unavailable["frd"] = "FRD switched off for this invocation (--no-frd)"
        elif self.radiomics is None:
            try:
                self.radiomics = RadiomicsFeatures()
            except WeightsUnavailable as exc:
                self.unavailable["frd"] = str(exc)
        if self.lpips_model is None:
            try:
                self.lpips_model = LPIPSAlex(self.weights_dir)
            except WeightsUnavailable as exc:
                for m in ("lpips_src", "lpips_gt"):
                    self.unavailable[m] = str(exc)

    # ------------------------------------------------------------ reference (real target) statistics
    def _features(self, x: torch.Tensor) -> np.ndarray | None:
        if self.feature_extractor is None:
            return None
        self.extractor_calls += 1
        return self.feature_extractor(x)

    def reference(self, images: torch.Tensor, identity: dict) -> Reference:
        """Statistics of the real target set, from the disk cache when the same set was seen before.

        Args:
            images: (N, 1, H, W) in [-1, 1].
            identity: What identifies the set (dataset, config, split hash, split, domain).
        """
        fx = self.feature_extractor
        ident = dict(identity, extractor=getattr(fx, "name", None), weights=getattr(fx, "weights_sha", None),
                     clip=str(self.clip_dir) if self.clip_model is not None else None,
                     radiomics=getattr(self.radiomics, "name", None), v=2)
        key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = self.cache_dir / f"ref-{key}.npz" if self.cache_dir else None
        if path is not None and path.is_file():
            z = np.load(path)
            return Reference(key, int(z["n"]), z["spectrum"], z["quantiles"],
                             *(z[k] if k in z else None for k in ("features", "clip", "radiomics")))
        x01 = M.to_unit(images)
        ref = Reference(key, len(images), M.radial_power_spectrum(x01), M.intensity_quantiles(x01),
                        self._features(images), self.clip_model(images) if self.clip_model is not None else None,
                        self.radiomics(images) if self.radiomics is not None else None)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            extra = {k: v for k, v in (("features", ref.features), ("clip", ref.clip), ("radiomics", ref.radiomics))
                     if v is not None}
            np.savez(tmp, n=ref.n, spectrum=ref.spectrum, quantiles=ref.quantiles, **extra)
            tmp.replace(path)
        return ref

    # ------------------------------------------------------------ scoring
    def _per_image(self, out: dict, name: str, values: np.ndarray, plan: np.ndarray | None) -> None:
        out[name] = float(np.mean(values))
        if plan is not None:
            self._replicates(out, name, (plan @ values) / plan.sum(axis=1))
        else:
            out[f"{name}_lo"], out[f"{name}_hi"] = M.bootstrap_ci(values, 1000)

    @staticmethod
    def _replicates(out: dict, name: str, values) -> None:
        values = [float(v) for v in values]
        out.setdefault("boot", {})[name] = [round(v, 7) for v in values]
        out[f"{name}_lo"], out[f"{name}_hi"] = M.percentile_interval(values)

    @staticmethod
    def _resampled(plan: np.ndarray):
        """Row indices of each replicate (images repeated by their multiplicity)."""
        return [np.repeat(np.arange(plan.shape[1]), row) for row in plan]

    @torch.no_grad()
    def score(self, x_hat: torch.Tensor, x_src: torch.Tensor, x_gt: torch.Tensor | None, reference: Reference,
              gt_reason: str | None = None, subjects: list[str] | None = None) -> dict:
        """All metrics for one (method, knob value, source, target) evaluation.

        Args:
            x_hat: Translated images (N, 1, H, W) in [-1, 1].
            x_src: Their sources, same shape.
            x_gt: Aligned real counterparts, or None (then `gt_reason` says why).
            reference: Real target-set statistics from `reference` (other subjects than x_hat's).
            subjects: Subject id of each image: enables the subject-level bootstrap (`boot`).

        Returns:
            Flat dict: metric values, `<metric>_lo/_hi`, `boot`, n_images, n_real, score_sec, unavailable.
        """
        t0 = time.perf_counter()
        if not torch.isfinite(x_hat).all():
            raise ValueError("translated images contain NaN/Inf; the method produced invalid output")
        plan = M.subject_bootstrap(subjects, self.n_boot) if subjects is not None else None
        rows = self._resampled(plan) if plan is not None else []
        out: dict = {"n_images": len(x_hat), "n_real": reference.n,
                     "n_subjects": len(set(subjects)) if subjects is not None else None}
        unavailable = dict(self.unavailable)
        u_hat, u_src = M.to_unit(x_hat), M.to_unit(x_src)
        self._per_image(out, "ssim_src", M.ssim(u_hat, u_src).numpy(), plan)
        self._per_image(out, "psnr_src", M.psnr(u_hat, u_src).numpy(), plan)
        if self.lpips_model is not None:
            self._per_image(out, "lpips_src", self.lpips_model(x_hat, x_src), plan)
        if x_gt is not None:
            u_gt = M.to_unit(x_gt)
            self._per_image(out, "ssim_gt", M.ssim(u_hat, u_gt).numpy(), plan)
            self._per_image(out, "psnr_gt", M.psnr(u_hat, u_gt).numpy(), plan)
            if self.lpips_model is not None:
                self._per_image(out, "lpips_gt", self.lpips_model(x_hat, x_gt), plan)
        else:
            for m in ("ssim_gt", "psnr_gt", "lpips_gt"):
                unavailable.setdefault(m, gt_reason or "no aligned ground truth")
        power = M.radial_power(u_hat)
        out["nps_dist"] = M.nps_distance(M.log_spectrum(power.mean(axis=0)), reference.spectrum)
        out["hist_w1"] = M.hist_w1(M.intensity_quantiles(u_hat), reference.quantiles)
        if plan is not None:
            weights = plan / plan.sum(axis=1, keepdims=True)
            self._replicates(out, "nps_dist", [M.nps_distance(M.log_spectrum(w @ power), reference.spectrum)
                                               for w in weights])
            counts = M.intensity_histograms(u_hat)
            self._replicates(out, "hist_w1", [M.hist_w1(M.quantiles_from_histogram(w @ counts), reference.quantiles)
                                              for w in weights])
        if reference.features is not None and self.feature_extractor is not None:
            p = self.feature_extractor.prefix
            f_fake = self._features(x_hat)
            out[f"{p}fid"] = M.fid_from_features(reference.features, f_fake)
            out[f"{p}kid"], out[f"{p}kid_std"], out["kid_subset_size"] = M.kid_from_features(
                reference.features, f_fake, self.kid_subset_size)
            out.update({f"{p}{k}": v for k, v in M.prdc(reference.features, f_fake).items()})
            if rows:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the rank-deficiency warning, once per replicate
                    self._replicates(out, f"{p}fid", [M.fid_from_features(reference.features, f_fake[i])
                                                      for i in rows])
                self._replicates(out, f"{p}kid", [M.mmd2_unbiased(reference.features, f_fake[i]) for i in rows])
        if reference.clip is not None and self.clip_model is not None:
            out["cmmd"] = M.cmmd(reference.clip, self.clip_model(x_hat))
        if reference.radiomics is not None and self.radiomics is not None:
            f_rad = self.radiomics(x_hat)
            out["frd"] = frd_from_features(reference.radiomics, f_rad)
            if rows:
                self._replicates(out, "frd", [frd_from_features(reference.radiomics, f_rad[i]) for i in rows])
        out["unavailable"] = unavailable
        out["score_sec"] = time.perf_counter() - t0
        return out
