"""Downstream utility (a segmenter trained on translated images, tested on real ones: `benchmark.orchestration.utility`)
as tables, its rank correlation with the realism metrics, and the paired gap (what unpaired translation costs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import benchmark.reporting.stats as S
from benchmark.protocol.records import atomic_write
from benchmark.reporting.load import GROUP_LABELS, GROUPS, base_method, dataset_name, method_group, test_records
from benchmark.reporting.stats import Sample
from benchmark.reporting.tables import (
    TABLE_METRICS,
    UTILITY_LABEL,
    format_cell,
    markdown,
    overlap_rank,
    resampled_seed_means,
    seed_replicates,
)
from benchmark.scoring.declarations import METRICS

#: The utility's reference rows besides the methods' own: the segmenter trained on the target's real images.
ORACLE = "oracle"




def load_utility(results_dir: Path) -> pd.DataFrame:
    """Utility records (`benchmark.orchestration.utility`:
    `results/utility/<dataset>-<preset>/<task>/<method>/seed<k>.json`)."""
    import json

    files = sorted(Path(results_dir).glob("utility/*/*/*/seed*.json"))
    records = [json.loads(f.read_text()) for f in files]
    for r in records:  # written before skull-sim v3 (no generator version recorded): the v2 data, now skull-sim-v2
        r["dataset"] = dataset_name(r.get("dataset"), r.get("generator_version"))
        if r.get("setting"):  # a fit at another budget is its own row, named as the records name it
            r["method"] = f"{r['method']} ({r['setting']})"
    return pd.DataFrame(records)


def utility_group(method: str) -> str:
    return "reference" if method == ORACLE else method_group(method)


def _knob_label(g: pd.DataFrame) -> str:
    """The knob values the seeds' validation chose, e.g. "tau=0.3 (2/3), 0.45 (1/3)"."""
    if not g["knob"].iloc[0]:
        return "–"
    counts = g["knob_value"].value_counts()
    parts = [f"{v:g} ({c}/{len(g)})" if len(counts) > 1 else f"{v:g}" for v, c in counts.items()]
    return f"{g['knob'].iloc[0]}=" + ", ".join(parts)


#: A gap-closed ratio is shown only where the gap it divides by (oracle - no translation) is measured: Fieller's
#: criterion g = (t * se / gap)^2 = (half-width / gap)^2 below 0.05 (Finney's rule for when a ratio's denominator
#: is known well enough for the ratio and its delta-method interval to mean anything; it implies the 95 % interval
#: excludes 0). A smaller or less certain gap makes the ratio a quotient of noise (a dose gap of +0.004 [+0.003,
#: +0.006] on `tiny` gave ratios of -1495 %).
FIELLER_G = 0.05


def gap_is_measured(gap) -> bool:
    """Whether the oracle - no translation interval (`stats.Interval`) is large against its uncertainty
    (Fieller's g < `FIELLER_G`)."""
    return bool(gap.estimate > 0) and bool((gap.half / gap.estimate) ** 2 < FIELLER_G)


