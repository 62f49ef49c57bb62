"""Figures as pure functions of the records DataFrame (never of checkpoints)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .collect import base_method, load_records, realism_metric, split_variants
from .metrics import METRICS

STYLE = {  # one place for each method's look
    "identity": dict(color="black", marker="s", label="no translation"),
    "histmatch": dict(color="tab:gray", marker="D", label="histogram matching"),
    "medshift": dict(color="tab:red", marker="o", label="MedShift (τ)"),
    "cyclegan": dict(color="tab:blue", marker="^", label="CycleGAN"),
    "sdedit": dict(color="tab:green", marker="v", label="SDEdit (strength)"),
    "contourdiff": dict(color="tab:purple", marker="P", label="ContourDiff"),
}
VARIANT_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def method_style(method: str, n_variant: int = 0) -> dict:
    """A method's look; a variant "medshift (guidance=3.0)" keeps its method's marker in its own colour."""
    if method in STYLE:
        return dict(STYLE[method])
    base = STYLE.get(base_method(method), dict(marker="o"))
    return dict(base, color=VARIANT_COLORS[n_variant % len(VARIANT_COLORS)], label=method)


def common_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, only the records of seeds that were evaluated at every knob value the method has."""
    keep = []
    for _, g in df.groupby("method", sort=False):
        points = g.groupby("seed")["knob_value"].agg(lambda v: frozenset(map(str, v)))
        full = points[points == frozenset(map(str, g["knob_value"]))].index
        keep.append(g[g["seed"].isin(full)])
    return pd.concat(keep) if keep else df


def tradeoff_curves(df: pd.DataFrame, task: str, y: str | None = None, x: str = "ssim_src", ax=None):
    """Structure (x) versus realism (y) per method: a curve over the knob, a single marker without one.

    Values are means over source domains and over the seeds that have every point of the method's curve (a
    curve mixing 3-seed table points with 1-seed `--curve` points would zig-zag); the legend gives the count.
    Knob values are written next to the points.
    """
    import matplotlib.pyplot as plt

    part = common_seeds(df[df["task"] == task])
    y = y or realism_metric(part) or "nps_dist"  # the tables' metric (FID, else FRD, else nps_dist)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.0))
    means = part.groupby(["method", "knob", "knob_value"], sort=False, dropna=False)[[x, y]].mean().reset_index()
    n_seeds = part.groupby("method", sort=False)["seed"].nunique()
    variants = 0
    for method, g in means.groupby("method", sort=False):
        style = method_style(method, variants)
        style["label"] += f", {n_seeds[method]} seed{'s' if n_seeds[method] > 1 else ''}"
        variants += method not in STYLE
        knobbed = g["knob"].iloc[0] != ""
        if knobbed:
            g = g.sort_values(x)
            ax.plot(g[x], g[y], "-", color=style.get("color"), alpha=0.6)
            for _, r in g.iterrows():
                ax.annotate(f"{r['knob_value']:g}", (r[x], r[y]), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=style.get("color"))
        ax.plot(g[x], g[y], linestyle="none", markersize=7 if knobbed else 9, **style)
    ax.set_xlabel(f"{METRICS[x].label} {METRICS[x].arrow}  (structure)")
    ax.set_ylabel(f"{METRICS[y].label} {METRICS[y].arrow}  (realism)")
    ax.set_title(f"{part['dataset'].iloc[0]}/{part['preset'].iloc[0]} {task}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax.figure


def write_figures(results_dir: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load_records(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in df["task"].unique():
        # the methods as configured; then the methods that have --set variants on this task, with those variants
        for suffix, part in zip(("", "-variants"), split_variants(df[df["task"] == task])):
            if part.empty:
                continue
            fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
            tradeoff_curves(part, task, ax=axes[0])
            tradeoff_curves(part, task, y="ssim_gt", ax=axes[1])
            axes[1].set_ylabel(f"{METRICS['ssim_gt'].label} ↑  (fidelity to the aligned real image)")
            fig.tight_layout()
            path = out_dir / f"tradeoff-{task}{suffix}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    return paths
