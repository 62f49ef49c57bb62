"""The ceiling on fidelity of a dataset whose real images hold anatomy that its synthetic images lack (skull-sim v3).

For every test scene (the scenes the fidelity metrics are computed on) and real domain, the dataset's real image is
compared with another realisation of the subject's fine anatomy under the same noise (`datasets.ceiling`), with the
suite's own SSIM and PSNR: no translator, however good, can expect more than this on that split, since nothing in
its input says which realisation the real image holds. Intervals are over test subjects (the subject bootstrap of
`benchmark.scoring.metrics.subject_bootstrap`). Beside it, the detail's share of the real image's variance in the
flat soft-tissue region and in bone. `python -m benchmark ceiling` writes `results/tables/ceiling.{json,md}`; the
tables print the ceiling under every table of the same dataset and preset.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Where the ceiling table lives, beside the other tables.
JSON, MD = "ceiling.json", "ceiling.md"


def fidelity_ceiling(dataset, workers: int = 1, split: str = "test") -> dict:
    """{domain: {ssim_gt, psnr_gt: [mean, lo, hi], share_flat, share_bone: mean over images}, n_images, split}."""
    import torch

    from benchmark.scoring.metrics import percentile_interval, psnr, ssim, subject_bootstrap
    from datasets.ceiling import detail_images, variance_share
    from datasets.physics import DOMAIN_STYLES

    cfg = dataset.config
    if cfg.get("generator_version", "2") == "2":
        raise ValueError(f"{dataset.name}: its real images hold no anatomy beyond the synthetic ones' (generator "
                         "version 2), so translation has no ceiling below identity; use skull-sim (v3)")
    rows = dataset.manifest[dataset.manifest["split"] == split]
    subjects = sorted({int(s.lstrip("s")) for s in rows["subject"]})
    domains = tuple(d for d in dataset.domains if DOMAIN_STYLES[d].kind == "real")
    scenes = detail_images(int(cfg["seed"]), cfg["preset"], subjects, domains, workers)
    n_views = len(scenes) // len(subjects)
    image_subjects = [f"s{s:03d}" for s in subjects for _ in range(n_views)]
    plan = subject_bootstrap(image_subjects)
    out: dict = {"split": split, "n_images": len(scenes), "n_subjects": len(subjects)}
    for d in domains:
        a = torch.from_numpy(np.stack([s[d][0] for s in scenes]))[:, None]
        b = torch.from_numpy(np.stack([s[d][1] for s in scenes]))[:, None]
        entry = {}
        for name, fn in (("ssim_gt", ssim), ("psnr_gt", psnr)):
            v = fn(a, b).numpy()
            reps = (plan * v).sum(axis=1) / plan.sum(axis=1)
            entry[name] = [float(v.mean()), *percentile_interval(reps)]
        for region, label in (("share_flat", 1), ("share_bone", 2)):
            shares = [variance_share(s[d][0], s[d][2], s["mask"] == label) for s in scenes]
            entry[region] = float(np.nanmean(shares))
        out[d] = entry
    return out


def write_ceiling(result: dict, key: str, out_dir: Path) -> list[Path]:
    """Merge `result` into `out_dir/ceiling.json` under `key` ("dataset/preset"); rewrite `ceiling.md`."""
    from benchmark.protocol.records import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON
    everything = json.loads(path.read_text()) if path.is_file() else {}
    everything[key] = result
    atomic_write(path, json.dumps(everything, indent=1))
    lines = ["| data | real domain | SSIM (gt) ceiling | PSNR (gt) ceiling, dB | detail's share of variance: "
             "soft tissue | bone |", "|---|---|---|---|---|---|"]
    for k, res in sorted(everything.items()):
        for d, e in res.items():
            if not isinstance(e, dict):
                continue
            s, p = e["ssim_gt"], e["psnr_gt"]
            lines.append(f"| {k} ({res['n_images']} {res['split']} images, {res['n_subjects']} subjects) | {d} | "
                         f"{s[0]:.4f} [{s[1]:.4f}, {s[2]:.4f}] | {p[0]:.1f} [{p[1]:.1f}, {p[2]:.1f}] | "
                         f"{100 * e['share_flat']:.3g} % | {100 * e['share_bone']:.3g} % |")
    md = out_dir / MD
    atomic_write(md, "\n".join(lines) + "\n\nThe ceiling compares each real test image with another realisation of "
                 "its subject's fine anatomy under the same noise (`benchmark/scoring/ceiling.py`): the best SSIM (gt) "
                 "and PSNR (gt) a translator can expect, since a synthetic image says nothing of that anatomy. "
                 "Intervals over test subjects. The share is var(with detail - without) / var(with detail) in the "
                 "soft-tissue and bone regions of the scene's label mask.\n")
    return [path, md]


def ceiling_of(tables_dir: Path, dataset: str, preset: str) -> dict | None:
    """The ceiling recorded for `dataset/preset`, or None."""
    path = Path(tables_dir) / JSON
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(f"{dataset}/{preset}")
