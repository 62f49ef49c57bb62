"""Choices on the validation split: learning curves, the checkpoint, and the knob value a method is headlined at.

Nothing here reads the test split. During training, `LearningCurve` saves the weights at `N_CURVE_POINTS` evenly
spaced iterations and scores each on the whole validation split (every source of every task, every subject; each
scene translated once per checkpoint) at the method's default knob value, the first of its table grid; those
records (`split = "val"`, `step` = iteration) are the learning curves. The checkpoint with the best
`selection_metric` becomes `checkpoints/selected.ckpt`, the weights every test record uses. With those weights every
table knob value is scored on the whole validation split; the best one is the method's headline value for that task
(`val_choice` in the test records), and a best value at the edge of the grid extends it (`beyond_edge`, within the
method's `knob_bounds`) until the choice is interior.

Two criteria, because the two choices answer different questions:
* the checkpoint - how well has the model learned the target domain? - by validation *realism*, as generative
  models are usually selected (FID where its weights exist, else the spectrum distance, which passes the
  metric-validity check and costs nothing; FRD is not computed on validation for its cost), for every learned
  method alike (protocol 3). At a fixed knob a better-trained model also restyles more, so a fidelity criterion
  would prefer under-trained models (measured: MedShift's validation `ssim_gt` peaked after 225 of 599 iterations
  while its realism kept improving). Protocol 2 selected the paired upper bounds by fidelity instead; that made part
  of the "pairs buy fidelity, not realism" reading (pix2pix's fidelity-selected checkpoint had validation spectrum
  distance 0.417, its realism-selected one 0.019), so every method now has the same rule and the tables'
  `selection.md` shows the fidelity rule beside it from the learning curves;
* the headline knob value - where on its trade-off should a method be reported? - by validation *fidelity*
  `ssim_gt` (SSIM to the aligned real image), which rewards structure and realism together where a dataset has
  exact pairs; without pairs, by the mean of the realism and structure ranks among the knob values (the
  MedShift paper's average rank).

Sampling settings (a method's `sampling_grid`: MedShift's guidance, solver and step size, the DDPMs' sampler and
steps) are chosen like the knob, before it: with the selected weights every candidate is scored at every table knob
value on the whole validation split (records with `step` = `sampling_label`), and the candidate whose best (knob
value) pair wins under the knob rule is the one the knob choice and the test records use (`sampling` in the
records), per task. A method without a grid keeps its configured (paper default) values, at no cost.
"""
from __future__ import annotations

import pandas as pd

from benchmark.errors import ConfigError

N_CURVE_POINTS = 8
#: The `step` of the validation records that score a sampling candidate (`sampling_label`).
SAMPLING_STEP = "sampling"
#: Presets whose runs keep the configured sampling settings: `micro` is for tests and drills, not results, and
#: choosing among MedShift's 8 candidates would make each of its fits there about 4 times slower.
NO_SAMPLING_CHOICE = ("micro",)
#: At most this many values beyond a knob grid's edge are scored on validation (`beyond_edge`).
MAX_EXTENSIONS = 4


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


def beyond_edge(grid: list, best, bounds: tuple | None):
    """The next knob value to score when validation chose `best` at an edge of `grid` (its lowest or highest value):
    one grid step further (the spacing of the two edge values), if it lies within `bounds` (closed); else None. None
    for an interior choice, a grid of one value, or a method without bounds (`TranslationMethod.knob_bounds`)."""
    values = sorted(v for v in grid if v is not None)
    if bounds is None or len(values) < 2 or best not in (values[0], values[-1]):
        return None
    if best == values[0]:
        nxt = round(values[0] - (values[1] - values[0]), 6)
    else:
        nxt = round(values[-1] + (values[-1] - values[-2]), 6)
    lo, hi = bounds
    return nxt if lo - 1e-9 <= nxt <= hi + 1e-9 and nxt not in values else None


