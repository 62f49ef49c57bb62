"""Records -> tidy DataFrame -> summary tables (pure functions of the DataFrame).

`summary(df)` averages each seed's records over the task's source domains, then reports, per
(dataset, preset, task, method, knob value), the mean and the 95 % Student-t half-width over seeds.
Ranks follow the MedShift paper's Table 1: realism rank by a Fréchet distance of features (FID, else the
weight-free FRD) when it is available for every row, else by `nps_dist`; structure rank by `ssim_src`; average rank
= their mean (lower is better). Arrows and the best-value bolding come from `metrics.METRICS`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import METRICS, mean_ci_over_seeds
from .records import atomic_write, read_records

GROUP = ["dataset", "preset", "task", "method", "knob", "knob_value"]
TABLE_METRICS = ["fid", "kid", "coverage", "cmmd", "frd", "nps_dist", "hist_w1", "ssim_gt", "psnr_gt", "lpips_gt",
                 "ssim_src", "psnr_src", "lpips_src"]
EXTRA = ["nfe", "sec_per_image", "train_sec", "n_params"]
REALISM_RANK_ORDER = ["fid", "frd", "nps_dist"]


def base_method(name: str) -> str:
    """The registered method of a table row: "medshift (guidance=3.0)" -> "medshift" (see `load_records`)."""
    return name.split(" (")[0]


def split_variants(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of the methods as configured, rows of the methods that have `--set` variants: theirs and the variants')."""
    base = df["method"].map(base_method)
    is_variant = df["method"] != base
    return df[~is_variant], df[base.isin(set(base[is_variant]))]


