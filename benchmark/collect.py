"""Records -> tidy DataFrame -> summary tables (pure functions of the DataFrame).

`summary(df)` averages each seed's records over the task's source domains, then reports, per
(dataset, preset, task, method, knob value), the mean over seeds and a 95 % interval that includes test-set
sampling: each record carries the replicates of a subject-level cluster bootstrap (`benchmark.scorer`, the same
subject draws for every method), and `benchmark.stats.interval` combines the seeds' spread (Student t, Welch-
Satterthwaite degrees of freedom) with the bootstrap spread of the seed mean, centred on the estimate (`<m>_lo`,
`<m>_hi`; `<m>_ci` is its half-width, shown as ±). Its coverage is checked on a simulation with known truth
(`tests/test_stats.py`). Records without replicates (protocol 1) get the Student-t interval over seeds.

Ranks respect that uncertainty: a row's rank is 1 + the number of rows that are surely better, i.e. whose difference
to it has a 95 % interval entirely on the better side (`benchmark.stats.difference_ranks`: rows scored on the same
test subjects are compared replicate by replicate, so the subjects' shared difficulty cancels), and rows not surely
apart share a rank. Ranked are the translation methods only;
reference rows (`identity`, "no translation", and `histmatch`) are shown unranked, as the MedShift paper gives
"no translation" no rank. Realism rank by a Fréchet distance of features (FID, else the weight-free FRD) when every
row has it, else `nps_dist`; structure rank by `ssim_src` (the paper's Table 1); fidelity rank by `ssim_gt`
(skull-sim has exact pairs); average rank = mean of realism and structure ranks (lower is better).

Records of one protocol version only (`benchmark.records.PROTOCOL_VERSION`), and one fit per (method, setting,
seed, data): two records of the same point from different run folders are an error naming both.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import stats as S
from .metrics import METRICS, mean_ci_over_seeds
from .records import atomic_write, read_records
from .stats import Sample

GROUP = ["dataset", "preset", "task", "method", "knob", "knob_value"]
#: Table columns, from the declarations: realism, then fidelity, then structure, each in declaration order.
TABLE_METRICS = [m for axis in ("realism", "fidelity", "structure") for m, spec in METRICS.items()
                 if spec.axis == axis and spec.in_table]
EXTRA = ["nfe", "sec_per_image", "train_sec", "n_params"]
REALISM_RANK_ORDER = ["fid", "frd", "nps_dist"]
RANKS = {"realism_rank": None, "structure_rank": "ssim_src", "fidelity_rank": "ssim_gt"}  # None: realism_metric
#: The summary's column of each row's `stats.Sample` per metric (what its interval and its paired comparisons are
#: computed from); never written to a file.
SAMPLES = "_samples"


def base_method(name: str) -> str:
    """The registered method of a table row: "medshift (guidance=3.0)" -> "medshift" (see `load_records`)."""
    return name.split(" (")[0]


def split_variants(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows of the methods as configured, rows of the methods that have `--set` variants: theirs and the variants')."""
    base = df["method"].map(base_method)
    is_variant = df["method"] != base
    return df[~is_variant], df[base.isin(set(base[is_variant]))]


#: What the tables and figures read of each method (`method_info`), filled from the runs' config.json.
_METHOD_INFO: dict[str, dict] = {}


def method_info(method: str) -> dict:
    """{knob, knob_grid, reference_row, style} of a registered method: from its runs' config.json (written by the
    runner, so building tables needs no torch), else from the method class (runs from before it was recorded)."""
    name = base_method(method)
    if name not in _METHOD_INFO:
        from methods import METHODS

        cls = METHODS.get(name)
        _METHOD_INFO[name] = cls.table_info() if cls is not None else {}
    return _METHOD_INFO[name]


def _read_method_info(files: list[Path]) -> None:
    import json

    for f in files:
        cfg_path = Path(f).parent / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        except ValueError:
            continue
        info, name = cfg.get("method_info"), (cfg.get("spec") or {}).get("method")
        if isinstance(info, dict) and name:
            _METHOD_INFO.setdefault(name, info)


