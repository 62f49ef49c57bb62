"""Do the realism metrics measure realism? Degrade real images in controlled steps and check each metric grows.

Real target-domain images of the validation split (other subjects than the `ref` split the metric compares with; the
test split is never read, since the result decides which metric ranks realism) are degraded three ways at three
strengths each - quantum-like noise (Poisson-like, variance proportional to the signal), Gaussian blur, and a
contrast change (gamma) - and every realism metric the scorer can compute is evaluated against the `ref` split at
strengths 0 (undegraded), 1, 2, 3. A metric passes a degradation when its value rises strictly with the strength; it
*passes* when it does so for every degradation. The tables rank realism only by metrics that passed on the records'
dataset and preset (`results/tables/metric_validity.json`, written by `python -m benchmark validity`).

FRD v1 resamples every image to 2 mm pixels (frd-score's `resampledPixelSpacing: [2, 2, 0]`), which halves a
64-px `tiny` image; `frd_native` (the same features without the resampling, reported here only) shows what that
costs in sensitivity.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmark.scoring.metrics import (  # imported on first use: `collect` reads the validity results without torch
    F,
    torch,
)

STRENGTHS = (1, 2, 3)
NOISE_GAIN = {1: 0.0005, 2: 0.002, 3: 0.008}  # added variance per unit signal (x in [0, 1])
BLUR_SIGMA = {1: 0.6, 2: 1.2, 3: 2.4}  # pixels
GAMMA = {1: 1.2, 2: 1.5, 3: 2.0}


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()
    x = F.pad(x, (radius,) * 4, mode="reflect")
    return F.conv2d(F.conv2d(x, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))


def degrade(x: torch.Tensor, kind: str, strength: int, seed: int = 0) -> torch.Tensor:
    """Suite images (N, 1, H, W) in [-1, 1] degraded by `kind` ("noise", "blur", "gamma") at `strength` (0-3)."""
    if strength == 0:
        return x.clone()
    u = ((x.double() + 1) / 2).clamp(0, 1)
    if kind == "noise":
        g = torch.Generator().manual_seed(seed)
        u = u + torch.randn(u.shape, generator=g, dtype=u.dtype) * (u * NOISE_GAIN[strength]).sqrt()
    elif kind == "blur":
        u = _gaussian_blur(u, BLUR_SIGMA[strength])
    elif kind == "gamma":
        u = u ** GAMMA[strength]
    else:
        raise ValueError(f"unknown degradation {kind!r}; use noise, blur or gamma")
    return (u.clamp(0, 1) * 2 - 1).float()


DEGRADATIONS = ("noise", "blur", "gamma")
#: The split whose real images are degraded (never `test`: the result chooses the ranking metric).
SPLIT = "val"


def rising(values) -> bool:
    """Strictly increasing."""
    from itertools import pairwise

    return all(b > a for a, b in pairwise(values))


def native_radiomics():
    """FRD's radiomic features without the 2 mm resampling (for the sensitivity comparison only)."""
    from benchmark.scoring.radiomics import RadiomicsFeatures

    feats = RadiomicsFeatures()
    feats.extractor.settings["resampledPixelSpacing"] = None
    feats.name += " native-resolution"
    return feats


