"""Figures as pure functions of the records DataFrame (never of checkpoints)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from benchmark.reporting.images import display_order, qualitative_grid
from benchmark.reporting.load import (
    base_method,
    load_records,
    method_group,
    method_info,
    shared_fits,
    split_variants,
    test_records,
)
from benchmark.reporting.styles import method_style
from benchmark.reporting.tables import REALISM_RANK_ORDER, TEXTURE_RANK_ORDER, realism_metric, summary
from benchmark.reporting.utility_tables import (
    ORACLE,
    attach_utility,
    load_utility,
    utility_correlations,
    utility_rows,
    utility_summary,
)
from benchmark.scoring.declarations import METRICS


def common_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Per method, a curve whose every point has the same seeds: either every seed at the knob values all of them
    have (a seed whose validation added a value beyond the grid's edge adds no 1-seed point), or the seeds that have
    every knob value (a 1-seed `--curve` kept whole); whichever keeps more records, every seed on a tie."""
    keep = []
    for _, g in df.groupby("method", sort=False):
        values = g["knob_value"].map(str)
        points = values.groupby(g["seed"]).agg(frozenset)
        shared = g[values.isin(frozenset.intersection(*points))]
        whole = g[g["seed"].isin(points[points == frozenset(values)].index)]
        keep.append(shared if len(shared) >= len(whole) else whole)
    return pd.concat(keep) if keep else df


def tradeoff_curves(df: pd.DataFrame, task: str, y: str | None = None, x: str = "ssim_src", ax=None):
    """Structure (x) versus realism (y) per method: a curve over the knob, a single marker without one.

    Values are means over source domains and over the same seeds at every point of the method's curve (a curve
    mixing 3-seed table points with 1-seed points would zig-zag; `common_seeds`); the legend gives the count.
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
        group = method_group(method)
        if group == "paired":  # an upper bound: a hollow reference marker, no curve
            style = dict(style, mfc="none", markeredgewidth=1.6)
            style["label"] += " (upper bound)"
        if knobbed and group != "reference":
            g = g.sort_values(x)
            ax.plot(g[x], g[y], "-", color=style.get("color"), alpha=0.6)
            for _, r in g.iterrows():
                ax.annotate(f"{r['knob_value']:g}", (r[x], r[y]), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=style.get("color"))
        elif knobbed:  # a reference row with a knob (histogram matching): its points, labelled, no curve
            for _, r in g.iterrows():
                ax.annotate(f"{r['knob_value']:g}", (r[x], r[y]), textcoords="offset points", xytext=(3, 3),
                            fontsize=7, color=style.get("color"))
        ax.plot(g[x], g[y], linestyle="none", markersize=7 if knobbed else 9, **style)
        if {"dataset", "preset"} <= set(part):
            _error_bars(ax, part[part["method"] == method], x, y, style.get("color"))
    ideal = structure_ideal_of(part) if x == "ssim_src" else None
    if ideal is not None:  # a perfect translation's structure: higher SSIM (src) is under-translation
        ax.axvline(ideal, linestyle="--", color="0.35", linewidth=1,
                   label=f"ideal SSIM (src) {ideal:.3f}: a perfect translation (no translation's SSIM (gt))")
    ax.set_xlabel(f"{METRICS[x].label} {METRICS[x].arrow}  (structure)")
    ax.set_ylabel(f"{METRICS[y].label} {METRICS[y].arrow}  (realism)")
    ax.set_title(f"{part['dataset'].iloc[0]}/{part['preset'].iloc[0]} {task}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax.figure


def structure_ideal_of(records: pd.DataFrame) -> float | None:
    """The ideal SSIM (src) of one task's test records: no translation's mean SSIM (gt) (`tables.add_structure_gap`),
    or None without an identity row with SSIM (gt)."""
    ident = records[records["method"] == "identity"]
    value = pd.to_numeric(ident["ssim_gt"], errors="coerce").mean() if len(ident) and "ssim_gt" in ident else None
    return float(value) if value is not None and pd.notna(value) else None


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


def learning_curves(df: pd.DataFrame, task: str, metrics: tuple[str, ...] = ("ssim_gt", "nps_dist"),
                    shared: dict | None = None):
    """Validation metrics against training FLOPs for every learned method (mean over seeds; the checkpoint each seed
    selected on validation is ringed). `shared` ({method: tasks}, `load.shared_fits`): methods whose one fit serves
    several tasks and was selected on all their curves, which the title says. None when the records hold no curve."""
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
    title = f"{curve['dataset'].iloc[0]}/{curve['preset'].iloc[0]} {task}: learning curves (ringed: selected)"
    both = {m: ts for m, ts in (shared or {}).items() if task in ts and m in set(curve["method"])}
    if both:
        title += "\n" + "; ".join(f"{method_style(m)['label']}: one fit for {', '.join(ts)}, its checkpoint "
                                  "selected on every one of those tasks' curves" for m, ts in both.items())
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ qualitative grid
# ------------------------------------------------------------------------------------------ MedShift's knob surface
def knob_surface(df: pd.DataFrame, task: str, method: str = "medshift", setting: str = "guidance",
                 metrics: tuple[str, ...] = ("frd", "ssim_gt")):
    """Heatmaps of `metrics` over the knob x one sampling setting (MedShift: tau x guidance w), from the method's
    configured runs and its `--set <setting>=...` variants that re-use the same fits (mean over the seeds that
    have every cell). None when fewer than two values of the setting were run."""
    import matplotlib.pyplot as plt
    import numpy as np

    recs = test_records(df[(df["task"] == task) & (df["method"].map(base_method) == method)])
    if recs.empty:
        return None
    default = _configured_value(recs[recs["setting"] == ""], setting)

    def value(row):
        for item in str(row["setting"]).split(","):
            key, _, v = item.partition("=")
            if key == setting:
                return float(v)
        return default if row["setting"] == "" else None

    recs = recs.assign(_w=recs.apply(value, axis=1)).dropna(subset=["_w"])
    recs = recs[recs["setting"].map(lambda s: all(i.split("=")[0] == setting for i in s.split(",") if i))]
    if recs["_w"].nunique() < 2:
        return None
    seeds = set.intersection(*(set(g["seed"]) for _, g in recs.groupby("_w")))
    recs = recs[recs["seed"].isin(seeds)]
    metrics = [m for m in metrics if m in recs and recs[m].notna().all()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        grid = recs.groupby(["_w", "knob_value"])[metric].mean().unstack("knob_value").sort_index()
        grid = grid[sorted(grid.columns, reverse=True)]
        cmap = "viridis" if METRICS[metric].higher_is_better else "viridis_r"
        im = ax.imshow(grid.to_numpy(), cmap=cmap, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), [f"{v:g}" for v in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"{v:g}" for v in grid.index])
        ax.set_xlabel(f"{method_info(method).get('knob')} (knob)")
        ax.set_ylabel(setting)
        for (r, c), v in np.ndenumerate(grid.to_numpy()):  # dark text on the bright (better) half of the scale
            bright = sum(im.cmap(im.norm(v))[:3]) > 1.5
            ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=7, color="k" if bright else "w")
        ax.set_title(f"{METRICS[metric].label} {METRICS[metric].arrow} (brighter = better)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"{recs['dataset'].iloc[0]}/{recs['preset'].iloc[0]} {task}: {method}, {len(seeds)} seed(s), "
                 "test split, the same fits", fontsize=9)
    fig.tight_layout()
    return fig


def _configured_value(recs: pd.DataFrame, key: str) -> float | None:
    """A setting's value in the runs of `recs` as configured, from their config.json (no torch needed)."""
    import json

    for f in dict.fromkeys(recs.get("_file", [])):
        cfg = Path(f).parent / "config.json"
        if cfg.is_file():
            value = json.loads(cfg.read_text()).get("method_config", {}).get(key)
            if value is not None:
                return float(value)
    return None