def load_records(results_dir: Path, partial: bool = False, status: list | None = None) -> pd.DataFrame:
    """All records of the finished runs under `results_dir/runs` (with `partial`, of unfinished ones too: a table
    mid-sweep) and `results_dir/records` (the archive, `benchmark.archive`), or a folder of .jsonl fixtures, as one
    DataFrame; `status`: `benchmark.archive.run_status(results_dir)` when the caller already has it.

    Raises:
        ValueError: records of two protocol versions, or two run folders recording the same point.
    """
    from .archive import record_files, run_status

    results_dir = Path(results_dir)
    status = run_status(results_dir) if status is None else status
    files = record_files(results_dir, partial, status) or sorted(results_dir.glob("*.jsonl"))
    rows = [dict(r, _file=str(f)) for f in files for r in read_records(f)]
    _read_method_info(files)
    if not rows:
        left = [(folder, why) for folder, why in status if why is not None]
        if left:
            shown = "; ".join(f"{_rel(f, results_dir)}: {why}" for f, why in left[:3])
            raise FileNotFoundError(f"no finished runs under {results_dir}: {len(left)} left out ({shown}"
                                    f"{'; ...' if len(left) > 3 else ''}); run their command again to finish them, "
                                    "or --partial to include what they hold")
        raise FileNotFoundError(f"no records under {results_dir} (run `python -m benchmark run` first)")
    df = pd.DataFrame(rows)
    df["protocol"] = df["protocol"].fillna(1).astype(int) if "protocol" in df else 1
    if df["protocol"].nunique() > 1:
        old, new = (df[df["protocol"] == v]["_file"].iloc[0] for v in (df["protocol"].min(), df["protocol"].max()))
        raise ValueError(f"records of protocol versions {sorted(map(int, df['protocol'].unique()))} are mixed (e.g. "
                         f"{Path(old).parent} and {Path(new).parent}); re-run the old ones or move them out of "
                         f"{results_dir}")
    for col, default in (("setting", ""), ("split", "test")):
        if col not in df:
            df[col] = default
    df["split"] = df["split"].fillna("test")
    df["step"] = df["step"].astype(object) if "step" in df else None
    df["setting"] = df["setting"].fillna("").astype(str)
    df["knob"] = df["knob"].fillna("")
    df["knob_value"] = df["knob_value"].astype(object).where(df["knob_value"].notna(), "")
    point = ["dataset", "preset", "task", "method", "setting", "seed", "source", "knob_value", "split", "step"]
    key = df[[c for c in point if c in df]].map(str).agg("|".join, axis=1)
    df, key, notes = _live_stands_in(df, key, results_dir)
    dup = df[key.duplicated(keep=False)]
    if len(dup):
        r = dup.iloc[0]
        files = list(dict.fromkeys(df[key == key[dup.index[0]]]["_file"]))
        raise ValueError(f"two fits record {r['method']} seed {r['seed']} {r['task']} {r['source']} "
                         f"knob={r['knob_value']!r}: {Path(files[0]).parent} and {Path(files[-1]).parent}; one fit per "
                         "(method, setting, seed, data): delete one of the folders, or keep fits that differ in how "
                         "they ran (--precision, --accelerator, --devices) under another --results-dir")
    df.attrs["notes"] = notes
    # a variant (--set / --max-steps) is its own row: "medshift (guidance=3.0)"
    df["method"] = df["method"].where(df["setting"] == "", df["method"] + " (" + df["setting"] + ")")
    return df


def _live_stands_in(df: pd.DataFrame, key: pd.Series, results_dir: Path) -> tuple[pd.DataFrame, pd.Series, list[str]]:
    """Drop the archived records of points that a live run (under `runs/`) records too: for a reader they are the
    same (method, setting, seed, data) point, e.g. a newcomer's fit of a method whose fit for more tasks is archived.
    Returns the records, their keys and one line per archived run that a live run stands in for, saying whether their
    test records agree."""
    archived = df["_file"].str.endswith(".jsonl.gz")
    shadowed = archived & key.isin(set(key[~archived]))
    if not shadowed.any():
        return df, key, []
    live_of = dict(zip(key[~archived], df.loc[~archived, "_file"], strict=True))
    notes = []
    for old_file, idx in df[shadowed].groupby("_file").groups.items():
        for new_file in dict.fromkeys(live_of[k] for k in key[idx]):
            both = [i for i in idx if live_of[key[i]] == new_file and df.at[i, "split"] == "test"]
            notes.append(f"{_rel(Path(new_file).parent, results_dir)} stands in for the archived "
                         f"{_rel(Path(old_file).parent, results_dir)}: {_agreement(df, key, both, ~archived)}")
    return df[~shadowed], key[~shadowed], notes