def load_records(results_dir: Path) -> pd.DataFrame:
    """All records under `results_dir/runs` (or a folder of .jsonl fixtures) as one DataFrame."""
    results_dir = Path(results_dir)
    files = sorted(results_dir.glob("runs/**/records.jsonl")) or sorted(results_dir.glob("*.jsonl"))
    rows = [r for f in files for r in read_records(f)]
    if not rows:
        raise FileNotFoundError(f"no records under {results_dir} (run `python -m benchmark run` first)")
    df = pd.DataFrame(rows)
    if "setting" in df:  # a variant (--set / --max-steps) is its own row: "medshift (guidance=3.0)"
        variant = df["setting"].fillna("").astype(str)
        df["method"] = df["method"].where(variant == "", df["method"] + " (" + variant + ")")
    df["knob"] = df["knob"].fillna("")
    df["knob_value"] = df["knob_value"].astype(object).where(df["knob_value"].notna(), "")
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, preset, task, method, knob value): `<m>` mean, `<m>_ci` half-width, ranks."""
    metrics = [m for m in TABLE_METRICS + EXTRA if m in df.columns]
    per_seed = df.groupby(GROUP + ["seed"], sort=False, dropna=False)[metrics].mean(numeric_only=False)
    per_seed = per_seed.apply(pd.to_numeric, errors="coerce").reset_index()
    rows = []
    for key, g in per_seed.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key), n_seeds=len(g))
        for m in metrics:
            mean, half = mean_ci_over_seeds(g[m].to_numpy())
            row[m], row[f"{m}_ci"] = mean, half
        rows.append(row)
    return add_ranks(pd.DataFrame(rows))


def realism_metric(df: pd.DataFrame) -> str | None:
    """The realism metric to rank and plot by: the first of REALISM_RANK_ORDER that every row has."""
    return next((m for m in REALISM_RANK_ORDER if m in df and df[m].notna().all()), None)


def add_ranks(out: pd.DataFrame) -> pd.DataFrame:
    """Realism, structure and average rank within each (dataset, preset, task), lower is better."""
    out = out.copy()
    for (_, _, _), part in out.groupby(["dataset", "preset", "task"], sort=False):
        realism = realism_metric(part)
        if realism is not None:
            out.loc[part.index, "realism_rank"] = part[realism].rank(ascending=not METRICS[realism].higher_is_better,
                                                                     method="min")
            out.loc[part.index, "realism_by"] = realism
        if "ssim_src" in part:
            out.loc[part.index, "structure_rank"] = part["ssim_src"].rank(ascending=False, method="min")
    if "realism_rank" in out and "structure_rank" in out:
        out["avg_rank"] = (out["realism_rank"] + out["structure_rank"]) / 2
    return out


def _fmt(mean: float, half: float, metric: str) -> str:
    if mean is None or not np.isfinite(mean):
        return "n/a"
    digits = 1 if metric in ("psnr_src", "psnr_gt", "fid", "train_sec") else 3
    if metric == "n_params":
        return f"{mean / 1e6:.2f}M"
    if metric == "sec_per_image":
        return f"{mean * 1e3:.2f}ms"
    text = f"{mean:.{digits}f}"
    if half and np.isfinite(half) and half > 0:
        text += f" ± {half:.{digits}f}"
    return text


def formatted(table: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """Human table: arrows in headers, mean ± CI, best value per task in bold."""
    shown = [m for m in TABLE_METRICS if m in table and table[m].notna().any()]
    rows = []
    for idx, r in table.iterrows():
        knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "–"
        row = {"task": r["task"], "method": r["method"], "knob": knob}
        if "n_seeds" in table:
            row["seeds"] = f"{r['n_seeds']:g}"
        for m in shown:
            cell = _fmt(r[m], r.get(f"{m}_ci"), m)
            part = table[table["task"] == r["task"]][m]
            best = part.max() if METRICS[m].higher_is_better else part.min()
            if np.isfinite(r[m]) and r[m] == best and part.notna().sum() > 1:
                cell = f"\\textbf{{{cell}}}" if tex else f"**{cell}**"
            row[f"{METRICS[m].label} {METRICS[m].arrow}"] = cell
        for m in ("realism_rank", "structure_rank", "avg_rank"):
            if m in table:
                row[m.replace("_", " ")] = "" if pd.isna(r[m]) else f"{r[m]:g}"
        for m in EXTRA:
            if m in table:
                row[m] = _fmt(r[m], 0, m)
        rows.append(row)
    return pd.DataFrame(rows)


def headline(table: pd.DataFrame, variants: bool = False) -> pd.DataFrame:
    """Rows at each method's table grid only, ranked among themselves (curve values are for the figures).

    Args:
        variants: False: each method as configured (no `--set`/`--max-steps` variants). True: the methods that
            have variants, each with its configured rows first and then its variants' rows.
    """
    from methods import METHODS

    def on_grid(row) -> bool:
        cls = METHODS.get(base_method(row["method"]))  # a variant has its method's grid
        grid = ("",) if cls is None or cls.knob_name is None else tuple(cls.knob_grid)
        return row["knob_value"] in grid

    configured, with_variants = split_variants(table[table.apply(on_grid, axis=1)])
    if not variants:
        return add_ranks(configured.reset_index(drop=True))
    order = with_variants.assign(_base=with_variants["method"].map(base_method))
    order = order.assign(_variant=order["method"] != order["_base"])
    order = order.sort_values(["task", "_base", "_variant", "method"], kind="stable")
    return add_ranks(order.drop(columns=["_base", "_variant"]).reset_index(drop=True))


def write_tables(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "summary.csv", out_dir / "summary.md", out_dir / "summary.tex", out_dir / "headline.md",
             out_dir / "variants.md"]
    atomic_write(paths[0], table.to_csv(index=False, float_format="%.6g"))
    def note(ranked: pd.DataFrame, scope: str = "") -> str:
        """The footer of one table, naming the metric *that* table was ranked by."""
        realism = ranked["realism_by"].dropna().unique() if "realism_by" in ranked else []
        return (f"\n\nMean ± 95% CI over seeds;{scope} realism rank by {', '.join(realism) or 'n/a'}, structure rank "
                "by SSIM to the source (MedShift Table 1 convention). n/a = unavailable (see the records' "
                "`unavailable`).\n")

    atomic_write(paths[1], formatted(table).to_markdown(index=False) + note(table))
    tex = formatted(table, tex=True).to_latex(index=False, escape=False)
    atomic_write(paths[2], tex.replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
                 .replace("–", "--").replace("_", r"\_"))
    configured = headline(table)
    atomic_write(paths[3], formatted(configured).to_markdown(index=False) + note(configured))
    variants = headline(table, variants=True)
    if len(variants):
        atomic_write(paths[4], formatted(variants).to_markdown(index=False) + note(
            variants, " ranks within this table (methods with `--set` variants);"))
    else:
        paths[4].unlink(missing_ok=True)
        paths.pop()
    return paths
