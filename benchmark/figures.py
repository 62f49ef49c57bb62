"""Figures as pure functions of the records DataFrame (never of checkpoints)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .collect import base_method, load_records, method_info, realism_metric, split_variants, summary, test_records
from .metrics import METRICS

VARIANT_COLORS = ("tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")


def method_style(method: str, n_variant: int = 0) -> dict:
    """A method's look (its declared `style`); a variant "medshift (guidance=3.0)" keeps its method's marker in its
    own colour."""
    info = method_info(method)
    base = {"marker": "o", "label": method, **(info.get("style") or {})}
    if info and method == base_method(method):
        return base
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
    Knob values are written next to the points; error bars are the tables' 95 % intervals (test subjects and
    seeds, `collect.summary`) where the records carry them.
    """
    import matplotlib.pyplot as plt

    part = common_seeds(test_records(df[df["task"] == task]))
    y = y or realism_metric(part) or "nps_dist"  # the tables' metric (FID, else FRD, else nps_dist)
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 4.0))
    means = part.groupby(["method", "knob", "knob_value"], sort=False, dropna=False)[[x, y]].mean().reset_index()
    n_seeds = part.groupby("method", sort=False)["seed"].nunique()
    variants = 0
    for method, g in means.groupby("method", sort=False):
        style = method_style(method, variants)
        style["label"] += f", {n_seeds[method]} seed{'s' if n_seeds[method] > 1 else ''}"
        variants += method != base_method(method)
        knobbed = g["knob"].iloc[0] != ""
        if knobbed:
            g = g.sort_values(x)
            ax.plot(g[x], g[y], "-", color=style.get("color"), alpha=0.6)
            for _, r in g.iterrows():
                ax.annotate(f"{r['knob_value']:g}", (r[x], r[y]), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=style.get("color"))
        ax.plot(g[x], g[y], linestyle="none", markersize=7 if knobbed else 9, **style)
        if {"dataset", "preset"} <= set(part):
            _error_bars(ax, part[part["method"] == method], x, y, style.get("color"))
    ax.set_xlabel(f"{METRICS[x].label} {METRICS[x].arrow}  (structure)")
    ax.set_ylabel(f"{METRICS[y].label} {METRICS[y].arrow}  (realism)")
    ax.set_title(f"{part['dataset'].iloc[0]}/{part['preset'].iloc[0]} {task}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax.figure


def _error_bars(ax, records: pd.DataFrame, x: str, y: str, color) -> None:
    try:
        table = summary(records)
    except (KeyError, ValueError):
        return
    cols = [f"{m}_{e}" for m in (x, y) for e in ("lo", "hi")]
    if not set(cols) <= set(table) or table[cols].isna().all().all():
        return
    # a percentile interval of a biased set statistic (FRD) need not contain the mean: draw it as it is
    def err(m):
        return [(table[m] - table[f"{m}_lo"]).clip(lower=0), (table[f"{m}_hi"] - table[m]).clip(lower=0)]

    ax.errorbar(table[x], table[y], xerr=err(x), yerr=err(y), fmt="none", ecolor=color, alpha=0.5, elinewidth=1,
                capsize=2)


def learning_curves(df: pd.DataFrame, task: str, metrics: tuple[str, ...] = ("ssim_gt", "nps_dist")):
    """Validation metrics against training FLOPs for every learned method (mean over seeds; the checkpoint each seed
    selected on validation is ringed). Returns None when the records hold no learning curve."""
    import matplotlib.pyplot as plt

    curve = df[(df["task"] == task) & (df["split"] == "val")] if "split" in df else df.iloc[:0]
    curve = curve[curve["step"].map(lambda v: isinstance(v, int))] if len(curve) else curve
    if curve.empty or "flops" not in curve:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.0 * len(metrics), 3.8))
    selected = test_records(df[df["task"] == task]).groupby(["method", "seed"])["selected_step"].first() \
        if "selected_step" in df else pd.Series(dtype=float)
    for ax, metric in zip(axes, metrics, strict=True):
        for method, g in curve.groupby("method", sort=False):
            style = method_style(method)
            mean = g.groupby("step")[[metric, "flops"]].mean().sort_index()
            ax.plot(mean["flops"], mean[metric], "-", marker=style.get("marker"), color=style.get("color"),
                    markersize=4, label=f"{style['label']}, {g['seed'].nunique()} seed(s)")
            for (m, _), step in selected.items():
                if m == method and step in mean.index:
                    ax.plot(mean.loc[step, "flops"], mean.loc[step, metric], "o", mfc="none", ms=10,
                            color=style.get("color"))
        ax.set_xlabel("training FLOPs")
        ax.set_ylabel(f"{METRICS[metric].label} {METRICS[metric].arrow} (validation)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{curve['dataset'].iloc[0]}/{curve['preset'].iloc[0]} {task}: learning curves (ringed: selected)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(results_dir: Path, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load_records(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for task in df["task"].unique():
        # the methods as configured; then the methods that have --set variants on this task, with those variants
        for suffix, part in zip(("", "-variants"), split_variants(df[df["task"] == task]), strict=True):
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
        fig = learning_curves(split_variants(df[df["task"] == task])[0], task)
        if fig is not None:
            path = out_dir / f"learning-{task}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            paths.append(path)
    return paths
