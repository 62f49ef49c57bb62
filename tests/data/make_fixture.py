"""Regenerate the golden-table fixture: `python tests/data/make_fixture.py` (then re-run the golden test
with UPDATE_GOLDEN=1 to rewrite tests/data/expected_summary.csv, and review the diff).

The records are hand-made, small and fixed: three methods, two seeds, two source domains.
"""
import json
from pathlib import Path

from benchmark.protocol.records import RECORD_KEYS, record_sha

OUT = Path(__file__).parent / "records" / "fixture.jsonl"
VALUES = {  # (method, knob, knob_value): per seed, per source: (ssim_src, ssim_gt, nps_dist, hist_w1, fid)
    ("identity", None, None): [[(1.0, 0.62, 0.60, 0.12, 260.0), (1.0, 0.64, 0.58, 0.12, 264.0)]] * 2,
    ("medshift", "tau", 0.6): [[(0.55, 0.72, 0.14, 0.09, 200.0), (0.57, 0.74, 0.12, 0.07, 204.0)],
                               [(0.53, 0.70, 0.16, 0.09, 198.0), (0.55, 0.72, 0.14, 0.07, 202.0)]],
    ("medshift", "tau", 0.3): [[(0.45, 0.78, 0.22, 0.03, 170.0), (0.47, 0.78, 0.22, 0.03, 174.0)],
                               [(0.47, 0.76, 0.20, 0.03, 172.0), (0.49, 0.76, 0.20, 0.03, 176.0)]],
    ("cyclegan", None, None): [[(0.60, 0.70, 0.30, 0.05, 150.0), (0.62, 0.70, 0.30, 0.05, 150.0)],
                               [(0.58, 0.68, 0.34, 0.05, 154.0), (0.60, 0.68, 0.34, 0.05, 154.0)]],
}


def main() -> None:
    lines = []
    for (method, knob, value), seeds in VALUES.items():
        for seed, per_source in enumerate(seeds):
            for source, (ssim_src, ssim_gt, nps, w1, fid) in zip(("syn_low", "syn_high"), per_source, strict=True):
                rec = {k: None for k in RECORD_KEYS}
                rec.update(method=method, dataset="skull-sim", preset="tiny", task="sim2real", seed=seed, source=source,
                           target="real_normal", knob=knob, knob_value=value, n_images=36, ssim_src=ssim_src,
                           ssim_gt=ssim_gt, nps_dist=nps, hist_w1=w1, fid=fid, nfe=0 if knob is None else 16,
                           sec_per_image=0.01, train_sec=60.0, n_params=1000, peak_rss_mb=500.0, unavailable={})
                rec["_sha"] = record_sha(rec)
                lines.append(json.dumps(rec))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