def _rel(folder: Path, results_dir: Path) -> str:
    """`folder` relative to the results folder where it lies under it, for one-line messages."""
    folder = Path(folder)
    return str(folder.relative_to(results_dir)) if folder.is_relative_to(results_dir) else str(folder)


def _agreement(df: pd.DataFrame, key: pd.Series, archived_rows: list, live: pd.Series) -> str:
    """How the archived test records `archived_rows` compare with the live records of the same points."""
    if not archived_rows:
        return "no test points in common"
    live_rows = pd.Series(df.index[live], index=key[live].values)
    metrics = [m for m in METRICS if m in df]
    diffs = []
    for i in archived_rows:
        j = live_rows[key[i]]
        for m in metrics:
            a, b = df.at[i, m], df.at[j, m]
            if all(pd.api.types.is_number(v) and not isinstance(v, bool) and np.isfinite(v) for v in (a, b)):
                diffs.append((abs(float(a) - float(b)), m))
    if not diffs:
        return f"{len(archived_rows)} test points, no metric in common"
    worst, metric = max(diffs)
    verdict = "agree" if worst <= 1e-4 else "differ"
    return f"{len(archived_rows)} test points {verdict} (largest difference {worst:.2g}, {metric})"


def _seed_replicates(g: pd.DataFrame, metric: str) -> np.ndarray | None:
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


def _resampled_seed_means(replicates: np.ndarray, seed: int = 0) -> np.ndarray:
    """(B,) replicate b = the mean over seeds drawn with replacement (the same draws for every row with as many
    seeds) of their b-th subject-bootstrap replicates. Used only for the percentile interval of utility's gap-closed
    ratio, as before `benchmark.stats`: a ratio has no interval there yet, and with 3 seeds this one understates the
    seeds' part (`tests/test_stats.py` measures 75 % coverage for a mean where seeds dominate).

    Args:
        replicates: (n_seeds, B).
    """
    n_seeds, n_boot = replicates.shape
    pick = np.random.default_rng(seed).integers(0, n_seeds, size=(n_boot, n_seeds))
    return replicates[pick, np.arange(n_boot)[:, None]].mean(axis=1)


def test_records(df: pd.DataFrame) -> pd.DataFrame:
    """The test records (validation records are the learning curves and the knob choice)."""
    return df[df["split"] == "test"] if "split" in df else df


def summary(df: pd.DataFrame, valid_realism: dict | None = None) -> pd.DataFrame:
    """One row per (dataset, preset, task, method, knob value) of the test records: `<m>` mean, `<m>_lo/_hi`
    interval, `<m>_ci`, ranks, and `val_choice` (the fraction of seeds x sources whose validation chose it).

    Args:
        valid_realism: {(dataset, preset): realism metrics that passed `benchmark.validity`}; realism is ranked
            only by those where the check was run.
    """
    df = test_records(df)
    metrics = [m for m in TABLE_METRICS + EXTRA if m in df.columns]
    per_seed = df.groupby(GROUP + ["seed"], sort=False, dropna=False)[metrics].mean(numeric_only=False)
    per_seed = per_seed.apply(pd.to_numeric, errors="coerce").reset_index()
    records = {k: g for k, g in df.groupby(GROUP, sort=False, dropna=False)}
    rows = []
    for key, g in per_seed.groupby(GROUP, sort=False, dropna=False):
        row = dict(zip(GROUP, key, strict=True), n_seeds=len(g))
        if "val_choice" in records[key]:
            row["val_choice"] = float(records[key]["val_choice"].fillna(False).astype(bool).mean())
        samples = {}
        for m in metrics:
            mean, half = mean_ci_over_seeds(g[m].to_numpy())
            row[m], row[f"{m}_ci"] = mean, half
            if m not in METRICS:  # cost columns: mean and seed spread only
                continue
            reps = _seed_replicates(records[key], m) if np.isfinite(mean) else None
            samples[m] = sample = Sample(g.sort_values("seed")[m].to_numpy(np.float64), reps)
            iv = S.interval(sample)
            if not np.isfinite(iv.half):  # one seed without replicates: no spread to show
                iv = S.Interval(mean, mean - half, mean + half, float("nan"))
            row[f"{m}_lo"], row[f"{m}_hi"], row[f"{m}_ci"] = iv.lo, iv.hi, iv.half
        row[SAMPLES] = samples
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["valid_realism"] = valid_realism or {}
    return add_ranks(out)