# ------------------------------------------------------------------------------------------ cost against quality
def cost_quality(df: pd.DataFrame, task: str, y: str | None = None):
    """Seconds per image and nfe against realism, every knob value of every method; each point is labelled with its
    structure (SSIM to the source), and a knob method's curve is interpolated at the median structure of the
    learned methods' points (filled stars), so that realism and cost are compared at matched structure."""
    import matplotlib.pyplot as plt
    import numpy as np

    part = common_seeds(test_records(df[df["task"] == task]))
    part = part[part["method"] == part["method"].map(base_method)]
    if part.empty or not {"sec_per_image", "nfe"} <= set(part.columns):
        return None  # records without cost fields (written before they were recorded): nothing to draw
    y = y or realism_metric(part) or "nps_dist"
    means = part.groupby(["method", "knob_value"], sort=False, dropna=False)[
        ["sec_per_image", "nfe", "ssim_src", y]].mean().reset_index()
    learned = means[means["method"].map(method_group) != "reference"]
    s_star = float(learned["ssim_src"].median()) if len(learned) else None
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
    for ax, x in zip(axes, ("sec_per_image", "nfe"), strict=True):
        for method in display_order(means):
            g = means[means["method"] == method].sort_values("ssim_src")
            style = method_style(method)
            xs = g[x].clip(lower=1e-5) if x == "sec_per_image" else g[x].clip(lower=0.5)
            ax.plot(xs, g[y], "-" if len(g) > 1 else "none", color=style.get("color"), alpha=0.5)
            ax.plot(xs, g[y], linestyle="none", **{**style, "markersize": 7})
            for xv, yv, sv in zip(xs, g[y], g["ssim_src"], strict=True):
                ax.annotate(f"{sv:.2f}", (xv, yv), textcoords="offset points", xytext=(3, 3), fontsize=6,
                            color=style.get("color"))
            if s_star is not None and len(g) > 1 and g["ssim_src"].min() <= s_star <= g["ssim_src"].max():
                ax.plot(np.interp(s_star, g["ssim_src"], xs), np.interp(s_star, g["ssim_src"], g[y]), "*",
                        color=style.get("color"), markersize=13, markeredgecolor="k")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (log)" if x == "sec_per_image" else "network evaluations per image (log)")
        ax.set_ylabel(f"{METRICS[y].label} {METRICS[y].arrow}  (realism)")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    title = f"{part['dataset'].iloc[0]}/{part['preset'].iloc[0]} {task}: cost against realism; labels: SSIM (src)"
    if s_star is not None:
        title += f"; stars: a knob curve at matched structure SSIM (src) = {s_star:.2f}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ downstream utility