def metric_validity(dataset, scorer, domain: str, native_frd: bool = False) -> dict:
    """{metric: {degradation: [value at strength 0..3]}, "passed": {metric: bool}, "n_images", "n_reference"}."""
    import benchmark.scoring.declarations as D
    from benchmark.scoring.radiomics import frd_from_features

    x_real = dataset.images(domain, SPLIT)[0]
    ref = scorer.reference(dataset.images(domain, "ref")[0], dict(dataset=dataset.name, config=dataset.config,
                                                                 split=dataset.split_hash, part="ref", domain=domain))
    native = native_radiomics() if native_frd and scorer.radiomics is not None else None
    native_ref = native(dataset.images(domain, "ref")[0]) if native is not None else None
    values: dict[str, dict[str, list[float]]] = {}
    for kind in DEGRADATIONS:
        for strength in (0, *STRENGTHS):
            x = degrade(x_real, kind, strength)
            out = scorer.score(x, x, None, ref)
            for m, spec in D.METRICS.items():
                if spec.axis == "realism" and isinstance(out.get(m), float):
                    values.setdefault(m, {}).setdefault(kind, []).append(out[m])
            if native is not None:
                values.setdefault("frd_native", {}).setdefault(kind, []).append(
                    frd_from_features(native_ref, native(x)))
    passed = {m: all(rising(v) for v in per.values()) for m, per in values.items()}
    separation: dict[str, dict[str, float]] = {}
    for other in dataset.domains:
        if other == domain:
            continue
        x_other = dataset.images(other, SPLIT)[0]
        out = scorer.score(x_other, x_other, None, ref)
        for m in values:
            if isinstance(out.get(m), float):
                separation.setdefault(m, {})[other] = out[m]
    separates = {m: all(v > values[m][DEGRADATIONS[0]][0] for v in per.values()) for m, per in separation.items()}
    return dict(values=values, passed=passed, n_images=len(x_real), n_reference=ref.n, domain=domain, split=SPLIT,
                separation=separation, separates=separates)


def write_report(result: dict, key: str, out_dir: Path) -> list[Path]:
    """Merge `result` into `out_dir/metric_validity.json` under `key` ("dataset/preset"), rewrite the Markdown."""
    from benchmark.protocol.records import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "metric_validity.json"
    all_results = json.loads(path.read_text()) if path.is_file() else {}
    all_results[key] = result
    atomic_write(path, json.dumps(all_results, indent=1))
    lines = ["| data | metric | " + " | ".join(f"{k} (0 / 1 / 2 / 3)" for k in DEGRADATIONS) + " | passes |",
             "|---|---|" + "---|" * len(DEGRADATIONS) + "---|"]
    for k, res in sorted(all_results.items()):
        for m, per in res["values"].items():
            cells = [" / ".join(f"{v:.3g}" for v in per[d]) for d in DEGRADATIONS]
            lines.append(f"| {k} ({res['n_images']} {res.get('split', 'test')} vs {res['n_reference']} ref) | {m} | "
                         + " | ".join(cells)
                         + f" | {'yes' if res['passed'][m] else 'no'} |")
    sep = ["| data | metric | its own domain (undegraded) | every other domain | separates |", "|---|---|---|---|---|"]
    for k, res in sorted(all_results.items()):
        for m, per in (res.get("separation") or {}).items():
            others = ", ".join(f"{d} {v:.3g}" for d, v in per.items())
            sep.append(f"| {k} ({res.get('domain', '')}) | {m} | {res['values'][m][DEGRADATIONS[0]][0]:.3g} | {others} "
                       f"| {'yes' if res['separates'][m] else 'no'} |")
    md = out_dir / "metric_validity.md"
    atomic_write(md, "\n".join(lines) + "\n\nA metric passes when it rises strictly with the strength of every "
                 "degradation (real images of the validation split vs the real ref split; "
                 "`benchmark/scoring/validity.py`). A result computed on another split (test images, before this rule) "
                 "is listed but does not choose the ranking metric.\n"
                 + ("\n## Separation\n\nThe same metrics between the validation images of every other domain and the "
                    "ref split of the checked domain: a metric separates when each other domain (the synthetic ones "
                    "above all) lies farther from the real domain than the real domain's own validation images do.\n\n"
                    + "\n".join(sep) + "\n" if len(sep) > 2 else ""))
    return [path, md]


def valid_realism_metrics(tables_dir: Path, dataset: str, preset: str) -> list[str] | None:
    """Realism metrics that passed on `dataset/preset` (None when the check was not run there on the validation
    split: a result that read the test split does not choose)."""
    path = Path(tables_dir) / "metric_validity.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text()).get(f"{dataset}/{preset}")
    if res is None or res.get("split") != SPLIT:
        return None
    return [m for m, ok in res["passed"].items() if ok]