def realism_metric(df: pd.DataFrame, valid: list[str] | None = None) -> str | None:
    """The realism metric to rank and plot by: the first of REALISM_RANK_ORDER that every row has (and, given the
    metric-validity results `valid`, that passed them)."""
    return next((m for m in REALISM_RANK_ORDER if m in df and df[m].notna().all() and (valid is None or m in valid)),
                None)


def is_reference(method: str) -> bool:
    """Reference rows (no translation, histogram matching) are shown but not ranked (`reference_row` declaration)."""
    return bool(method_info(method).get("reference_row"))


#: Table groups in display order: the unpaired methods the benchmark ranks, the paired upper bounds (ranked
#: among themselves), the reference rows (unranked).
GROUPS = ("unpaired", "paired", "reference")
GROUP_LABELS = {"unpaired": "unpaired", "paired": "paired (upper bound)", "reference": "reference"}


def method_group(method: str) -> str:
    """A method's table group (`TranslationMethod.group`; runs from before it was recorded: from `reference_row`)."""
    info = method_info(method)
    return info.get("group") or ("reference" if info.get("reference_row") else "unpaired")


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
    higher = METRICS[metric].higher_is_better
    samples = [s.get(metric) if isinstance(s, dict) else None for s in part.get(SAMPLES, [None] * len(part))]
    if samples and all(s is not None for s in samples):
        return pd.Series(S.difference_ranks(samples, higher), index=part.index)
    lo, hi = (part.get(f"{metric}{s}", pd.Series(np.nan, index=part.index)) for s in ("_lo", "_hi"))
    return overlap_rank(part[metric], lo, hi, higher)


def add_ranks(out: pd.DataFrame) -> pd.DataFrame:
    """Realism, structure and fidelity ranks (overlapping intervals share a rank) and the average of the first two,
    within each (dataset, preset, task) and group: the unpaired methods among themselves, the paired upper bounds
    among themselves (never mixed into the unpaired ranks); reference rows stay unranked."""
    out = out.copy()
    if out.empty:
        return out
    for col in list(RANKS) + ["avg_rank", "realism_by"]:
        out[col] = np.nan if col != "realism_by" else None
    out["group"] = out["method"].map(method_group)
    ranked = out[out["group"] != "reference"]
    validity = out.attrs.get("valid_realism", {})
    for (dataset, preset, _, _), part in ranked.groupby(["dataset", "preset", "task", "group"], sort=False):
        for col, metric in RANKS.items():
            metric = metric or realism_metric(part, validity.get((dataset, preset)))
            if metric is None or metric not in part or part[metric].isna().any():
                continue
            out.loc[part.index, col] = rank_rows(part, metric)
            if col == "realism_rank":
                out.loc[part.index, "realism_by"] = metric
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
    table = ordered(table)
    for _, r in table.iterrows():
        knob = f"{r['knob']}={r['knob_value']}" if r["knob"] else "–"
        row = {"task": r["task"], "group": GROUP_LABELS[method_group(r["method"])], "method": r["method"], "knob": knob}
        if "n_seeds" in table:
            row["seeds"] = f"{r['n_seeds']:g}"
        if "val_choice" in table and table["val_choice"].notna().any():
            row["val choice"] = "" if pd.isna(r["val_choice"]) else f"{r['val_choice']:.0%}"
        for m in shown:
            cell = _fmt(r[m], r.get(f"{m}_ci"), m)
            # the best value among the rows a reader compares (unpaired methods and references, not the bounds)
            part = table[(table["task"] == r["task"]) & (table["method"].map(method_group) != "paired")][m]
            best = part.max() if METRICS[m].higher_is_better else part.min()
            if np.isfinite(r[m]) and r[m] == best and part.notna().sum() > 1 and method_group(r["method"]) != "paired":
                cell = f"\\textbf{{{cell}}}" if tex else f"**{cell}**"
            row[f"{METRICS[m].label} {METRICS[m].arrow}"] = cell
        if "dice" in table and table["dice"].notna().any():
            row[UTILITY_LABEL] = "–" if pd.isna(r["dice"]) else _fmt(r["dice"], r["dice_ci"], "dice")
        for m in ("realism_rank", "structure_rank", "fidelity_rank", "avg_rank", "utility_rank"):
            if m == "utility_rank" and not ("dice" in table and table["dice"].notna().any()):
                continue
            if m in table:
                unranked = "ref." if is_reference(r["method"]) else ""
                row[m.replace("_", " ")] = unranked if pd.isna(r[m]) else f"{r[m]:g}"
        for m in EXTRA:
            if m in table:
                row[m] = _fmt(r[m], 0, m)
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
        return row["knob_value"] in grid

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


