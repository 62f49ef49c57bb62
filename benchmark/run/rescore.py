"""Re-scoring finished runs when the scorer gains a metric (new weights, FRD's packages, a new declaration).

Finished runs are translated again from their *final* weights (`checkpoints/final.ckpt`, written before the
first evaluation) and only the metrics their records lack are added; nothing is trained and recorded values are
kept. Each such record carries `rescored`: git sha, the metrics added and the largest change of a metric
recomputed alongside (0 for deterministic methods; CPU convolutions are not bit-reproducible across thread counts).
"""
from __future__ import annotations

from benchmark.protocol.records import seal
from benchmark.scoring.declarations import METRICS


def stale_metrics(record: dict, unavailable: dict) -> list[str]:
    """Metrics a scorer (its `unavailable`) can compute that `record` lacks; fidelity only where gt existed."""
    has_gt = record.get("ssim_gt") is not None
    return [m for m, s in METRICS.items()
            if record.get(m) is None and m not in unavailable and (has_gt or s.axis != "fidelity")]


def merge_rescored(old: dict, new: dict, added: list[str], sha: str) -> dict:
    """`old` with the `added` metrics (and their intervals) from `new`; the other values stay as recorded."""
    out = dict(old)
    for m in added:
        for k in (m, f"{m}_lo", f"{m}_hi"):
            if k in new:
                out[k] = new[k]
    new_boot = new.get("boot") or {}
    if any(m in new_boot for m in added):
        out["boot"] = dict(old.get("boot") or {}, **{m: new_boot[m] for m in added if m in new_boot})
    unavailable = {k: v for k, v in (old.get("unavailable") or {}).items() if k not in added}
    unavailable.update({k: v for k, v in (new.get("unavailable") or {}).items() if k in added})
    out["unavailable"] = unavailable
    both = [m for m in METRICS if m not in added and isinstance(old.get(m), float) and isinstance(new.get(m), float)]
    diff = max((abs(old[m] - new[m]) for m in both), default=0.0)
    out["rescored"] = dict(git_sha=sha, metrics=added, max_abs_diff=diff)
    return seal(out)
