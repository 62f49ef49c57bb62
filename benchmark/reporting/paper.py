"""The paper's Table 1 (LaTeX, one per task: each method at its headline knob value, the MedShift paper's columns),
the convergence table (does a method still improve on validation at the end of its budget), the two checkpoint rules
side by side and the sampling choice (every sampling candidate's validation scores)."""
from __future__ import annotations

import numpy as np
import pandas as pd

import benchmark.reporting.stats as S
from benchmark.reporting.load import GROUPS, method_group, method_info
from benchmark.reporting.stats import Sample
from benchmark.reporting.tables import TABLE_METRICS, ordered
from benchmark.scoring.declarations import METRICS

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
               "are upper bounds ranked among themselves; reference rows are not ranked."
               + (" External rows were translated outside the suite on their own budget and are ranked among "
                  "themselves." if (part["method"].map(method_group) == "external").any() else ""))
    body = "\n".join(esc(line) if line != r"\midrule" else line for line in lines)
    return "\n".join([
        r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{tab:{task}}}",
        r"\resizebox{\linewidth}{!}{%", rf"\begin{{tabular}}{{ll{'c' * (len(header) - 2)}}}", r"\toprule",
        " & ".join(esc(h) for h in header) + r" \\", r"\midrule", body, r"\bottomrule", r"\end{tabular}}",
        r"\end{table}", ""])


#: A learning curve's verdict over the last quarter of the budget, per metric, from the 95 % interval of the change
#: between 3/4 of the budget and its end (over seeds and the validation subjects, `stats.difference`, paired
#: replicate by replicate): "improving" when the change is surely an improvement and larger than the threshold
#: (REL_CHANGE of the realism value, ABS_CHANGE of SSIM (gt)); "worsening" when it is surely a loss larger than the
#: threshold; "flat" when the whole interval lies within the threshold either way; "undecided" otherwise (the seeds
#: and subjects cannot tell). The curve is "still improving" when one metric improves and none worsens, "past its
#: best" when one worsens and none improves, "trading" when one improves while the other worsens, "flat" when both
#: are flat.
REL_CHANGE, ABS_CHANGE = 0.05, 0.01


def _change(g: pd.DataFrame, step_a, step_b, metric: str):
    """The interval of metric(step_b) - metric(step_a) over the seeds (each the mean over its sources)."""
    from benchmark.reporting.tables import seed_replicates

    samples = []
    for step in (step_a, step_b):
        at = g[g["step"] == step]
        per_seed = at.groupby("seed", sort=True)[metric].mean()
        samples.append(Sample(per_seed.to_numpy(np.float64), seed_replicates(at, metric)))
    if not all(np.isfinite(s.mean) for s in samples):
        return None
    return S.difference(samples[1], samples[0])


def change_verdict(change, threshold: float, lower_is_better: bool) -> str:
    """"improving", "worsening", "flat" or "undecided": a change (`stats.difference`) against its threshold, as the
    comment above REL_CHANGE says (also `compute.verdicts`' rule between budgets)."""
    if change is None or not np.isfinite(change.lo):
        return "undecided"
    lo, hi = (-change.hi, -change.lo) if lower_is_better else (change.lo, change.hi)  # > 0: improved
    if lo > 0 and (lo + hi) / 2 > threshold:
        return "improving"
    if hi < 0 and -(lo + hi) / 2 > threshold:
        return "worsening"
    if -threshold < lo and hi < threshold:
        return "flat"
    return "undecided"


def _curve_verdict(realism: str, fidelity: str) -> str:
    """A learning curve's verdict from its realism and fidelity verdicts (see REL_CHANGE)."""
    both = (realism, fidelity)
    if "improving" in both and "worsening" in both:
        return f"trading (realism {realism}, fidelity {fidelity})"
    if "improving" in both:
        return "still improving"
    if "worsening" in both:
        return "past its best (worsening over the last quarter)"
    if both == ("flat", "flat"):
        return "flat over the last quarter"
    return "undecided (within the seeds' and subjects' noise)"