def write_tables(table: pd.DataFrame, out_dir: Path, records: pd.DataFrame | None = None) -> list[Path]:
    """summary.{csv,md,tex}, headline.md, table1-<task>.tex, gaps.md and convergence.md (from the `records`, when
    given) and variants.md under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "summary.csv", out_dir / "summary.md", out_dir / "summary.tex", out_dir / "headline.md",
             out_dir / "variants.md"]
    atomic_write(paths[0], table.drop(columns=[SAMPLES], errors="ignore").to_csv(index=False, float_format="%.6g"))
    def note(ranked: pd.DataFrame, scope: str = "") -> str:
        """The footer of one table, naming the metric *that* table was ranked by."""
        realism = ranked["realism_by"].dropna().unique() if "realism_by" in ranked else []
        return (f"\n\nMean over seeds ± half-width of the 95% interval over test subjects (cluster bootstrap) and "
                f"seeds (Student t over seeds);{scope} realism rank by {', '.join(realism) or 'n/a'}, structure rank "
                "by SSIM to the source (MedShift Table 1 convention), fidelity rank by SSIM to the aligned real image; "
                "rows not surely apart (the 95% interval of their paired difference includes 0) share a rank; paired "
                "(upper bound) rows see aligned pairs in training and are ranked among themselves only; ref. = "
                "reference row, not ranked. n/a = unavailable (see the records' "
                "`unavailable`)." + (" Utility: mean Dice of a segmenter trained on the method's translations of the "
                                     "synthetic training images and tested on real images, on the row of the setting "
                                     "validation chose (utility.md)." if "dice" in ranked and ranked["dice"].notna()
                                     .any() else "") + "\n")

    atomic_write(paths[1], formatted(table).to_markdown(index=False) + note(table))
    tex = formatted(table, tex=True).to_latex(index=False, escape=False)
    atomic_write(paths[2], tex.replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
                 .replace("–", "--").replace("_", r"\_"))
    configured = headline(table)
    atomic_write(paths[3], formatted(configured).to_markdown(index=False) + note(configured))
    variants_path = paths.pop()
    for task in configured["task"].unique():
        paths.append(out_dir / f"table1-{task}.tex")
        atomic_write(paths[-1], paper_table(configured, task))
    gaps = paired_gap(records, configured) if records is not None else pd.DataFrame()
    if len(gaps):
        paths.append(out_dir / "gaps.md")
        atomic_write(paths[-1], gaps.to_markdown(index=False, floatfmt=".3f") + (
            "\n\nWhat unpaired translation costs: per metric, the best unpaired row against the best paired upper "
            "bound of the headline table; advantage_of_pairs = the bound's value minus the unpaired one, signed so "
            "that > 0 favours the bound, with its 95% interval (lo, hi) from the two rows' replicates on the same "
            "test subjects and seed draws.\n"))
    conv = convergence(records) if records is not None else pd.DataFrame()
    if len(conv):
        paths.append(out_dir / "convergence.md")
        atomic_write(paths[-1], conv.to_markdown(index=False, floatfmt=".3f") + (
            "\n\nValidation learning curves (24 fixed scenes, mean over seeds): spectrum distance and SSIM to the "
            "aligned image at 3/4 of the training budget and at its end; still improving = realism better by more "
            f"than {REL_CHANGE:.0%} or SSIM (gt) by more than {ABS_CHANGE} over the last quarter.\n"))
    paths.append(variants_path)
    variants = headline(table, variants=True)
    if len(variants):
        atomic_write(variants_path, formatted(variants).to_markdown(index=False) + note(
            variants, " ranks within this table (methods with `--set` variants);"))
    else:
        variants_path.unlink(missing_ok=True)
        paths.pop()
    return paths


# ------------------------------------------------------------------------------------------ the paper's Table 1
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


# ------------------------------------------------------------------------------------------ convergence
#: A learning curve is "still improving" when, over the last quarter of the budget, validation realism (the
#: checkpoint's criterion) improved by more than REL_CHANGE of its value or SSIM to the aligned image by more than
#: ABS_CHANGE; "flat" otherwise (changes of either sign below those).
REL_CHANGE, ABS_CHANGE = 0.05, 0.01


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


# ------------------------------------------------------------------------------------------ downstream utility
#: The utility's reference rows besides the methods' own: the segmenter trained on the target's real images.
ORACLE = "oracle"
UTILITY_LABEL = "Utility (Dice) ↑"


def load_utility(results_dir: Path) -> pd.DataFrame:
    """Utility records (`benchmark.utility`: `results/utility/<dataset>-<preset>/<task>/<method>/seed<k>.json`)."""
    import json

    files = sorted(Path(results_dir).glob("utility/*/*/*/seed*.json"))
    return pd.DataFrame([json.loads(f.read_text()) for f in files])


def utility_group(method: str) -> str:
    return "reference" if method == ORACLE else method_group(method)


def _knob_label(g: pd.DataFrame) -> str:
    """The knob values the seeds' validation chose, e.g. "tau=0.3 (2/3), 0.45 (1/3)"."""
    if not g["knob"].iloc[0]:
        return "–"
    counts = g["knob_value"].value_counts()
    parts = [f"{v:g} ({c}/{len(g)})" if len(counts) > 1 else f"{v:g}" for v, c in counts.items()]
    return f"{g['knob'].iloc[0]}=" + ", ".join(parts)