def utility_figure(df: pd.DataFrame, usum: pd.DataFrame, task: str, x_metrics: list[str],
                   failed: list[str] | None = None):
    """Downstream utility (mean Dice of the segmenter, `benchmark.orchestration.utility`) against each realism
    metric in `x_metrics` and against structure (SSIM to the source), one point per method at the settings its
    utility was measured at (each seed's own validation choice, `utility_rows`), 95 % interval bars on both axes;
    the oracle (real training images) and no translation as horizontal lines. Each panel's title gives Spearman's
    rank correlation of the plotted metric with utility over the translation methods (the scatter's own sign) and
    whether the metric ranks them as utility does (for a lower-is-better metric a negative ρ); `failed`: metrics
    that failed validity on the preset, said in their title."""
    import matplotlib.pyplot as plt

    part = usum[usum["task"] == task] if not usum.empty else usum
    if part.empty:
        return None
    table = utility_rows(df[df["task"] == task], part)
    rows = table[table["dice"].notna()]
    if (rows["method"].map(method_group) == "reference").all():  # no translation method scored: nothing to compare
        return None
    panels = list(x_metrics) + ["ssim_src"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.0), squeeze=False)
    oracle = part[part["method"] == ORACLE]
    for ax, x in zip(axes[0], panels, strict=True):
        for _, r in rows.iterrows():
            style = method_style(r["method"])
            if method_group(r["method"]) == "paired":
                style = dict(style, mfc="none", markeredgewidth=1.6)
            xerr = [[max(r[x] - r.get(f"{x}_lo", r[x]), 0)], [max(r.get(f"{x}_hi", r[x]) - r[x], 0)]]
            yerr = [[max(r["dice"] - r["dice_lo"], 0)], [max(r["dice_hi"] - r["dice"], 0)]]
            ax.errorbar([r[x]], [r["dice"]], xerr=xerr, yerr=yerr, fmt="none", ecolor=style.get("color"), alpha=0.5)
            ax.plot([r[x]], [r["dice"]], linestyle="none", markersize=8, **style)
        for _, o in oracle.iterrows():
            ax.axhspan(o["dice_lo"], o["dice_hi"], color="tab:green", alpha=0.15)
            ax.axhline(o["dice"], color="tab:green", ls="--", lw=1, label="oracle (real training images)")
        title = METRICS[x].label + (" (failed validity on this preset)" if failed and x in failed else "")
        if len(rho := utility_correlations(rows, [x], min_methods=3)):
            # the plain correlation of the plotted values (its sign is the scatter's), then what it means
            agrees = rho["spearman_rho"].iloc[0]
            plain = agrees if METRICS[x].higher_is_better else -agrees
            title += (f"\nSpearman ρ = {plain:+.2f} over {rho['methods'].iloc[0]} methods: "
                      f"{'ranks them as' if agrees > 0 else 'does not rank them as'} utility does")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"{METRICS[x].label} {METRICS[x].arrow}  ({METRICS[x].axis})")
        ax.set_ylabel("utility: mean Dice on real test images ↑")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{df['dataset'].iloc[0]}/{df['preset'].iloc[0]} {task}: does realism predict downstream utility? "
                 "(a segmenter trained on each method's translated synthetic images, tested on real ones)", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ all figures
def valid_realism(df: pd.DataFrame, tables_dir: Path) -> list[str]:
    """The realism metrics to plot: those that passed the metric-validity check on the records' preset (all
    computable ones when the check was not run there), in the ranking order."""
    from benchmark.scoring.validity import valid_realism_metrics

    d, p = df["dataset"].iloc[0], df["preset"].iloc[0]
    passed = valid_realism_metrics(tables_dir, d, p)
    have = [m for m in METRICS if METRICS[m].axis == "realism" and m in df and test_records(df)[m].notna().all()]
    order = REALISM_RANK_ORDER + [m for m in have if m not in REALISM_RANK_ORDER]
    return [m for m in order if m in have and (passed is None or m in passed)]