def convergence(df: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method): validation `nps_dist` and `ssim_gt` (means over seeds) at 3/4 of the budget and at its end,
    the interval of each change, and the verdict (REL_CHANGE, ABS_CHANGE)."""
    curve = df[(df["split"] == "val") & df["step"].map(lambda v: isinstance(v, int))] if "split" in df else df.iloc[:0]
    rows = []
    for (task, method), g in curve.groupby(["task", "method"], sort=False):
        means = g.groupby("step")[["nps_dist", "ssim_gt"]].mean().sort_index()
        if len(means) < 4:
            continue
        q3_step, end_step = means.index[round(0.75 * (len(means) - 1))], means.index[-1]
        q3, end = means.loc[q3_step], means.loc[end_step]
        realism = _change(g, q3_step, end_step, "nps_dist")
        fidelity = _change(g, q3_step, end_step, "ssim_gt") if pd.notna(end["ssim_gt"]) else None
        verdicts = (change_verdict(realism, REL_CHANGE * abs(q3["nps_dist"]), True),
                    change_verdict(fidelity, ABS_CHANGE, False) if fidelity is not None else "flat")
        verdict = _curve_verdict(*verdicts)

        def iv(change):
            return f"[{change.lo:+.3f}, {change.hi:+.3f}]" if change is not None and np.isfinite(change.lo) else "n/a"

        rows.append(dict(task=task, method=method, seeds=g["seed"].nunique(), steps=int(end_step),
                         nps_dist_q3=q3["nps_dist"], nps_dist_end=end["nps_dist"], nps_dist_change=iv(realism),
                         ssim_gt_q3=q3["ssim_gt"], ssim_gt_end=end["ssim_gt"], ssim_gt_change=iv(fidelity),
                         verdict=verdict))
    return pd.DataFrame(rows)


def selections(df: pd.DataFrame) -> pd.DataFrame:
    """Both checkpoint rules side by side, from the learning curves alone: per (task, method), the checkpoint each
    seed's curve selects by validation realism (`validation.checkpoint_metric`) and by validation fidelity
    (`ssim_gt`), and the validation realism and fidelity (means over seeds) at each, beside the rule the run used
    (`TranslationMethod.selection_criterion`: realism for every method since protocol 3; under protocol 2 fidelity for
    the paired upper bounds). Shows how much of a "pairs buy fidelity, not realism" reading the rule makes."""
    from benchmark.protocol.validation import best_checkpoint, checkpoint_metric

    curve = df[(df["split"] == "val") & df["step"].map(lambda v: isinstance(v, int))] if "split" in df else df.iloc[:0]
    rows = []
    for (task, method), g in curve.groupby(["task", "method"], sort=False):
        recs = g.to_dict("records")
        if any(r.get("ssim_gt") is None or pd.isna(r.get("ssim_gt")) for r in recs):
            continue  # no pairs: only the realism rule exists
        realism = checkpoint_metric(recs)
        protocol = int(g["protocol"].max()) if "protocol" in g else 3
        row = dict(task=task, method=method, seeds=g["seed"].nunique(),
                   rule_used="fidelity" if method_group(method) == "paired" and protocol <= 2 else "realism")
        for rule in ("realism", "fidelity"):
            at = []
            for _, s in g.groupby("seed", sort=True):
                step = best_checkpoint(s.to_dict("records"), rule)
                at.append(s[s["step"] == step][[realism, "ssim_gt"]].mean().to_dict() | {"step": step})
            at = pd.DataFrame(at)
            row[f"by_{rule}_steps"] = "/".join(str(int(v)) for v in at["step"])
            row[f"by_{rule}_{realism}"] = at[realism].mean()
            row[f"by_{rule}_ssim_gt"] = at["ssim_gt"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def sampling_choices(df: pd.DataFrame) -> pd.DataFrame:
    """Every sampling candidate a method's runs scored on validation (`validation.sampling_candidates`, at the default
    knob value on the whole validation split): per (task, method, candidate), the validation fidelity (`ssim_gt`) and
    realism (`validation.checkpoint_metric`), means over the task's sources and then over seeds, each seed's fidelity,
    and how many seeds' runs used the candidate (read from their chosen test records' `sampling`). The configured
    methods only (a `--set` variant pins what it sets). Empty without sampling records."""
    from benchmark.protocol.validation import SAMPLING_STEP, checkpoint_metric, sampling_label

    if "split" not in df or "sampling" not in df:
        return pd.DataFrame()
    steps = df["step"].astype(str)
    val = df[(df["split"] == "val") & steps.str.startswith(SAMPLING_STEP + " ")
             & (df.get("setting", pd.Series("", index=df.index)).fillna("") == "")]
    chosen = df[(df["split"] == "test") & df.get("val_choice", pd.Series(False, index=df.index)).fillna(False)
                .astype(bool)]
    rows = []
    for (task, method), g in val.groupby(["task", "method"], sort=False):
        realism = checkpoint_metric(g.to_dict("records"))
        used = chosen[(chosen["task"] == task) & (chosen["method"] == method)]
        used = {seed: {sampling_label(s) for s in u["sampling"] if isinstance(s, dict)}
                for seed, u in used.groupby("seed")}
        for label, c in g.groupby("step", sort=False):
            per_seed = c.groupby("seed", sort=True)[["ssim_gt", realism]].mean()
            rows.append({"task": task, "method": method, "candidate": label[len(SAMPLING_STEP) + 1:],
                         "seeds": len(per_seed), "val_ssim_gt": per_seed["ssim_gt"].mean(),
                         f"val_{realism}": per_seed[realism].mean(),
                         "val_ssim_gt_per_seed": "/".join(f"{v:.3f}" for v in per_seed["ssim_gt"]),
                         "used_by": f"{sum(label in u for u in used.values())}/{len(used)}"})
    return pd.DataFrame(rows)
