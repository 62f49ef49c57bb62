"""Downstream utility: does translated synthetic data train a segmentation model that works on real images?

Image metrics stand in for what sim-to-real translation is for (SyntheX, Gao et al. 2023, evaluates X-ray sim-to-real
this way; ContourDiff by downstream segmentation). skull-sim knows the anatomy of every pixel (`datasets.labels`:
six structures, multi-label), so the suite measures it directly. For a task (sources -> target) and a finished run:

1. The run's method translates the *training* images of the task's sources (sim2real: syn_low + syn_high, 192
   images on `tiny`) to the target at its validation-chosen knob value, with its selected weights, and the same for
   the sources' *validation* images.
2. One fixed segmentation network trains on the translated training images with the scenes' labels: pix2pix's
   U-Net (`methods.components.gan_nets.UnetGenerator`, no dropout, `SEGMENTER["ngf"]` filters, logits out), binary
   cross-entropy plus soft Dice per structure, Adam, `SEGMENTER["iterations"]` iterations at batch 16 from a
   seeded batch stream; the same architecture, budget and seed for every method. Its checkpoint is chosen on the
   translated validation images (mean Dice at `N_CHECKS` evenly spaced iterations; ties: the later one).
3. It segments the target domain's *test* images (real_normal on `sim2real`: 180 scenes of 30 subjects) against
   their labels: Dice per image and structure (a structure absent from both the labels and the prediction of an
   image is left out of that image's mean), `dice` = the mean over images of each image's mean over structures,
   `dice_<structure>` = the mean over the images where it is present in either; intervals by the subject-level
   cluster bootstrap the scorer uses (`metrics.subject_bootstrap`: the same replicates for every method), combined
   with the seeds in `collect` as every other metric.

Reference rows: the `identity` run (no translation: the segmenter learns from the source images as they are, the
lower bound), `histmatch`, and `oracle`: the segmenter trained on the target domain's own training images with
their labels (the upper bound; no translator). `collect` reports each method also as the fraction of the gap it
closes between the lower and the upper bound (`utility.md`). Seed k of a method's utility uses the method's seed-k
run and segmenter seed k.

Translations made outside the suite (`python -m benchmark score`) take part where their folder has `train/` and
`val/` translations: they are read instead of made (`external.ExternalTranslator`).

Records (one per method, setting, seed and task; `split = "utility"`) are written to
`results/utility/<dataset>-<preset>/<task>/<method>/seed<k>.json` (atomic; an existing record of the same translator
run and utility version is kept). Nothing here reads the target's test images before the segmenter's checkpoint is
chosen.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import RunError
from benchmark.protocol.config import budget_setting
from benchmark.protocol.records import PROTOCOL_VERSION, atomic_write
from benchmark.run.finished import find_run, is_external, load_translator  # noqa: F401  (utility's public names)

UTILITY_VERSION = 1
#: The segmenter and its training budget: the same for every method, task and seed.
SEGMENTER = dict(ngf=16, iterations=600, batch_size=16, lr=1e-3)
N_CHECKS = 8
ORACLE = "oracle"


# ------------------------------------------------------------------------------------------ Dice
def dice_scores(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """(N, S) Dice of boolean maps (N, S, H, W); NaN where a structure is absent from both (left out of means)."""
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).flatten(2).sum(-1).double()
    total = pred.flatten(2).sum(-1).double() + target.flatten(2).sum(-1).double()
    out = torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.full_like(total, float("nan")))
    return out.numpy()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - the soft Dice of sigmoid(logits) per image and structure, averaged (smoothed by `eps` pixels)."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return (1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)).mean()


def make_segmenter(image_size: int, n_structures: int, ngf: int = SEGMENTER["ngf"]) -> torch.nn.Module:
    from methods.components.gan_nets import UnetGenerator

    return UnetGenerator(1, n_structures, image_size, ngf, dropout=False, affine_norm=True, tanh=False)


@torch.no_grad()
def segment(net: torch.nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """(N, S, H, W) boolean predictions (logit > 0)."""
    net.eval()
    return torch.cat([net(x[i:i + batch_size]) > 0 for i in range(0, len(x), batch_size)])


def train_segmenter(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                    seed: int, settings: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Train the segmenter on (x_train, y_train); returns it at the checkpoint with the best validation mean Dice.

    Args:
        x_train, x_val: (N, 1, H, W) images in [-1, 1].
        y_train, y_val: (N, S, H, W) bool labels.
        seed: Seeds the initial weights and the batch stream (epochs of a seeded permutation, no partial batch).
        settings: `SEGMENTER` (ngf, iterations, batch_size, lr) unless given (tests use a smaller budget).

    Returns:
        (network, info): info has `curve` [(iteration, validation mean Dice)], `selected_step`, `val_dice`, `sec`.
    """
    settings = settings or SEGMENTER
    iterations, batch_size, lr, ngf = (settings[k] for k in ("iterations", "batch_size", "lr", "ngf"))
    if len(x_train) < batch_size:
        raise RunError(f"utility: {len(x_train)} training images, fewer than the segmenter's batch of {batch_size}")
    torch.manual_seed(seed)
    net = make_segmenter(x_train.shape[-1], y_train.shape[1], ngf)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    checks = {max(1, round(k * iterations / N_CHECKS)) for k in range(1, N_CHECKS + 1)}
    y_train = y_train.float()
    order, pos = torch.randperm(len(x_train), generator=gen), 0
    curve, best, best_state = [], -1.0, None
    t0 = time.perf_counter()
    for it in range(1, iterations + 1):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(x_train), generator=gen), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        net.train()
        logits = net(x_train[idx])
        loss = F.binary_cross_entropy_with_logits(logits, y_train[idx]) + soft_dice_loss(logits, y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if it in checks:
            score = float(np.nanmean(image_dice(dice_scores(segment(net, x_val), y_val))))
            curve.append((it, score))
            if score >= best:
                best, best_state = score, (it, copy.deepcopy(net.state_dict()))
    net.load_state_dict(best_state[1])
    return net, dict(curve=curve, selected_step=best_state[0], val_dice=best, sec=time.perf_counter() - t0)


def image_dice(scores: np.ndarray) -> np.ndarray:
    """(N,) mean Dice over the structures present in each image (NaN if none is)."""
    with np.errstate(all="ignore"):
        present = np.isfinite(scores)
        return np.where(present.any(1), np.nansum(scores, 1) / np.maximum(present.sum(1), 1), np.nan)


def score_utility(pred: torch.Tensor, labels: torch.Tensor, subjects: list[str], n_boot: int = 200) -> dict:
    """`dice`, `dice_<structure>`, their `_lo/_hi` and subject-bootstrap replicates (`boot`) of a test set."""
    from benchmark.scoring.metrics import percentile_interval, subject_bootstrap
    from datasets.labels import STRUCTURE_NAMES

    scores = dice_scores(pred, labels)
    plan = subject_bootstrap(subjects, n_boot).astype(np.float64)  # (B, N) multiplicities
    columns = {"dice": image_dice(scores)} | {f"dice_{s}": scores[:, k] for k, s in enumerate(STRUCTURE_NAMES)}
    out: dict = {"n_images": len(pred), "n_subjects": len(set(subjects)), "boot": {}}
    for name, values in columns.items():
        ok = np.isfinite(values)
        out[name] = float(values[ok].mean()) if ok.any() else None
        weights = plan * ok[None]
        with np.errstate(all="ignore"):
            reps = (weights @ np.where(ok, values, 0.0)) / weights.sum(1)
        out["boot"][name] = [round(float(v), 7) for v in reps]
        out[f"{name}_lo"], out[f"{name}_hi"] = percentile_interval(reps)
    return out


# ------------------------------------------------------------------------------------------ finding the runs
def chosen_knob(folder: Path, task: str):
    """The knob value the run's validation chose for `task` (its test records' `val_choice`)."""
    from benchmark.protocol.records import read_records

    chosen = {r["knob_value"] for r in read_records(folder / "records.jsonl")
              if r.get("split", "test") == "test" and r["task"] == task and r.get("val_choice")}
    if len(chosen) != 1:
        raise RunError(f"utility: {folder} has {len(chosen)} validation-chosen knob values for {task}; expected one")
    return chosen.pop()


# ------------------------------------------------------------------------------------------ one point
def _translated(method, dataset, task, split: str, knob) -> tuple[torch.Tensor, list[str], float]:
    """The task sources' images of `split` translated to the target (identity for the oracle's `method=None`)."""
    from benchmark.run.evaluate import translate

    xs, scenes, sec = [], [], 0.0
    for source in task.sources:
        rows = dataset.rows(source, split)
        x = dataset.load(rows)
        if getattr(method, "external", False):  # translations made elsewhere: read, not made
            x = method.read(rows)
        elif method is not None:
            x, per_image = translate(method, x, source, task.target, knob)
            sec += per_image * len(x)
        xs.append(x)
        scenes += list(rows["scene"])
    return torch.cat(xs), scenes, sec


def utility_record(results_dir: Path, method: str, dataset_name: str, preset: str, seed: int, task_name: str,
                   data_root: str | None = None, settings: dict | None = None, budget: float | None = None) -> dict:
    """Translate, train the segmenter, test it: the utility record of one (method, seed, task), of its fit at
    `budget` (None: the headline fit); `method` may be `ORACLE` (the segmenter trained on the target's own training
    images; no budget)."""
    settings = dict(settings or SEGMENTER)
    from benchmark.protocol.provenance import git_sha
    from datasets import Task, get_task, load_dataset
    from datasets.labels import LABELS_VERSION, load_labels

    dataset = load_dataset(dataset_name, preset=preset, data_root=data_root)
    task = get_task(task_name, dataset.domains)
    if method == ORACLE:
        translator, knob, knob_name, run_id = None, None, None, None
        train_task = Task(ORACLE, (task.target,), task.target)
    else:
        folder = find_run(results_dir, method, dataset_name, preset, seed, task_name, budget)
        if is_external(folder):
            from benchmark.orchestration.external import ExternalTranslator

            translator = ExternalTranslator(folder, dataset, task, chosen_knob(folder, task_name))
            cfg = json.loads((folder / "config.json").read_text())
        else:
            translator, cfg = load_translator(folder)
        knob, knob_name, run_id = chosen_knob(folder, task_name), translator.knob_name, cfg["run_id"]
        train_task = task
    torch.manual_seed(seed)  # a sampler that draws from torch's global generator translates reproducibly
    with torch.no_grad():
        x_train, scenes_train, sec_train = _translated(translator, dataset, train_task, "train", knob)
        x_val, scenes_val, sec_val = _translated(translator, dataset, train_task, "val", knob)
    net, info = train_segmenter(x_train, torch.from_numpy(load_labels(dataset, scenes_train)), x_val,
                                torch.from_numpy(load_labels(dataset, scenes_val)), seed, settings)
    test = dataset.rows(task.target, "test")  # read once, after the segmenter's checkpoint is chosen
    pred = segment(net, dataset.load(test))
    scores = score_utility(pred, torch.from_numpy(load_labels(dataset, list(test["scene"]))), list(test["subject"]))
    return dict(scores, method=method, setting=budget_setting(budget), dataset=dataset_name, preset=preset,
                task=task_name, seed=seed, source="+".join(train_task.sources), target=task.target,
                knob=knob_name or "", knob_value=knob,
                split="utility", n_train=len(x_train), translate_sec=sec_train + sec_val, seg_sec=info["sec"],
                seg_selected_step=info["selected_step"], seg_val_dice=info["val_dice"], seg_curve=info["curve"],
                segmenter=settings, labels_version=LABELS_VERSION, utility_version=UTILITY_VERSION,
                translator_run=run_id, translator_records=_records_digest(folder) if method != ORACLE else None,
                git_sha=git_sha(), protocol=PROTOCOL_VERSION,
                generator_version=dataset.config.get("generator_version"))


def record_path(results_dir: Path, dataset: str, preset: str, task: str, method: str, seed: int,
                budget: float | None = None) -> Path:
    setting = budget_setting(budget)
    return Path(results_dir) / "utility" / f"{dataset}-{preset}" / task / method / \
        f"seed{seed}{'-' + setting if setting else ''}.json"


def run_utility(results_dir: Path, methods: list[str], dataset: str, preset: str, seeds: list[int], tasks: list[str],
                data_root: str | None = None, progress=print, settings: dict | None = None,
                budgets: list[float | None] = (None,)) -> list[dict]:
    """Utility records of every (method, seed, task, budget) (and the oracle's, once: it has no budget), computing
    the missing ones; a stored record is kept when its utility version, segmenter settings and translator run are
    today's. `budgets`: the fits' budgets (`run --budgets`; None = the headline fit)."""
    settings = dict(settings or SEGMENTER)
    out = []
    for task in tasks:
        for method in list(dict.fromkeys(methods + [ORACLE])):
            for budget in ([None] if method == ORACLE else list(dict.fromkeys(budgets))):
                for seed in seeds:
                    out.append(_utility_point(results_dir, method, dataset, preset, seed, task, data_root, settings,
                                              budget, progress))
    return out


def _utility_point(results_dir: Path, method: str, dataset: str, preset: str, seed: int, task: str, data_root,
                   settings: dict, budget: float | None, progress) -> dict:
    """The stored utility record of one point when it is current, else a new one (written atomically)."""
    path = record_path(results_dir, dataset, preset, task, method, seed, budget)
    if path.is_file():
        rec = json.loads(path.read_text())
        if rec.get("utility_version") == UTILITY_VERSION and rec.get("segmenter") == settings \
                and _current(rec, results_dir, method, dataset, preset, seed, task, budget):
            return rec
    rec = utility_record(results_dir, method, dataset, preset, seed, task, data_root, settings, budget)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(rec) + "\n")
    at = f" at {budget_setting(budget)}" if budget is not None else ""
    progress(f"utility {task} {method}{at} seed {seed}: Dice {rec['dice']:.3f} "
             f"[{rec['dice_lo']:.3f}, {rec['dice_hi']:.3f}] (segmenter {rec['seg_sec']:.0f} s)")
    return rec


def _current(rec: dict, results_dir: Path, method: str, dataset: str, preset: str, seed: int, task: str,
             budget: float | None = None) -> bool:
    """Whether a stored record still describes the translator run there is (kept when there is no run to compare
    with, e.g. committed records in a fresh clone)."""
    if method == ORACLE:
        return True
    try:
        folder = find_run(results_dir, method, dataset, preset, seed, task, budget)
    except RunError:
        return True
    if rec.get("translator_run") != json.loads((folder / "config.json").read_text())["run_id"]:
        return False
    # the same run id trained or evaluated again (a code change that moved its budget, a re-run after deleting it):
    # its records changed, and so may the knob value or the weights (records from before this field: id only)
    return rec.get("translator_records") in (None, _records_digest(folder))


def _records_digest(folder: Path) -> str | None:
    """The sha256 of a finished run's records, as its `done` marker vouches for them."""
    done = Path(folder) / "done"
    return json.loads(done.read_text()).get("records_sha256") if done.is_file() else None


def utility_files(results_dir: Path) -> list[Path]:
    return sorted(Path(results_dir).glob("utility/*/*/*/seed*.json"))