def failed_realism(df: pd.DataFrame, tables_dir: Path) -> list[str]:
    """The realism metrics that failed the metric-validity check on the records' preset (none when it was not run)."""
    from benchmark.scoring.validity import valid_realism_metrics

    passed = valid_realism_metrics(tables_dir, df["dataset"].iloc[0], df["preset"].iloc[0])
    return [] if passed is None else [m for m in METRICS if METRICS[m].axis == "realism" and m not in passed]


def realism_axes(df: pd.DataFrame, valid: list[str]) -> list[str]:
    """The metrics of the two realism axes to plot against utility: global statistics (the first valid one) and noise
    texture (`nps_flat` where the records have it, whether or not it passed validity: a figure shows, it ranks
    nothing; its panel title says when it failed)."""
    glob = next((m for m in valid if m not in TEXTURE_RANK_ORDER), None)
    texture = [m for m in TEXTURE_RANK_ORDER if m in df and test_records(df)[m].notna().all()]
    return [m for m in [glob, *texture] if m]


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def write_figures(results_dir: Path, out_dir: Path, tables_dir: Path | None = None) -> list[Path]:
    """Every figure of the records under `results_dir` (and their saved samples), as PNG and PDF under `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    df = load_records(results_dir)
    usum = utility_summary(load_utility(results_dir))
    tables_dir = tables_dir or Path(results_dir) / "tables"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    shared = shared_fits(df)
    for task in df["task"].unique():
        task_df = df[df["task"] == task]
        realism = valid_realism(task_df, tables_dir) or ["nps_dist"]
        # the methods as configured; then the methods that have --set variants on this task, with those variants
        for suffix, part in zip(("", "-variants"), split_variants(task_df), strict=True):
            if part.empty:
                continue
            panels = realism + ["ssim_gt"]
            fig, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels) + 4.0, 4.0), squeeze=False)
            for ax, metric in zip(axes[0], panels, strict=True):
                tradeoff_curves(part, task, y=metric, ax=ax)
            axes[0][-1].set_ylabel(f"{METRICS['ssim_gt'].label} ↑  (fidelity to the aligned real image)")
            handles, labels = axes[0][0].get_legend_handles_labels()
            for ax in axes[0]:  # one legend for the panels, beside them: inside, it hid points
                ax.get_legend().remove()
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(0.78, 0.5), fontsize=7, frameon=False)
            fig.tight_layout(rect=(0, 0, 0.78, 1))
            paths += _save(fig, out_dir, f"tradeoff-{task}{suffix}")
        configured = split_variants(task_df)[0]
        for name, fig in ((f"learning-{task}", learning_curves(configured, task, shared=shared)),
                          (f"qualitative-{task}", qualitative_grid(configured, task)),
                          (f"knob-surface-{task}", knob_surface(task_df, task)),
                          (f"cost-{task}", cost_quality(configured, task, realism[0])),
                          (f"utility-{task}", utility_figure(configured, usum, task, realism_axes(task_df, realism),
                                                             failed_realism(task_df, tables_dir)))):
            if fig is not None:
                paths += _save(fig, out_dir, name)
    return paths + _compute_figures(df, tables_dir, out_dir, usum)


def _compute_figures(df: pd.DataFrame, tables_dir: Path, out_dir: Path, usum: pd.DataFrame | None = None) -> list[Path]:
    """compute-<task> for the tasks where some method ran at several budgets (`benchmark.reporting.compute`) and
    medshift-ablation-<task> where MedShift has variants (`benchmark.reporting.ablation`): figures of the summary."""
    from benchmark.reporting.ablation import ablation_figure, has_ablation
    from benchmark.reporting.compute import own_choices
    from benchmark.reporting.compute_figure import compute_figure

    budgets = df["setting"].astype(str).str.contains("budget=").any()
    if not budgets and not has_ablation(df.drop_duplicates("method")):
        return []
    from benchmark.scoring.validity import valid_realism_metrics

    valid = {(d, p): valid_realism_metrics(tables_dir, d, p) for d, p in df[["dataset", "preset"]].drop_duplicates()
             .itertuples(index=False)}
    table = summary(df, {k: v for k, v in valid.items() if v is not None})
    if usum is not None and len(usum):
        table = attach_utility(table, usum)
    chosen = own_choices(df, table.attrs.get("valid_realism"), usum) if budgets else None
    paths = []
    for task in table["task"].unique():
        for name, fig in (("compute", compute_figure(table, task, chosen)),
                          ("medshift-ablation", ablation_figure(table, task, df))):
            if fig is not None:
                paths += _save(fig, out_dir, f"{name}-{task}")
    return paths
