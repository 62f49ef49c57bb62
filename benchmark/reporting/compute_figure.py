"""The `compute-<task>` figure: each metric of `benchmark.reporting.compute` against training FLOPs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.reporting.compute import _multiple, budget_rows, has_budget_axis, metrics_of
from benchmark.reporting.load import method_group
from benchmark.reporting.tables import label_of


def compute_figure(table: pd.DataFrame, task: str, chosen: pd.DataFrame | None = None):
    """compute-<task>: each metric against training FLOPs (log axis), one line per learned method with its
    intervals (points dodged sideways by a few hundredths of a decade); the references (no training) and the paired
    bounds fitted at one budget only as horizontal lines; `chosen`, as for `budget_rows`. None without a budget
    axis."""
    import matplotlib.pyplot as plt

    from benchmark.reporting.styles import method_style

    rows = budget_rows(table, chosen)
    rows = rows[rows["task"] == task]
    if not has_budget_axis(rows):
        return None
    metrics = metrics_of(rows)
    refs = table[(table["task"] == task) & (table["method"].map(method_group) == "reference")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics) + 3.0, 3.8), squeeze=False)
    groups, fewer = list(rows.groupby("base", sort=False)), False
    drawn = [b for b, g in groups if not (method_group(b) == "paired" and g["budget"].nunique() == 1)]
    for ax, m in zip(axes[0], metrics, strict=True):
        for base, g in groups:
            style = method_style(base)
            paired = method_group(base) == "paired"
            label = style["label"] + (" (upper bound)" if paired and "paired" not in style["label"] else "")
            if base not in drawn:  # a paired bound fitted at one budget: a line to compare against, as a reference
                if np.isfinite(g[m].iloc[0]):
                    ax.axhline(g[m].iloc[0], color=style.get("color"), linestyle="--", linewidth=1,
                               label=f"{label}, {_multiple(g.iloc[0])} only")
                continue
            # each method's points shifted by a few hundredths of a decade, so that their intervals do not overlap
            dodge = 10 ** (0.02 * (drawn.index(base) - (len(drawn) - 1) / 2))
            x, y = g["budget"].to_numpy() * dodge, g[m].to_numpy(dtype=float)
            err = np.array([y - g[f"{m}_lo"].to_numpy(dtype=float), g[f"{m}_hi"].to_numpy(dtype=float) - y])
            full = (g["n_seeds"] == g["n_seeds"].max()).to_numpy()
            ax.errorbar(x[full], y[full], yerr=err[:, full], color=style.get("color"),
                        marker=style.get("marker", "o"), capsize=3, linestyle="--" if paired else "-", label=label)
            if not full.all():  # fewer seeds (9x on seed 0): hollow, joined by a dotted line
                fewer = True
                ax.errorbar(x[~full], y[~full], yerr=err[:, ~full], color=style.get("color"), capsize=3,
                            marker=style.get("marker", "o"), markerfacecolor="white", linestyle="none", zorder=3)
                for i in range(len(x) - 1):
                    if not (full[i] and full[i + 1]):
                        ax.plot(x[i:i + 2], y[i:i + 2], color=style.get("color"), linestyle=":", linewidth=1.2)
        for _, r in refs.drop_duplicates("method").iterrows():
            if np.isfinite(r.get(m, np.nan)):
                style = method_style(r["method"])
                ax.axhline(r[m], color=style.get("color") or "0.4", linestyle=":", linewidth=1,
                           label=f"{style['label']} (no training)")
        ax.set_xscale("log")
        ticks = sorted(rows.drop_duplicates("budget")[["budget", "multiple"]].itertuples(index=False))
        ax.set_xticks([b for b, _ in ticks], [f"{b:.2g}\n({k:g}×)" if np.isfinite(k) else f"{b:.2g}"
                                              for b, k in ticks])
        ax.minorticks_off()
        ax.set_xlabel("training FLOPs (× the preset's budget)")
        ax.set_ylabel(label_of(m))
        ax.set_title(f"{rows['dataset'].iloc[0]}/{rows['preset'].iloc[0]} {task}")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if fewer:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="white", linestyle=":"))
        labels.append("hollow, dotted: fewer seeds than its other points\n(one seed: interval over test subjects only)")
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.80, 0.5), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.80, 1))
    return fig