def utility_summary(udf: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, preset, task, method): mean Dice and per-structure Dice over seeds with the combined
    seed-and-subject interval, the fraction of the gap between no translation (`identity`) and the oracle that the
    method closes (with its interval from the same paired replicates; undefined, with `gap_note` saying why, on a task
    where the oracle's Dice minus no translation's has a 95% interval reaching 0: no gap to close, so no method's
    share of it means anything), and the utility rank (overlapping intervals share a rank; unpaired and paired
    methods ranked apart; identity, histmatch and the oracle unranked)."""
    if udf.empty:
        return pd.DataFrame()
    metrics = ["dice"] + sorted(c for c in udf.columns if c.startswith("dice_") and not c.endswith(("_lo", "_hi")))
    rows, reps_of = [], {}
    for key, g in udf.groupby(["dataset", "preset", "task", "method"], sort=False):
        row = dict(zip(["dataset", "preset", "task", "method"], key, strict=True), n_seeds=g["seed"].nunique(),
                   knob=_knob_label(g), group=utility_group(key[3]))
        for m in metrics:
            per_seed = g.groupby("seed", sort=True)[m].mean()
            row[m] = float(per_seed.mean())
            sample = Sample(per_seed.to_numpy(np.float64), _seed_replicates(g, m))
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
            if not gap.lo > 0:  # the oracle is not surely better than no translation: no gap to close on this task
                out.loc[part.index, "gap_note"] = (f"no gap: oracle - no translation = {hi_mean - lo_mean:+.3f} "
                                                   f"[{gap.lo:+.3f}, {gap.hi:+.3f}]")
                continue
            for i, r in part.iterrows():
                out.loc[i, "gap_closed"] = (r["dice"] - lo_mean) / (hi_mean - lo_mean)
                key = (dataset, preset, task, r["method"])
                if key in reps_of and S.paired(reps_of[key], reps_of[low]) and S.paired(reps_of[high], reps_of[low]):
                    mine, none, oracle = (_resampled_seed_means(reps_of[k].replicates) for k in (key, low, high))
                    with np.errstate(all="ignore"):
                        ratio = (mine - none) / (oracle - none)
                    ratio = ratio[np.isfinite(ratio)]
                    if len(ratio) > 1:
                        out.loc[i, "gap_closed_lo"], out.loc[i, "gap_closed_hi"] = np.quantile(ratio, [0.025, 0.975])
        for _, ranked in part[part["group"] != "reference"].groupby("group", sort=False):
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
               "seeds": f"{r['n_seeds']:g}", UTILITY_LABEL: _fmt(r["dice"], r["dice_ci"], "dice")}
        gap = r["gap_closed"]
        note = f"n/a ({r['gap_note']})" if r.get("gap_note") else "n/a"
        row["gap closed"] = note if pd.isna(gap) else f"{gap:.0%}" + (
            "" if pd.isna(r["gap_closed_lo"]) else f" [{r['gap_closed_lo']:.0%}, {r['gap_closed_hi']:.0%}]")
        for c in structures:
            row[c.removeprefix("dice_").replace("_", " ")] = _fmt(r[c], 0, c)
        row["utility rank"] = "ref." if pd.isna(r["utility_rank"]) else f"{r['utility_rank']:g}"
        rows.append(row)
    return pd.DataFrame(rows)


def attach_utility(table: pd.DataFrame, usum: pd.DataFrame) -> pd.DataFrame:
    """The summary with each method's utility on the row of the knob value its seeds' validation chose most often
    (`dice`, `dice_lo/_hi/_ci`, `utility_rank`); other rows and methods without utility records stay empty."""
    table = table.copy()
    for col in ("dice", "dice_lo", "dice_hi", "dice_ci", "utility_rank"):
        table[col] = np.nan
    if usum.empty:
        return table
    for _, u in usum.iterrows():
        rows = table[(table["dataset"] == u["dataset"]) & (table["preset"] == u["preset"])
                     & (table["task"] == u["task"]) & (table["method"] == u["method"])]
        if rows.empty:
            continue
        pick = rows["val_choice"].fillna(0).idxmax() if "val_choice" in rows else rows.index[0]
        for col in ("dice", "dice_lo", "dice_hi", "dice_ci", "utility_rank"):
            table.loc[pick, col] = u[col]
    return table


def utility_correlations(table: pd.DataFrame, metrics: list[str] | None = None, min_methods: int = 4) -> pd.DataFrame:
    """Does an image metric rank the translation methods (unpaired and paired) as downstream utility does? Per task
    and metric (default: the table's realism, fidelity and structure metrics): Spearman's rank correlation of the
    metric (sign flipped where lower is better, so +1 = the same order) with utility, over the methods at the setting
    their validation chose (`attach_utility`) that have the metric, when there are at least `min_methods`."""
    from scipy.stats import spearmanr

    rows = []
    if "dice" not in table:
        return pd.DataFrame()
    shown = metrics or [m for m in TABLE_METRICS if METRICS[m].axis in ("realism", "fidelity", "structure")]
    for task, part in table[table["dice"].notna()].groupby("task", sort=False):
        learned = part[part["method"].map(method_group) != "reference"]
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
    if usum.empty:
        return []
    paths = [out_dir / "utility.csv", out_dir / "utility.md"]
    atomic_write(paths[0], usum.to_csv(index=False, float_format="%.6g"))
    corr = utility_correlations(table) if table is not None else pd.DataFrame()
    corr_md = ("\n\nDo the image metrics rank the translation methods as utility does? Spearman's rho over the methods "
               "(unpaired and paired, at their validation-chosen setting; lower-is-better metrics sign-flipped, so +1 "
               "= the same order):\n\n" + corr.drop(columns="key").to_markdown(index=False, floatfmt=".2f") if len(corr)
               else "")
    atomic_write(paths[1], formatted_utility(usum).to_markdown(index=False) + corr_md + (
        "\n\nDownstream utility (`benchmark/utility.py`): each method translates the task's synthetic training images "
        "at its validation-chosen setting; one fixed segmenter (pix2pix U-Net, the same budget and seed for every "
        "method) learns six skull structures from them and is tested on the target domain's real test images. Mean "
        "Dice over seeds ± half-width of the 95% interval over test subjects (cluster bootstrap) and seeds; gap "
        "closed = (Dice - no translation's) / (the oracle's - no translation's), with its interval from the same "
        "paired replicates (n/a where the oracle is not surely better than no translation: no gap to close); the "
        "oracle's segmenter trains on real target images. Rows not surely apart (the 95% interval of "
        "their paired difference includes 0) share a rank; references are not ranked.\n"))
    return paths


# ------------------------------------------------------------------------------------------ the cost of no pairs
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
                samples.append(Sample(per_seed.to_numpy(np.float64), _seed_replicates(recs, metric)))
            diff = sign * (best["paired"][metric] - best["unpaired"][metric])
            d = S.difference(*samples)
            lo, hi = sorted((sign * d.lo, sign * d.hi))
            knob = lambda r: r["method"] + (f" ({r['knob']}={r['knob_value']})" if r["knob"] else "")  # noqa: E731
            rows.append(dict(task=task, metric=f"{METRICS[metric].label} {METRICS[metric].arrow}",
                             best_unpaired=f"{knob(best['unpaired'])}: {_fmt(best['unpaired'][metric], 0, metric)}",
                             best_paired=f"{knob(best['paired'])}: {_fmt(best['paired'][metric], 0, metric)}",
                             advantage_of_pairs=diff, lo=lo, hi=hi))
    return pd.DataFrame(rows)
