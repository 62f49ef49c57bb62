"""The qualitative figure: the saved test scenes of each method at its headline knob value, with zoom windows on
the strongest edge and the flattest patch, and each output's difference to the aligned real image."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.reporting.load import method_group, method_info, test_records


def headline_knob(df: pd.DataFrame, method: str, task: str):
    """The knob value a method is headlined at on `task`: the one most of its seeds chose on validation (ties: the
    first of its grid, then the values validation added beyond the grid's edge), None for a method without a knob."""
    recs = test_records(df[(df["method"] == method) & (df["task"] == task)])
    if recs.empty or recs["knob"].iloc[0] == "":
        return None
    grid = list(dict.fromkeys(list(method_info(method).get("knob_grid") or []) + list(recs["knob_value"])))
    chosen = recs[recs["val_choice"].fillna(False).astype(bool)] if "val_choice" in recs else recs.iloc[:0]
    counts = chosen.groupby("seed")["knob_value"].first().value_counts() if len(chosen) else pd.Series(dtype=int)
    if counts.empty:
        return grid[0]
    top = counts.max()
    return next(k for k in grid if counts.get(k, 0) == top)


def run_folders(df: pd.DataFrame, method: str, task: str) -> list[Path]:
    """The run folders (live or archived) of `method`'s test records of `task`, lowest seed first."""
    recs = test_records(df[(df["method"] == method) & (df["task"] == task)])
    if "_file" not in recs:
        return []
    seeds = recs.groupby("_file")["seed"].min().sort_values()
    return [Path(f).parent for f in seeds.index]


def inset_windows(image, size: int = 16, air: float = 0.15) -> dict:
    """Two zoom windows (top, left, size) of an image (H, W) in [0, 1], where methods differ in sharpness and in
    noise texture: the strongest edge inside the head (largest gradient of the smoothed image among the pixels
    whose whole window is brighter than `air`, else anywhere away from the border) and the flattest unclipped patch
    (smallest spread)."""
    import numpy as np
    from scipy import ndimage

    h, w = image.shape
    size = min(size, h // 2, w // 2)
    smooth = ndimage.gaussian_filter(image, 1.0)
    grad = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    inside = ndimage.minimum_filter(smooth, size=size) > air  # the window centred here holds no air
    m = size // 2
    valid = np.zeros_like(inside)
    valid[m:h - m, m:w - m] = True
    score = np.where(valid & inside, grad, -1.0) if (valid & inside).any() else np.where(valid, grad, -1.0)
    r, c = np.unravel_index(np.argmax(score), score.shape)
    edge = (int(r) - m, int(c) - m)
    best, flat = np.inf, (0, 0)
    for top in range(0, h - size + 1, 2):
        for left in range(0, w - size + 1, 2):
            patch = image[top:top + size, left:left + size]
            if 0.05 < patch.min() and patch.max() < 0.95 and patch.std() < best:
                best, flat = patch.std(), (top, left)
    return {"edge": (*edge, size), "flat": (*flat, size)}


WINDOW_COLORS = {"edge": "tab:red", "flat": "gold"}


def _show(ax, image, windows: dict | None = None, zoom: str | None = None, cmap="gray", vmin=0.0, vmax=1.0):
    """An image with its zoom windows outlined, or (`zoom`) the enlarged content of one window."""
    from matplotlib.patches import Rectangle

    if zoom is not None:
        top, left, size = windows[zoom]
        image = image[top:top + size, left:left + size]
    ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if zoom is not None:
        for spine in ax.spines.values():
            spine.set_edgecolor(WINDOW_COLORS[zoom])
            spine.set_linewidth(1.5)
    elif windows:
        for name, (top, left, size) in windows.items():
            ax.add_patch(Rectangle((left - 0.5, top - 0.5), size, size, fill=False, ec=WINDOW_COLORS[name], lw=0.8))


def qualitative_grid(df: pd.DataFrame, task: str, diff_range: float = 0.3):
    """The saved test scenes (`benchmark.protocol.samples`): rows = scenes, columns = source, each method at its
    headline knob value (its lowest seed's run), the aligned real image. Under every image its two zoom windows
    enlarged: the strongest edge inside the head (red) and the flattest patch (yellow); then each output minus the
    aligned real image. None without saved samples."""
    import matplotlib.pyplot as plt
    from matplotlib.gridspec import GridSpec

    from benchmark.protocol.samples import read_samples

    methods = [m for m in display_order(test_records(df[df["task"] == task])) if m != "identity"]
    columns, scenes = [], None
    for method in methods:
        knob = headline_knob(df, method, task)
        for folder in run_folders(df, method, task):
            samples = read_samples(folder, task)
            if samples and all(knob in e["knobs"] for e in samples.values()):
                columns.append((method, knob, samples))
                scenes = scenes or samples
                break
    if not columns:
        return None
    names = sorted(scenes)
    n_cols = len(columns) + 2
    fig = plt.figure(figsize=(1.25 * n_cols, 2.55 * len(names) + 0.5))
    grid = GridSpec(3 * len(names), 2 * n_cols, figure=fig, height_ratios=[1.0, 0.5, 1.0] * len(names),
                    hspace=0.08, wspace=0.06, left=0.04, right=0.995, top=1 - 0.95 / fig.get_figheight(), bottom=0.005)
    for i, scene in enumerate(names):
        entry = scenes[scene]
        source_dom, source = entry["source"]
        gt = entry["target"][1] if entry["target"] else None
        windows = inset_windows(gt if gt is not None else source)
        cells = [(f"source ({source_dom})", source)]
        cells += [(_column_title(m, k), samples[scene]["knobs"][k]) for m, k, samples in columns]
        cells += [(f"aligned real ({entry['target'][0]})" if gt is not None else "no aligned image", gt)]
        for j, (title, image) in enumerate(cells):
            ax = fig.add_subplot(grid[3 * i, 2 * j:2 * j + 2])
            if image is None:
                ax.axis("off")
                continue
            _show(ax, image, windows)
            for k, name in enumerate(windows):
                _show(fig.add_subplot(grid[3 * i + 1, 2 * j + k]), image, windows, zoom=name)
            if gt is not None and j < n_cols - 1:
                _show(fig.add_subplot(grid[3 * i + 2, 2 * j:2 * j + 2]), image - gt, windows, cmap="RdBu_r",
                      vmin=-diff_range, vmax=diff_range)
            if i == 0:
                ax.set_title(title, fontsize=6.5)
            if j == 0:
                ax.set_ylabel(scene, fontsize=7)
    d, p = df["dataset"].iloc[0], df["preset"].iloc[0]
    fig.suptitle(f"{d}/{p} {task}: fixed test scenes, each method at its validation-chosen setting.\nUnder each image: "
                 "its strongest edge inside the head (red) and flattest patch (yellow), enlarged;\nthird row of each "
                 f"scene: output minus the aligned real image (blue: darker, red: brighter, ±{diff_range} of the "
                 "display range)", fontsize=7)
    return fig


def _column_title(method: str, knob) -> str:
    info = method_info(method)
    label = (info.get("style") or {}).get("label", method)
    return label if knob is None else f"{label}\n{info.get('knob')}={knob:g}"


def display_order(df: pd.DataFrame) -> list[str]:
    """Methods of `df` by group (unpaired, paired, reference), in their record order within a group."""
    from benchmark.reporting.load import GROUPS

    methods = list(dict.fromkeys(df["method"]))
    return sorted(methods, key=lambda m: GROUPS.index(method_group(m)))
