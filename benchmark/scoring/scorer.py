"""The one scorer every method goes through: features extracted once, real-set statistics cached.

`Scorer.score(x_hat, x_src, x_gt, reference, subjects=...)` loops over the declarations of `metrics.METRICS`
and returns one flat dict of values (plus `n_images`, `unavailable`: {metric: reason}, and with the test images'
subject ids a subject-level cluster bootstrap: `boot` = {metric: replicate values}, the same replicates for
every method scored on the same test set, and their 95 % percentile interval `<metric>_lo/_hi`). Set-level
metrics are recomputed on each replicate's images (spectra and histograms re-weighted, features re-sampled).
A metric whose weights are missing or refused is reported unavailable with the reason and the fix, never computed with a
stand-in network under its name. Feature extractors other than the reference Inception (e.g. the
random network used by the plumbing tests) write their results under `<prefix>fid` etc., never `fid`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import benchmark.scoring.declarations as D
import benchmark.scoring.metrics as M
from benchmark.errors import RunError, WeightsUnavailable
from benchmark.scoring.radiomics import RadiomicsFeatures
from benchmark.scoring.weights import locate, sha256_of


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
    """Summaries of a real target set for every set metric the scorer can compute, computed once and cached.

    Attributes:
        key: Cache key (the set's identity, the extractors and their weights).
        n: Number of real images.
        summaries: {metric: what its `compute` needs of the reference features (`MetricSpec.summarize`)}.
    """

    key: str
    n: int
    summaries: dict


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
    n_boot: int = 200
    unavailable: dict = field(default_factory=dict)
    extractor_calls: int = 0

    def __post_init__(self):
        """Load every model a metric `needs`; a need that cannot be met makes its metrics unavailable (reason kept)."""
        missing: dict[str, str] = {}
        if self.feature_extractor is not None and self.feature_extractor.prefix:
            missing["inception"] = f"scored with {self.feature_extractor.name} instead of the reference Inception"
        loaders = {"feature_extractor": lambda: InceptionFeatures(self.weights_dir),
                   "clip_model": lambda: CLIPEmbeddings(self.clip_dir),
                   "radiomics": RadiomicsFeatures, "lpips_model": lambda: LPIPSAlex(self.weights_dir)}
        needs = {"feature_extractor": "inception", "clip_model": "clip", "radiomics": "radiomics",
                 "lpips_model": "alexnet"}
        if not self.frd:
            self.radiomics = None
            missing["radiomics"] = "FRD switched off for this invocation (--no-frd)"
        for attr, load in loaders.items():
            if getattr(self, attr) is None and needs[attr] not in missing:
                try:
                    setattr(self, attr, load())
                except WeightsUnavailable as exc:
                    missing[needs[attr]] = str(exc)
        for name, spec in D.METRICS.items():
            if spec.needs in missing:
                self.unavailable[name] = missing[spec.needs]

    @property
    def models(self) -> dict:
        """What the metric declarations' `needs` refer to."""
        return {"inception": self.feature_extractor, "clip": self.clip_model, "radiomics": self.radiomics,
                "alexnet": self.lpips_model}

    def _name(self, spec) -> str:
        """The record column of a metric: a stand-in feature extractor's prefix keeps it from being reported as FID."""
        prefix = getattr(self.feature_extractor, "prefix", "") if spec.needs == "inception" else ""
        return f"{prefix}{spec.name}"

    def _computable(self, spec) -> bool:
        return self.models.get(spec.needs) is not None if spec.needs else True

    # ------------------------------------------------------------ reference (real target) statistics
    def _extract(self, name: str, x: torch.Tensor) -> np.ndarray:
        if name == "inception":
            self.extractor_calls += 1
        return D.EXTRACTORS[name](x, self.models)

    def reference(self, images: torch.Tensor, identity: dict) -> Reference:
        """Summaries of the real target set for every computable set metric, from the disk cache when seen before.

        Args:
            images: (N, 1, H, W) in [-1, 1].
            identity: What identifies the set (dataset, config, split hash, split, domain).
        """
        fx = self.feature_extractor
        ident = dict(identity, extractor=getattr(fx, "name", None), weights=getattr(fx, "weights_sha", None),
                     clip=str(self.clip_dir) if self.clip_model is not None else None,
                     radiomics=getattr(self.radiomics, "name", None), v=3)
        key = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:20]
        path = self.cache_dir / f"ref-{key}.npz" if self.cache_dir else None
        wanted = [s for s in D.METRICS.values() if not s.per_image and self._computable(s)]
        if path is not None and path.is_file():
            z = np.load(path)
            if all(s.name in z for s in wanted):
                return Reference(key, int(z["n"]), {s.name: z[s.name] for s in wanted})
        features: dict[str, np.ndarray] = {}
        summaries = {}
        for spec in wanted:
            if spec.extractor not in features:
                features[spec.extractor] = self._extract(spec.extractor, images)
            summaries[spec.name] = np.asarray(spec.summarize(features[spec.extractor]))
        ref = Reference(key, len(images), summaries)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
            np.savez(tmp, n=ref.n, **summaries)
            tmp.replace(path)
        return ref

    # ------------------------------------------------------------ scoring
    def _interval(self, out: dict, name: str, replicates) -> None:
        values = [float(v) for v in replicates]
        out.setdefault("boot", {})[name] = [round(v, 7) for v in values]
        out[f"{name}_lo"], out[f"{name}_hi"] = M.percentile_interval(values)

    @torch.no_grad()
    def score(self, x_hat: torch.Tensor, x_src: torch.Tensor, x_gt: torch.Tensor | None, reference: Reference,
              gt_reason: str | None = None, subjects: list[str] | None = None) -> dict:
        """Every computable metric of `METRICS` for one (method, knob value, source, target) evaluation.

        Args:
            x_hat: Translated images (N, 1, H, W) in [-1, 1].
            x_src: Their sources, same shape.
            x_gt: Aligned real counterparts, or None (then `gt_reason` says why).
            reference: Real target-set summaries from `reference` (other subjects than x_hat's).
            subjects: Subject id of each image: enables the subject-level bootstrap (`boot`).

        Returns:
            Flat dict: metric values, `<metric>_lo/_hi`, `boot`, n_images, n_subjects, n_real, score_sec,
            unavailable.
        """
        t0 = time.perf_counter()
        if not torch.isfinite(x_hat).all():
            raise RunError("translated images contain NaN/Inf; the method produced invalid output")
        plan = M.subject_bootstrap(subjects, self.n_boot) if subjects is not None else None
        out: dict = {"n_images": len(x_hat), "n_real": reference.n,
                     "n_subjects": len(set(subjects)) if subjects is not None else None}
        unavailable = dict(self.unavailable)
        others = {"src": x_src, "gt": x_gt}
        features: dict[str, np.ndarray] = {}
        for spec in D.METRICS.values():
            name = self._name(spec)
            if not self._computable(spec):
                continue
            if spec.per_image:
                if others[spec.compare] is None:
                    unavailable.setdefault(spec.name, gt_reason or "no aligned ground truth")
                    continue
                values = np.asarray(spec.compute(x_hat, others[spec.compare], self.models), np.float64)
                out[name] = float(values.mean())
                if plan is not None:
                    self._interval(out, name, (plan @ values) / plan.sum(axis=1))
                else:
                    out[f"{name}_lo"], out[f"{name}_hi"] = M.bootstrap_ci(values, 1000)
                continue
            if spec.name not in reference.summaries:
                continue
            if spec.extractor not in features:
                features[spec.extractor] = self._extract(spec.extractor, x_hat)
            summary = reference.summaries[spec.name]
            value = float(spec.compute(features[spec.extractor], summary))
            if not np.isfinite(value):  # e.g. the flat-region NPS of a set with no flat, unclipped region
                unavailable[spec.name] = f"{spec.label} is not defined on these images (its features are empty)"
                continue
            out[name] = value
            if plan is not None:
                self._interval(out, name, spec.compute(features[spec.extractor], summary, plan))
        out["unavailable"] = unavailable
        out["score_sec"] = time.perf_counter() - t0
        return out
