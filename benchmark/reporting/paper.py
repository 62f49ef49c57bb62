"""The paper's Table 1 (LaTeX, one per task: each method at its headline knob value, the MedShift paper's columns)
and the convergence table (does a method still improve on validation at the end of its budget)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from benchmark.reporting.load import GROUPS, method_group, method_info
from benchmark.reporting.tables import TABLE_METRICS, ordered
from benchmark.scoring.declarations import METRICS

#: A learning curve is "still improving" when, over the last quarter of the budget, validation realism (the
#: checkpoint's criterion) improved by more than REL_CHANGE of its value or SSIM to the aligned image by more than
#: ABS_CHANGE; "flat" otherwise (changes of either sign below those).
REL_CHANGE, ABS_CHANGE = 0.05, 0.01


KNOB_TEX = {"tau": r"$\tau$", "strength": "strength", "noise_level": "noise", "blend": "blend"}


def _tex_value(value: float, metric: str) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    digits = 1 if metric in ("psnr_src", "psnr_gt", "fid") else 2 if metric.endswith("rank") else 3
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if metric.endswith("rank") else text.replace("0.", ".", 1) \
        if 0 <= value < 1 else text


def paper_table(configured: pd.DataFrame, task: str) -> str:
    """The MedShift paper's Table 1 layout as a LaTeX `table`: one row per method, its table knob values in one
    cell ("$\tau$ .6/.45/.3") and each metric's values at those knob values in one cell ("8.12 / 7.63 / 7.65"),
    realism metrics, then fidelity and structure, then the realism, structure and average ranks; no translation
    first, then the unpaired methods, the paired upper bounds and the other reference rows, separated by rules.

    Args:
        configured: `headline(summary)` (the table grid of each method as configured).
    """
    part = ordered(configured[configured["task"] == task])
    shown = [m for m in TABLE_METRICS if m in part and part[m].notna().any()]
    ranks = ["realism_rank", "structure_rank", "avg_rank"]
    order = {g: i for i, g in enumerate(GROUPS)}
    methods = sorted(dict.fromkeys(part["method"]), key=lambda m: (m != "identity" and order[method_group(m)] + 1,))
    header = ["Method", "knob"] + [f"{METRICS[m].label} {METRICS[m].arrow}" for m in shown] + \
        ["realism rank", "structure rank", "avg rank"]
    lines, last_group = [], None
    for method in methods:
        rows = part[part["method"] == method]
        group = "no translation" if method == "identity" else method_group(method)
        if last_group is not None and group != last_group:
            lines.append(r"\midrule")
        last_group = group
        knob = rows["knob"].iloc[0]
        values = "/".join(f"{float(v):g}".lstrip("0") or "0" for v in rows["knob_value"]) if knob else ""
        label = (method_info(method).get("style") or {}).get("label", method)
        cells = [label, f"{KNOB_TEX.get(knob, knob)} {values}".strip() or "--"]
        cells += [" / ".join(_tex_value(v, m) for v in rows[m]) for m in shown]
        cells += [" / ".join("--" if pd.isna(v) else _tex_value(v, m) for v in rows[m]) for m in ranks]
        lines.append(" & ".join(cells) + r" \\")
    esc = lambda text: text.replace("_", r"\_").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$") \
        .replace("τ", r"$\tau$").replace("%", r"\%")  # noqa: E731
    d = part["dataset"].iloc[0] if len(part) else ""
    p = part["preset"].iloc[0] if len(part) else ""
    caption = (f"{esc(d)}/{esc(p)}, {esc(task)}: mean over seeds at each table knob value (the MedShift paper's "
               "Table 1 layout). Realism against real images of other subjects, fidelity against the aligned real "
               "image, structure against the source; rows not surely apart (the 95\\% interval of their paired "
               "difference includes 0) share a rank; paired rows "
               "are upper bounds ranked among themselves; reference rows are not ranked.")
    body = "\n".join(esc(line) if line != r"\midrule" else line for line in lines)
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{tab:{task}}}",
        r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{ll{'c' * (len(header) - 2)}}}", r"\toprule",
        " & ".join(esc(h) for h in header) + r" \\", r"\midrule", body, r"\bottomrule", r"\end{tabular}}",
        r"\end{table}", ""])


def convergence(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method): validation `nps_dist` and `ssim_gt` (means over seeds) at 3/4 of the budget and at its end,
    and whether the method is still improving there (REL_CHANGE, ABS_CHANGE)."""
    curve = df[(df["split"] == "val") & df["step"].map(lambda v: isinstance(v, int))] if "split" in df else df.iloc[:0]
    rows = []
    for (task, method), g in curve.groupby(["task", "method"], sort=False):
        means = g.groupby("step")[["nps_dist", "ssim_gt"]].mean().sort_index()
        if len(means) < 4:
            continue
        q3, end = means.iloc[round(0.75 * (len(means) - 1))], means.iloc[-1]
        realism = (q3["nps_dist"] - end["nps_dist"]) / abs(q3["nps_dist"])  # > 0: improved
        fidelity = end["ssim_gt"] - q3["ssim_gt"] if pd.notna(end["ssim_gt"]) else 0.0
        improving = realism > REL_CHANGE or fidelity > ABS_CHANGE
        rows.append(dict(task=task, method=method, seeds=g["seed"].nunique(), steps=int(means.index[-1]),
                         nps_dist_q3=q3["nps_dist"], nps_dist_end=end["nps_dist"], ssim_gt_q3=q3["ssim_gt"],
                         ssim_gt_end=end["ssim_gt"],
                         verdict="still improving" if improving else "flat over the last quarter"))
    return pd.DataFrame(rows)
