"""Records -> tidy DataFrame -> summary tables (pure functions of the DataFrame).

`summary(df)` averages each seed's records over the task's source domains, then reports, per
(dataset, preset, task, method, knob value), the mean over seeds and a 95 % interval that includes test-set
sampling: each record carries the replicates of a subject-level cluster bootstrap (`benchmark.scoring.scorer`, the same
subject draws for every method), and `benchmark.reporting.stats.interval` combines the seeds' spread (Student t, Welch-
Satterthwaite degrees of freedom) with the bootstrap spread of the seed mean, centred on the estimate (`<m>_lo`,
`<m>_hi`; `<m>_ci` is its half-width, shown as ±). Its coverage is checked on a simulation with known truth
(`tests/test_stats.py`). Records without replicates (protocol 1) get the Student-t interval over seeds.

Ranks respect that uncertainty: a row's rank is 1 + the number of rows that are surely better, i.e. whose difference
to it has a 95 % interval entirely on the better side (`benchmark.reporting.stats.difference_ranks`: rows scored on the
same test subjects are compared replicate by replicate, so the subjects' shared difficulty cancels), and rows not surely
apart share a rank. Ranked are the translation methods only;
reference rows (`identity`, "no translation", and `histmatch`) are shown unranked, as the MedShift paper gives
"no translation" no rank. Realism is ranked on two axes, each only by a metric that passed the metric-validity
check on the records' dataset and preset (`benchmark.scoring.validity`; a metric that failed there never ranks):
global statistics (a Fréchet distance of features, FID, else the weight-free FRD, else `nps_dist`) and noise texture
(`nps_flat`). Structure is ranked by the distance of SSIM (src) to its ideal point where the data has exact pairs: a
perfect translation of an aligned scene *is* the aligned real image, so its SSIM to the source is no translation's
SSIM to the aligned image (0.633 on skull-sim `tiny` `sim2real`), not 1, and a higher SSIM (src) means
under-translation (`ssim_src_gap`, `add_structure_gap`; the paper's raw SSIM (src) stays a column, and is the
structure rank where no identity row with SSIM (gt) exists). Fidelity rank by `ssim_gt`; average rank = mean of the
global realism and structure ranks (lower is better).

Records of one protocol version only (`benchmark.protocol.records.PROTOCOL_VERSION`), and one fit per (method, setting,
seed, data): two records of the same point from different run folders are an error naming both.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

import benchmark.reporting.stats as S
from benchmark.reporting.load import (
    GROUP_LABELS,
    GROUPS,
    base_method,
    is_reference,
    method_group,
    method_info,
    split_variants,
    test_records,
)
from benchmark.reporting.stats import Sample
from benchmark.scoring.declarations import METRICS, MetricSpec
from benchmark.scoring.metrics import mean_ci_over_seeds

GROUP = ["dataset", "preset", "task", "method", "knob", "knob_value"]


#: Table columns, from the declarations: realism, then fidelity, then structure, each in declaration order.
TABLE_METRICS = [m for axis in ("realism", "fidelity", "structure") for m, spec in METRICS.items()
                 if spec.axis == axis and spec.in_table]


EXTRA = ["nfe", "sec_per_image", "train_sec", "n_params"]
#: Averaged like the cost columns (mean and seed spread) but shown only where they mean something: a distilled
#: student's mean per-image PSNR to its teacher's translations, the round trip's SSIM at the chosen knob value
#: (`distillation.md`).
AGREEMENT = ["teacher_psnr", "roundtrip_ssim"]


#: The structure axis's distance to its ideal point (module docstring): derived by the summary, not recorded.
STRUCTURE_GAP = "ssim_src_gap"
#: Columns the summary derives from the records' metrics (ranked and formatted like a declared metric).
DERIVED = {STRUCTURE_GAP: MetricSpec(STRUCTURE_GAP, "structure", False, None, "|SSIM (src) − ideal|", True, "src")}
#: The realism axes, each ranked by the first of its metrics that every row has and that passed validity.
REALISM_RANK_ORDER = ["fid", "frd", "nps_dist"]
TEXTURE_RANK_ORDER = ["nps_flat"]
#: rank column -> the metrics it may be ranked by, in order of preference (realism axes: validated ones only)
RANKS = {"realism_rank": REALISM_RANK_ORDER, "texture_rank": TEXTURE_RANK_ORDER,
         "structure_rank": [STRUCTURE_GAP, "ssim_src"], "fidelity_rank": ["ssim_gt"]}
VALIDATED = ("realism_rank", "texture_rank")


def spec_of(metric: str) -> MetricSpec:
    """The declaration of a recorded metric or of a derived column."""
    return METRICS[metric] if metric in METRICS else DERIVED[metric]


#: The summary's column of each row's `stats.Sample` per metric (what its interval and its paired comparisons are
#: computed from); never written to a file.
SAMPLES = "_samples"
UTILITY_LABEL = "Utility (Dice) ↑"
#: downstream utility's column in a summary that has it (`utility_tables.attach_utility`)
UTILITY = "dice"


def label_of(metric: str) -> str:
    """A metric's column and axis label with its direction, e.g. "SSIM (gt) ↑"."""
    if metric == UTILITY:
        return UTILITY_LABEL
    return f"{spec_of(metric).label} {spec_of(metric).arrow}"


