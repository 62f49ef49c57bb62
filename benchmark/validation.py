"""Choices on the validation split: learning curves, the checkpoint, and the knob value a method is headlined at.

Nothing here reads the test split. During training, `LearningCurve` saves the weights at `N_CURVE_POINTS` evenly
spaced iterations and scores them on a fixed subset of the validation scenes (`curve_rows`) at the method's
cheapest table knob value; those records (`split = "val"`, `step` = iteration) are the learning curves. The
checkpoint with the best `selection_metric` becomes `checkpoints/selected.ckpt`, the weights every test record
uses. With those weights every table knob value is scored on the whole validation set; the best one is the
method's headline value for that task (`val_choice` in the test records).

Selection metric: `ssim_gt` (SSIM to the aligned real image) where the dataset has pairs - on such data it rewards
the two sides of the trade-off together, where a realism metric alone would pick whatever re-draws the image -
otherwise the first weight-free realism metric (`nps_dist`).
"""
from __future__ import annotations

import math

import pandas as pd

N_CURVE_POINTS = 8
CURVE_IMAGES = 24  # validation images scored at each learning-curve point (fixed subset, every subject)


def curve_steps(iterations: int, n_points: int = N_CURVE_POINTS) -> list[int]:
    """Iterations at which the learning curve is sampled: evenly spaced, the last one = `iterations`."""
    return sorted({max(1, round(k * iterations / n_points)) for k in range(1, n_points + 1)})


def task_rows(dataset, source: str, sources: tuple[str, ...], split: str) -> pd.DataFrame:
    """Scenes of `split` translated from `source` in a task with `sources`.

    With several source domains (sim2real: syn_low, syn_high) each subject is translated from one of them,
    alternating in the order of the subject ids, so every scene of the split is translated once per task and
    evaluation costs the same whatever the number of sources.
    """
    rows = dataset.rows(source, split)
    if len(sources) > 1:
        subjects = sorted(set(dataset.rows(sources[0], split)["subject"]))
        mine = {s for i, s in enumerate(subjects) if sources[i % len(sources)] == source}
        rows = rows[rows["subject"].isin(mine)].reset_index(drop=True)
    return rows


def curve_rows(rows: pd.DataFrame, n_images: int = CURVE_IMAGES) -> pd.DataFrame:
    """A fixed subset of `rows` with every subject: the first views (by id) of each, about `n_images` in all."""
    per_subject = max(1, math.ceil(n_images / max(rows["subject"].nunique(), 1)))
    return rows.groupby("subject", sort=True).head(per_subject).reset_index(drop=True)


def selection_metric(records: list[dict]) -> str:
    return "ssim_gt" if records and all(r.get("ssim_gt") is not None for r in records) else "nps_dist"


def best(records: list[dict], key: str) -> object:
    """The value of `key` whose records have the best mean selection metric (ties: the later / first listed)."""
    from .metrics import METRICS

    metric = selection_metric(records)
    sign = 1 if METRICS[metric].higher_is_better else -1
    scores: dict = {}
    for r in records:
        scores.setdefault(r[key], []).append(r[metric])
    means = {k: sign * sum(v) / len(v) for k, v in scores.items()}
    top = max(means.values())
    return [k for k, v in means.items() if v == top][-1 if key == "step" else 0]