def sampling_candidates(config: dict, grid: dict, pinned=()) -> list[dict]:
    """The sampling settings validation chooses among (`TranslationMethod.sampling_grid`): the config's own values
    first, then every other combination of the grid's values. Empty without a grid.

    Args:
        pinned: settings the run sets itself (`--set solver=heun`: an ablation of that setting); they keep the
            config's value and validation chooses among the others only.
    """
    import itertools

    if not grid:
        return []
    grid = {k: (config[k],) if k in pinned else v for k, v in grid.items()}
    names = list(grid)
    own = {k: config[k] for k in names}
    out = [own]
    for combo in itertools.product(*(grid[k] for k in names)):
        candidate = dict(zip(names, combo, strict=True))
        if candidate != own:
            out.append(candidate)
    return out


def sampling_label(candidate: dict) -> str:
    """The `step` of a sampling candidate's validation records, e.g. "sampling guidance=1.0,solver=euler"."""
    return f"{SAMPLING_STEP} " + ",".join(f"{k}={v}" for k, v in candidate.items())


def best_sampling(records: list[dict]) -> str:
    """The sampling candidate (its label, the records' `step`) that is best on validation: the knob rule
    (`best_knob`) over every (candidate, knob value) pair of `records` at once (the runner scores the candidates at
    the default knob value only); ties go to the earlier candidate (the config's own values come first)."""
    tagged = [dict(r, knob_value=(r["step"], r["knob_value"])) for r in records]
    return best_knob(tagged)[0]


def checkpoint_metric(records: list[dict], criterion: str = "realism") -> str:
    """The validation metric that selects the checkpoint: for "realism" FID where every record has it, else the
    spectrum distance; for "fidelity" `ssim_gt` (SSIM to the aligned real image)."""
    if criterion == "fidelity":
        if not records or any(r.get("ssim_gt") is None for r in records):
            raise ConfigError("selection by fidelity needs ssim_gt on every validation record (aligned pairs)")
        return "ssim_gt"
    if criterion != "realism":
        raise ValueError(f"unknown checkpoint criterion {criterion!r}; valid: realism, fidelity")
    return "fid" if records and all(r.get("fid") is not None for r in records) else "nps_dist"


def _means(records: list[dict], key: str, metric: str) -> dict:
    scores: dict = {}
    for r in records:
        scores.setdefault(r[key], []).append(r[metric])
    return {k: sum(v) / len(v) for k, v in scores.items()}


def best_checkpoint(records: list[dict], criterion: str = "realism") -> int:
    """The learning-curve step with the best validation `criterion` (`checkpoint_metric`; ties: the later step)."""
    from benchmark.scoring.declarations import METRICS

    metric = checkpoint_metric(records, criterion)
    sign = 1 if METRICS[metric].higher_is_better else -1
    means = _means(records, "step", metric)
    top = max(sign * v for v in means.values())
    return max(k for k, v in means.items() if sign * v == top)


def best_knob(records: list[dict]):
    """The knob value with the best validation fidelity (`ssim_gt`), or without pairs the best mean of its realism
    and structure ranks among the knob values (ties: the first in the grid order of `records`)."""
    if records and all(r.get("ssim_gt") is not None for r in records):
        means = _means(records, "knob_value", "ssim_gt")
        top = max(means.values())
        return next(k for k, v in means.items() if v == top)
    realism = _means(records, "knob_value", checkpoint_metric(records))
    structure = _means(records, "knob_value", "ssim_src")
    keys = list(realism)

    def rank(values: dict, higher_is_better: bool) -> dict:
        order = sorted(keys, key=lambda k: -values[k] if higher_is_better else values[k])
        return {k: order.index(k) for k in keys}

    from benchmark.scoring.declarations import METRICS

    r1 = rank(realism, METRICS[checkpoint_metric(records)].higher_is_better)
    r2 = rank(structure, True)
    return min(keys, key=lambda k: (r1[k] + r2[k], keys.index(k)))