def most_chosen(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group of `keys`, the row of the knob value most of its seeds' validation chose (`val_choice`, the share
    of seeds x sources; the first row on a tie or without a choice)."""
    if table.empty:
        return table
    share = table["val_choice"].astype(float).fillna(-1.0) if "val_choice" in table else pd.Series(-1.0, table.index)
    idx = share.groupby([table[k] for k in keys], sort=False).idxmax()
    return table.loc[idx.to_numpy()]


def seed_replicates(g: pd.DataFrame, metric: str) -> np.ndarray | None:
    """(n_seeds, B) bootstrap replicates of `metric` per seed (means over sources), or None if any record lacks them."""
    if "boot" not in g:
        return None
    per_seed = []
    for _, s in g.groupby("seed", sort=True):
        reps = [b.get(metric) if isinstance(b, dict) else None for b in s["boot"]]
        if any(r is None for r in reps) or len({len(r) for r in reps}) != 1:
            return None
        per_seed.append(np.mean(np.asarray(reps, np.float64), axis=0))
    return np.stack(per_seed)


def resampled_seed_means(replicates: np.ndarray, seed: int = 0) -> np.ndarray:
    """(B,) replicate b = the mean over seeds drawn with replacement (the same draws for every row with as many
    seeds) of their b-th subject-bootstrap replicates. Used only for the percentile interval of utility's gap-closed
    ratio, as before `benchmark.reporting.stats`: a ratio has no interval there yet, and with 3 seeds this one
    understates the seeds' part (`tests/test_stats.py` measures 75 % coverage for a mean where seeds dominate).

    Args:
        replicates: (n_seeds, B).
    """
    n_seeds, n_boot = replicates.shape
    pick = np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))
    return replicates[pick, np.arange(n_boot)[:, None]].mean(axis=1)


def summary(df: pd.DataFrame, valid_realism: dict | None = None) -> pd.DataFrame:
    """One row per (dataset, preset, task, method, knob value) of the test records: `<m>` mean, `<m>_lo/_hi`
    interval, `<m>_ci`, ranks, and `val_choice` (the fraction of the method's seeds x sources on the task whose
    validation chose it).

    Args:
        valid_realism: {(dataset, preset): realism metrics that passed `benchmark.scoring.validity`}; realism is ranked
            only by those where the check was run.
    """
    df = test_records(df)
    metrics = [m for m in TABLE_METRICS + EXTRA + AGREEMENT if m in df.columns]
    per_seed = df.groupby(GROUP + ["seed"], sort=False, dropna=False)[metrics].mean(numeric_only=False)
    per_seed = per_seed.apply(pd.to_numeric, errors="coerce").reset_index()
    records = {k: g for k, g in df.groupby(GROUP, sort=False, dropna=False)}
    # the share of a row's val_choice counts every seed x source of its method and task, not only those evaluated
    # at this knob value (a value beyond the grid's edge exists only where a seed's validation went there)
    # (records without a source column, e.g. an external tool's, count seeds only)
    point = [c for c in ("seed", "source") if c in df.columns]
    points = df.groupby(GROUP[:-1], sort=False, dropna=False).apply(
        lambda g: len(g[point].drop_duplicates()), include_groups=False).to_dict()
    rows = []
    for key, g in per_seed.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key, strict=True), n_seeds=len(g))
        if "val_choice" in records[key]:
            row["val_choice"] = float(records[key]["val_choice"].fillna(False).astype(bool).sum()) / points[key[:-1]]
        samples = {}
        for m in metrics:
            mean, half = mean_ci_over_seeds(g[m].to_numpy())
            row[m], row[f"{m}_ci"] = mean, half
            if m not in METRICS:  # cost columns: mean and seed spread only
                continue
            reps = seed_replicates(records[key], m) if np.isfinite(mean) else None
            by_seed = g.sort_values("seed")
            ids = pd.to_numeric(by_seed["seed"], errors="coerce")
            samples[m] = sample = Sample(by_seed[m].to_numpy(np.float64), reps,
                                         tuple(int(x) for x in ids) if ids.notna().all() else None)
            iv = S.interval(sample)
            if not np.isfinite(iv.half):  # one seed without replicates: no spread to show
                iv = S.Interval(mean, mean - half, mean + half, float("nan"))
            row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_ci"] = iv.lo, iv.hi, iv.half
        row[SAMPLES] = samples
        rows.append(row)
    out = add_structure_gap(pd.DataFrame(rows))
    out.attrs["valid_realism"] = valid_realism or {}
    return add_ranks(out)


def validation_choice(df: pd.DataFrame, valid_realism: dict | None = None, variants: bool = False) -> pd.DataFrame:
    """One row per (dataset, preset, task, method): each seed's test records at the knob value *its own* validation
    chose, aggregated as `summary` aggregates one knob value (mean over seeds, interval over test subjects and seeds),
    and ranked among themselves: DomainBed's reading of a selection made per seed, where the seeds' choices differ.
    `knob_value` names the choices in seed order ("0.3/0.15/0.45"; a seed whose sources chose differently "0.3+0.45");
    the configured methods only (no `--set` variants) unless `variants`. Empty without validation choices."""
    recs = test_records(df)
    if recs.empty or "val_choice" not in recs:
        return pd.DataFrame()
    recs = recs.assign(knob=recs["knob"].fillna(""))
    chosen = recs["val_choice"].fillna(False).astype(bool)
    recs = recs[chosen & (recs["setting"].fillna("") == "") if "setting" in recs and not variants else chosen]
    if recs.empty:
        return pd.DataFrame()

    def name(value) -> str:
        return "" if value is None or (isinstance(value, float) and np.isnan(value)) or value == "" else f"{value:g}" \
            if isinstance(value, (int, float)) else str(value)

    labels = {}
    for key, g in recs.groupby(GROUP[:-1], sort=False, dropna=False):
        per_seed = ["+".join(dict.fromkeys(name(v) for v in s["knob_value"])) for _, s in g.groupby("seed", sort=True)]
        labels[key] = "/".join(per_seed) if any(per_seed) else ""
    knob = [labels[k] for k in recs[GROUP[:-1]].itertuples(index=False, name=None)]
    return summary(recs.assign(knob_value=knob, val_choice=True), valid_realism)


def add_structure_gap(out: pd.DataFrame) -> pd.DataFrame:
    """`ssim_src_gap` per row: the mean over seeds of |SSIM (src) - ideal|, ideal = no translation's SSIM (gt) on the
    same test scenes (the `identity` row of the row's dataset, preset and task; its seeds are identical), with the
    interval and `stats.Sample` the ranks read (replicate b: |SSIM (src) replicate b - ideal replicate b|, the same
    subject draw). NaN where the task has no identity row with SSIM (gt): no exact pairs, no known ideal."""
    out = out.copy()
    for col in ("", "_lo", "_hi", "_ci"):
        out[STRUCTURE_GAP + col] = np.nan
    if out.empty or SAMPLES not in out:
        return out
    for _, part in out.groupby(["dataset", "preset", "task"], sort=False):
        ident = part[(part["method"] == "identity") & part.get("ssim_gt", pd.Series(np.nan, index=part.index)).notna()]
        ideal = ident.iloc[0][SAMPLES].get("ssim_gt") if len(ident) else None
        if ideal is None or not np.isfinite(ideal.mean):
            continue
        ideal_reps = ideal.seed_mean_replicates()
        for i, r in part.iterrows():
            src = r[SAMPLES].get("ssim_src")
            if src is None or not np.isfinite(src.mean):
                continue
            reps = None
            if src.replicates is not None and ideal_reps is not None and src.replicates.shape[1] == len(ideal_reps):
                reps = np.abs(np.asarray(src.replicates, np.float64) - ideal_reps[None, :])
            gap = Sample(np.abs(src.seeds - ideal.mean), reps, src.ids)
            iv = S.interval(gap)
            out.at[i, STRUCTURE_GAP] = gap.mean
            out.at[i, f"{STRUCTURE_GAP}_lo"], out.at[i, f"{STRUCTURE_GAP}_hi"] = iv.lo, iv.hi
            out.at[i, f"{STRUCTURE_GAP}_ci"] = iv.half if np.isfinite(iv.half) else 0.0
            r[SAMPLES][STRUCTURE_GAP] = gap
    return out


def structure_ideal(table: pd.DataFrame, dataset: str, preset: str, task: str) -> float | None:
    """The ideal SSIM (src) of a task (no translation's SSIM (gt)), or None without exact pairs."""
    ident = table[(table["dataset"] == dataset) & (table["preset"] == preset) & (table["task"] == task)
                  & (table["method"] == "identity")]
    value = ident["ssim_gt"].iloc[0] if len(ident) and "ssim_gt" in ident else np.nan
    return float(value) if np.isfinite(value) else None


def realism_metric(df: pd.DataFrame, valid: list[str] | None = None,
                   order: list[str] = REALISM_RANK_ORDER) -> str | None:
    """The realism metric to rank and plot by: the first of `order` that every row has (and, given the
    metric-validity results `valid`, that passed them; a metric that failed never ranks)."""
    return next((m for m in order if m in df and df[m].notna().all() and (valid is None or m in valid)), None)


def overlap_rank(mean: pd.Series, lo: pd.Series, hi: pd.Series, higher_is_better: bool) -> pd.Series:
    """1 + the number of rows whose interval lies entirely on the better side of this row's interval."""
    if lo.isna().all():
        lo, hi = mean, mean
    lo, hi = lo.fillna(mean), hi.fillna(mean)
    better = [(lo > h).sum() if higher_is_better else (hi < low).sum() for low, h in zip(lo, hi, strict=True)]
    return pd.Series(1 + np.asarray(better, float), index=mean.index)


def rank_rows(part: pd.DataFrame, metric: str) -> pd.Series:
    """Ranks of `part`'s rows by `metric`: from the interval of each pair's difference where every row has its
    `stats.Sample` (rows on the same test subjects are compared replicate by replicate: `stats.difference_ranks`),
    else from overlapping marginal intervals (`overlap_rank`)."""
    higher = spec_of(metric).higher_is_better
    samples = [s.get(metric) if isinstance(s, dict) else None for s in part.get(SAMPLES, [None] * len(part))]
    if samples and all(s is not None for s in samples):
        return pd.Series(S.difference_ranks(samples, higher), index=part.index)
    lo, hi = (part.get(f"{metric}{s}", pd.Series(np.nan, index=part.index)) for s in ("_lo", "_hi"))
    return overlap_rank(part[metric], lo, hi, higher)


def add_ranks(out: pd.DataFrame) -> pd.DataFrame:
    """Realism (global and texture), structure and fidelity ranks (rows not surely apart share a rank) and the
    average of the global realism and structure ranks, within each (dataset, preset, task) and group: the unpaired
    methods among themselves, the paired upper bounds among themselves (never mixed into the unpaired ranks);
    reference rows stay unranked. `<axis>_by` names the metric each rank was made by; `realism_validated` is False
    where the validity check was not run on the records' preset (its realism metrics ranked unchecked)."""
    out = out.copy()
    if out.empty:
        return out
    by = {col: col.replace("_rank", "_by") for col in RANKS}
    for col in list(RANKS) + ["avg_rank"]:
        out[col] = np.nan
    for col in [*by.values(), "realism_validated"]:
        out[col] = None
    out["group"] = out["method"].map(method_group)
    ranked = out[out["group"] != "reference"]
    validity = out.attrs.get("valid_realism", {})
    for (dataset, preset, _, _), part in ranked.groupby(["dataset", "preset", "task", "group"], sort=False):
        valid = validity.get((dataset, preset))
        for col, order in RANKS.items():
            metric = realism_metric(part, valid if col in VALIDATED else None, order)
            if metric is None:
                continue
            out.loc[part.index, col] = rank_rows(part, metric)
            out.loc[part.index, by[col]] = metric
            if col in VALIDATED:
                out.loc[part.index, "realism_validated"] = valid is not None
    out["avg_rank"] = (out["realism_rank"] + out["structure_rank"]) / 2
    return out


def format_cell(mean: float, half: float, metric: str, digits: int | None = None) -> str:
    """"mean ± half" in the metric's precision (or `digits`); "n/a" for a missing or non-finite mean."""
    if mean is None or not np.isfinite(mean):
        return "n/a"
    digits = digits if digits is not None else 1 if metric in ("psnr_src", "psnr_gt", "fid", "train_sec") else 3
    if metric == "n_params":
        return f"{mean / 1e6:.2f}M"
    if metric == "sec_per_image":
        return f"{mean * 1e3:.2f}ms"
    text = f"{mean:.{digits}f}"
    if half and np.isfinite(half) and half > 0:
        text += f" ± {half:.{digits}f}"
    return text


def markdown(df: pd.DataFrame, **kw) -> str:
    """`df` as a GitHub markdown table (`DataFrame.to_markdown`, `kw` passed on), a "|" in a header or a text cell
    (the structure gap's "|SSIM (src) − ideal|") escaped as "\\|": unescaped, it ends the cell, the header has more
    cells than the delimiter row, and the table does not render."""
    def escape(value):
        return value.replace("|", "\\|") if isinstance(value, str) else value

    return df.rename(columns=lambda c: escape(str(c))).map(escape).to_markdown(**kw)


def formatted(table: pd.DataFrame, tex: bool = False) -> pd.DataFrame:
    """Human table: arrows in headers, mean ± CI, best value per task in bold."""
    shown = [m for m in TABLE_METRICS + list(DERIVED) if m in table and table[m].notna().any()]
    rows = []
    table = ordered(table)
    for _, r in table.iterrows():
        knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "–"
        row = {"task": r["task"], "group": GROUP_LABELS[method_group(r["method"])], "method": r["method"], "knob": knob}
        if "n_seeds" in table:
            row["seeds"] = f"{r['n_seeds']:g}"
        if "val_choice" in table and table["val_choice"].notna().any():
            row["val choice"] = "" if pd.isna(r["val_choice"]) else f"{r['val_choice']:.0%}"
        for m in shown:
            cell = format_cell(r[m], r.get(f"{m}_ci"), m)
            # the best value among the rows a reader compares (unpaired methods and references, not the bounds)
            part = table[(table["task"] == r["task"]) & (table["method"].map(method_group) != "paired")][m]
            best = part.max() if spec_of(m).higher_is_better else part.min()
            if np.isfinite(r[m]) and r[m] == best and part.notna().sum() > 1 and method_group(r["method"]) != "paired":
                cell = f"\\textbf{{{cell}}}" if tex else f"**{cell}**"
            row[label_of(m)] = cell
        if "dice" in table and table["dice"].notna().any():
            row[UTILITY_LABEL] = "–" if pd.isna(r["dice"]) else format_cell(r["dice"], r["dice_ci"], "dice")
        for m in ("realism_rank", "texture_rank", "structure_rank", "fidelity_rank", "avg_rank", "utility_rank"):
            if m == "utility_rank" and not ("dice" in table and table["dice"].notna().any()):
                continue
            if m in table and table[m].notna().any():  # an axis no row could be ranked on: no column
                unranked = "ref." if is_reference(r["method"]) else ""
                row[m.replace("_", " ")] = unranked if pd.isna(r[m]) else f"{r[m]:g}"
        for m in EXTRA:
            if m in table:
                row[m] = format_cell(r[m], 0, m)
        rows.append(row)
    return pd.DataFrame(rows)


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by task, then group (unpaired, paired, reference), keeping the order within a group."""
    if table.empty or "task" not in table:
        return table
    key = table["method"].map(lambda m: GROUPS.index(method_group(m)))
    tasks = {t: i for i, t in enumerate(dict.fromkeys(table["task"]))}
    return table.assign(_t=table["task"].map(tasks), _g=key).sort_values(["_t", "_g"], kind="stable").drop(
        columns=["_t", "_g"])


def headline(table: pd.DataFrame, variants: bool = False) -> pd.DataFrame:
    """Rows at each method's table grid only, ranked among themselves (curve values are for the figures).

    Args:
        variants: False: each method as configured (no `--set`/`--max-steps` variants). True: the methods that
            have variants, each with its configured rows first and then its variants' rows.
    """
    def on_grid(row) -> bool:
        info = method_info(row["method"])  # a variant has its method's grid
        grid = ("",) if not info or info.get("knob") is None else tuple(info["knob_grid"])
        chosen = row.get("val_choice")  # a value beyond the grid's edge that validation chose (protocol 3)
        return row["knob_value"] in grid or (chosen is not None and pd.notna(chosen) and chosen > 0)

    configured, with_variants = split_variants(table[table.apply(on_grid, axis=1)])

    def ranked(part: pd.DataFrame) -> pd.DataFrame:
        part = part.reset_index(drop=True)
        part.attrs["valid_realism"] = table.attrs.get("valid_realism", {})
        return add_ranks(part)

    if not variants:
        return ranked(configured)
    order = with_variants.assign(_base=with_variants["method"].map(base_method))
    order = order.assign(_variant=order["method"] != order["_base"])
    order = order.sort_values(["task", "_base", "_variant", "method"], kind="stable")
    return ranked(order.drop(columns=["_base", "_variant"]))