def utility_summary(udf: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, preset, task, method): mean Dice and per-structure Dice over seeds with the combined
    seed-and-subject interval, the fraction of the gap between no translation (`identity`) and the oracle that the
    method closes (with its interval from the same paired replicates; undefined, with `gap_note` saying why, on a task
    where the oracle's Dice minus no translation's is not measured well enough to divide by, `gap_is_measured`),
    and the utility rank (overlapping intervals share a rank; unpaired and paired
    methods ranked apart; identity, histmatch and the oracle unranked)."""
    if udf.empty:
        return pd.DataFrame()
    metrics = ["dice"] + sorted(c for c in udf.columns if c.startswith("dice_") and not c.endswith(("_lo", "_hi")))
    rows, reps_of = [], {}
    for key, g in udf.groupby(["dataset", "preset", "task", "method"], sort=False):
        row = dict(zip(["dataset", "preset", "task", "method"], key, strict=True), n_seeds=g["seed"].nunique(),
                   knob=_knob_label(g), group=utility_group(key[3]),
                   knob_values=tuple(dict.fromkeys(g["knob_value"])) if g["knob"].iloc[0] else ())
        for m in metrics:
            per_seed = g.groupby("seed", sort=True)[m].mean()
            row[m] = float(per_seed.mean())
            sample = Sample(per_seed.to_numpy(np.float64), seed_replicates(g, m))
            iv = S.interval(sample)
            row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_ci"] = iv.lo, iv.hi, iv.half
            if m == "dice":
                reps_of[key] = sample
        row["seg_val_dice"] = float(g["seg_val_dice"].mean())
        row["translate_sec"] = float(g["translate_sec"].mean())
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("gap_closed", "gap_closed_lo", "gap_closed_hi", "utility_rank"):
        out[col] = np.nan
    out["gap_note"] = ""
    for (dataset, preset, task), part in out.groupby(["dataset", "preset", "task"], sort=False):
        low, high = (dataset, preset, task, "identity"), (dataset, preset, task, ORACLE)
        if low in reps_of and high in reps_of:
            lo_mean, hi_mean = (part.loc[part["method"] == k[3], "dice"].iloc[0] for k in (low, high))
            gap = S.difference(reps_of[high], reps_of[low])
            measured = gap_is_measured(gap)  # no gap to close, or one too uncertain to divide by (FIELLER_G)
            if not measured:
                out.loc[part.index, "gap_note"] = (f"gap too small to divide by: oracle - no translation = "
                                                   f"{hi_mean - lo_mean:+.3f} [{gap.lo:+.3f}, {gap.hi:+.3f}]")
            for i, r in part.iterrows() if measured else ():
                out.loc[i, "gap_closed"] = (r["dice"] - lo_mean) / (hi_mean - lo_mean)
                key = (dataset, preset, task, r["method"])
                if key in reps_of and S.paired(reps_of[key], reps_of[low]) and S.paired(reps_of[high], reps_of[low]):
                    mine, none, oracle = (resampled_seed_means(reps_of[k].replicates) for k in (key, low, high))
                    with np.errstate(all="ignore"):
                        ratio = (mine - none) / (oracle - none)
                    ratio = ratio[np.isfinite(ratio)]
                    if len(ratio) > 1:
                        out.loc[i, "gap_closed_lo"], out.loc[i, "gap_closed_hi"] = np.quantile(ratio, [0.025, 0.975])
        # ranked: the methods as configured (a fit at another budget is read in compute.md, beside its method)
        configured = part["method"] == part["method"].map(base_method)
        for _, ranked in part[(part["group"] != "reference") & configured].groupby("group", sort=False):
            keys = [(dataset, preset, task, m) for m in ranked["method"]]
            if all(k in reps_of for k in keys):  # from the interval of each pair's difference, as the main tables
                out.loc[ranked.index, "utility_rank"] = S.difference_ranks([reps_of[k] for k in keys], True)
            else:
                out.loc[ranked.index, "utility_rank"] = overlap_rank(ranked["dice"], ranked["dice_lo"],
                                                                     ranked["dice_hi"], higher_is_better=True)
    order = {g: i for i, g in enumerate(GROUPS)}
    out = out.assign(_g=out["group"].map(order), _d=-out["dice"]).sort_values(["dataset", "preset", "task", "_g", "_d"])
    return out.drop(columns=["_g", "_d"]).reset_index(drop=True)


def formatted_utility(usum: pd.DataFrame) -> pd.DataFrame:
    """Human utility table: mean Dice ± half-width, the gap closed, per-structure Dice, rank."""
    structures = [c for c in usum.columns if c.startswith("dice_") and not c.endswith(("_lo", "_hi", "_ci"))]
    rows = []
    for _, r in usum.iterrows():
        row = {"task": r["task"], "group": "reference" if r["method"] == ORACLE else GROUP_LABELS[r["group"]],
               "method": "oracle (real images)" if r["method"] == ORACLE else r["method"], "setting": r["knob"],
               "seeds": f"{r['n_seeds']:g}", UTILITY_LABEL: format_cell(r["dice"], r["dice_ci"], "dice")}
        gap = r["gap_closed"]
        note = f"n/a ({r['gap_note']})" if r.get("gap_note") else "n/a"
        row["gap closed"] = note if pd.isna(gap) else f"{gap:.0%}" + (
            "" if pd.isna(r["gap_closed_lo"]) else f" [{r['gap_closed_lo']:.0%}, {r['gap_closed_hi']:.0%}]")
        for c in structures:
            row[c.removeprefix("dice_").replace("_", " ")] = format_cell(r[c], 0, c)
        row["utility rank"] = "ref." if pd.isna(r["utility_rank"]) else f"{r['utility_rank']:g}"
        rows.append(row)
    return pd.DataFrame(rows)


def attach_utility(table: pd.DataFrame, usum: pd.DataFrame, own_choices: bool = False) -> pd.DataFrame:
    """The summary with each method's utility (`dice`, `dice_lo/_hi/_ci`, `utility_rank`) on the row of the knob
    value its utility was measured at (the one its seeds' validation chose); where the seeds chose different values,
    on no row of a per-value table (there is none the utility belongs to), and with `own_choices` (a table of each
    method at each seed's own choice, `tables.validation_choice`: one row per method) on the method's row. Other rows
    and methods without utility records stay empty."""
    table = table.copy()
    cols = ("dice", "dice_lo", "dice_hi", "dice_ci", "utility_rank")
    for col in cols:
        table[col] = np.nan
    if usum.empty:
        return table
    for _, u in usum.iterrows():
        rows = table[(table["dataset"] == u["dataset"]) & (table["preset"] == u["preset"])
                     & (table["task"] == u["task"]) & (table["method"] == u["method"])]
        values = u.get("knob_values", ())
        if not own_choices and len(rows) > 1:
            if not isinstance(values, tuple) or len(values) != 1:
                continue
            rows = rows[[_same_value(v, values[0]) for v in rows["knob_value"]]]
        if len(rows) != 1:
            continue
        for col in cols:
            table.loc[rows.index[0], col] = u[col]
    return table


def utility_rows(records: pd.DataFrame, usum: pd.DataFrame, valid_realism: dict | None = None) -> pd.DataFrame:
    """Each configured method at the settings its utility was measured at, its image metrics and utility side by side
    (for the correlations and the utility figure): each seed at its own validation choice (`validation_choice`,
    which is what the utility run translated with), or, for records without validation choices, the summary."""
    from benchmark.reporting.tables import summary, validation_choice

    chosen = validation_choice(records, valid_realism)
    if len(chosen):
        return attach_utility(chosen, usum, own_choices=True)
    plain = records[records["method"] == records["method"].map(base_method)]
    return attach_utility(summary(plain, valid_realism), usum)


def _same_value(a, b) -> bool:
    """Two knob values are the same setting (0.3 and 0.30000000000000004 are; "0.3" and 0.3 are)."""
    try:
        return bool(np.isclose(float(a), float(b), rtol=1e-9, atol=1e-12))
    except (TypeError, ValueError):
        return str(a) == str(b)


def utility_correlations(table: pd.DataFrame, metrics: list[str] | None = None, min_methods: int = 4) -> pd.DataFrame:
    """Does an image metric rank the translation methods (unpaired and paired; not the distilled students, copies of
    one of them) as downstream utility does? Per task and metric (default: the table's realism, fidelity and structure
    metrics): Spearman's rank correlation of the metric (sign flipped where lower is better, so +1 = the same order)
    with utility, over the methods at the setting their validation chose (`attach_utility`) that have the metric,
    when there are at least `min_methods`."""
    from scipy.stats import spearmanr

    rows = []
    if "dice" not in table:
        return pd.DataFrame()
    shown = metrics or [m for m in TABLE_METRICS if METRICS[m].axis in ("realism", "fidelity", "structure")]
    headline = table["method"] == table["method"].map(base_method)  # no budget variants (compute.md has those)
    for task, part in table[table["dice"].notna() & headline].groupby("task", sort=False):
        learned = part[~part["method"].map(method_group).isin(("reference", "distilled"))]
        for m in shown:
            if m not in learned or learned[m].notna().sum() < min_methods:
                continue
            ok = learned[learned[m].notna()]
            sign = 1 if METRICS[m].higher_is_better else -1
            rows.append(dict(task=task, key=m, metric=f"{METRICS[m].label} {METRICS[m].arrow}", axis=METRICS[m].axis,
                             methods=len(ok), spearman_rho=float(spearmanr(sign * ok[m], ok["dice"]).statistic)))
    return pd.DataFrame(rows)


def write_utility(usum: pd.DataFrame, out_dir: Path, table: pd.DataFrame | None = None) -> list[Path]:
    """`utility.md` and `utility.csv` (nothing when there are no utility records); with the summary `table` (utility
    attached), the metrics' rank correlations with utility under the table."""
    usum = usum[usum["method"] == usum["method"].map(base_method)] if len(usum) else usum  # budgets: compute.md
    if usum.empty:
        return []
    paths = [out_dir / "utility.csv", out_dir / "utility.md"]
    atomic_write(paths[0], usum.to_csv(index=False, float_format="%.6g"))
    corr = utility_correlations(table) if table is not None else pd.DataFrame()
    corr_md = ("\n\nDo the image metrics rank the translation methods as utility does? Spearman's rho over the methods "
               "(unpaired and paired, at their validation-chosen setting; lower-is-better metrics sign-flipped, so +1 "
               "= the same order):\n\n" + markdown(corr.drop(columns="key"), index=False, floatfmt=".2f") if len(corr)
               else "")
    atomic_write(paths[1], markdown(formatted_utility(usum), index=False) + corr_md + (
        "\n\nDownstream utility (`benchmark/utility.py`): each method translates the task's synthetic training images "
        "at its validation-chosen setting; one fixed segmenter (pix2pix U-Net, the same budget and seed for every "
        "method) learns six skull structures from them and is tested on the target domain's real test images. Mean "
        "Dice over seeds ± half-width of the 95% interval over test subjects (cluster bootstrap) and seeds; gap "
        "closed = (Dice - no translation's) / (the oracle's - no translation's), with its interval from the same "
        "paired replicates (n/a where the gap is too small to divide by: shown only where Fieller's g = "
        "(half-width / gap)^2 of oracle - no translation is below 0.05); the "
        "oracle's segmenter trains on real target images. Rows not surely apart (the 95% interval of "
        "their paired difference includes 0) share a rank; references are not ranked.\n"))
    return paths


GAP_METRICS = ("ssim_gt", "psnr_gt", "frd", "nps_dist", "nps_flat")


def paired_gap(df: pd.DataFrame, configured: pd.DataFrame) -> pd.DataFrame:
    """What unpaired translation costs against methods that see the answer: per task and metric, the best unpaired
    row against the best paired row of the headline table (`configured`), their difference (paired minus unpaired,
    signed so that > 0 means the paired bound is better) and its 95 % interval (`stats.difference`: the two rows'
    seeds, and their replicates on the same test-subject draws)."""
    tests = test_records(df)
    rows = []
    for task, part in configured.groupby("task", sort=False):
        for metric in GAP_METRICS:
            if metric not in part or part[metric].isna().all():
                continue
            sign = 1 if METRICS[metric].higher_is_better else -1
            best = {}
            for group in ("unpaired", "paired"):
                g = part[(part["group"] == group) & part[metric].notna()]
                if len(g):
                    best[group] = g.loc[(sign * g[metric]).idxmax()]
            if len(best) < 2:
                continue
            samples = []
            for r in (best["paired"], best["unpaired"]):
                recs = tests[(tests["task"] == task) & (tests["method"] == r["method"])
                             & (tests["knob_value"].astype(str) == str(r["knob_value"]))]
                per_seed = recs.groupby("seed", sort=True)[metric].mean()
                samples.append(Sample(per_seed.to_numpy(np.float64), seed_replicates(recs, metric)))
            diff = sign * (best["paired"][metric] - best["unpaired"][metric])
            d = S.difference(*samples)
            lo, hi = sorted((sign * d.lo, sign * d.hi))
            knob = lambda r: r["method"] + (f" ({r['knob']}={r['knob_value']})" if r["knob"] else "")  # noqa: E731
            rows.append(dict(task=task, metric=f"{METRICS[metric].label} {METRICS[metric].arrow}",
                             best_unpaired=(f"{knob(best['unpaired'])}: "
                                            f"{format_cell(best['unpaired'][metric], 0, metric)}"),
                             best_paired=f"{knob(best['paired'])}: {format_cell(best['paired'][metric], 0, metric)}",
                             advantage_of_pairs=diff, lo=lo, hi=hi))
    return pd.DataFrame(rows)
