"""Throughput, measured side by side in one process: the scorer vs each method's `translate`.

`python -m benchmark perf [--methods ...] [--n-images N] [--size S]` prints images/s. Methods are
timed with their default configuration and untrained weights (speed does not depend on training).
"""
from __future__ import annotations

import time

import torch


def _time(fn, repeat: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(args) -> int:
    from benchmark.scorer import RandomFeatures, Scorer
    from datasets.skull_sim import DOMAINS
    from methods import get_method

    torch.manual_seed(0)
    n, size = args.n_images, args.size
    x_src = torch.rand(n, 1, size, size) * 2 - 1
    x_hat = (x_src + 0.1 * torch.randn_like(x_src)).clamp(-1, 1)
    print(f"images/s, {n} images of {size}x{size}, {torch.get_num_threads()} threads (best of repeats)", flush=True)
    scorer = Scorer(feature_extractor=RandomFeatures(), n_boot=1000)
    ref = scorer.reference(x_src, {"perf": n})
    sec = _time(lambda: scorer.score(x_hat, x_src, x_src, ref))
    print(f"{n / sec:10.1f}  scorer (SSIM+PSNR vs source and gt, NPS, W1, random-feature FID/KID/PRDC, bootstrap)",
          flush=True)
    for name in args.methods:
        method = get_method(name)(domains=DOMAINS, sources=DOMAINS[:2], target="real_normal", image_size=size).eval()
        if hasattr(method, "counts"):
            method.counts.fill_(1.0)  # histmatch: uniform histograms stand in for fitted ones
        knob = method.knob_grid[0]
        m = min(n, 16)
        sec = _time(lambda method=method, m=m, knob=knob: method.translate(x_src[:m], "syn_low", "real_normal", knob),
                    repeat=1)
        print(f"{m / sec:10.1f}  {name}.translate (default config, knob {knob}, nfe {method.nfe(knob)})", flush=True)
    return 0
