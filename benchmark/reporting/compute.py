"""Rank against training compute: the same methods, seeds and data at several FLOP budgets (`run --budgets 1x 3x 9x`,
each budget a fit of its own whose schedule ends at that budget), read from the summary table.

A method at a budget is its row at the knob value validation chose (the row most seeds x sources chose), so every
point is a headline point. At each budget the methods are ranked as in the headline (`tables.add_ranks`: unpaired
among themselves, paired among themselves, from the interval of each pair's difference). A method's verdict compares
its two largest budgets on the ranking's realism and noise-texture metrics, fidelity (`ssim_gt`) and the structure
gap, each change with its 95 % interval (`stats.difference`: independent fits, the same test subjects; where the
two budgets were fitted on different seeds, on the seeds they share, `shared_seeds`), against the
thresholds `convergence.md` judges learning curves by (`paper.REL_CHANGE` of a realism value, `paper.ABS_CHANGE` of
an SSIM): *still changing* where some metric surely moved by more than its threshold (named, better or worse);
*converged* where every change's whole interval lies within its threshold; else *undecided*, naming the metrics
whose interval is too wide to tell (too few seeds, or noisy ones). The ranking *stops changing* at the
smallest budget from which the rank of every method present at all budgets is the same at every larger budget.
Translations made outside the suite have no budget here; reference rows (no training) are drawn as lines.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

import benchmark.reporting.stats as S
from benchmark.reporting.load import base_method, method_group
from benchmark.reporting.paper import ABS_CHANGE, REL_CHANGE, change_verdict
from benchmark.reporting.tables import (
    SAMPLES,
    STRUCTURE_GAP,
    UTILITY,
    add_ranks,
    format_cell,
    label_of,
    markdown,
    most_chosen,
    spec_of,
)

_BUDGET = re.compile(r"^budget=([0-9.eE+-]+)$")
RANK_COLUMNS = ("realism_rank", "texture_rank", "structure_rank", "fidelity_rank", "avg_rank")


def _preset_budget(dataset: str, preset: str) -> float | None:
    from benchmark.protocol.budget import preset_budget

    return preset_budget(dataset, preset)


def own_choices(records: pd.DataFrame | None, valid_realism: dict | None = None,
                usum: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """Each method and budget variant at each seed's own validation choice (`tables.validation_choice`, with the
    utility of the same choices where `usum` has it), for `budget_rows`; None without records."""
    from benchmark.reporting.tables import validation_choice
    from benchmark.reporting.utility_tables import attach_utility

    if records is None or records.empty:
        return None
    chosen = validation_choice(records, valid_realism, variants=True)
    if len(chosen) and usum is not None and len(usum):
        chosen = attach_utility(chosen, usum, own_choices=True)
    return chosen


def budget_rows(table: pd.DataFrame, chosen: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary's rows of each learned method at each budget (its configured runs and its `--budget` variants
    and nothing else), at the validation-chosen knob value, with `base` (the method), `budget` (FLOPs) and `multiple`
    (of the preset's budget); ranked among the methods at the same budget. Where a method's seeds chose different
    values and `chosen` (`own_choices`) has it, its row is each seed at its own choice (knob "0.3/0.15/0.45"), as
    chosen.md reads it, not the value most seeds chose (which on a tie is only the first)."""
    if table.empty:
        return table.assign(base=[], budget=[], multiple=[])
    setting = table["method"].str.extract(r" \((.*)\)$")[0].fillna("")
    base = table["method"].map(base_method)
    group = base.map(method_group)
    rows = table.assign(base=base, _setting=setting)[group.isin(("unpaired", "distilled", "paired"))]
    rows = rows[(rows["_setting"] == "") | rows["_setting"].str.match(_BUDGET)]
    if rows.empty:
        return rows.assign(budget=[], multiple=[])
    default = {(d, p): _preset_budget(d, p) for d, p in rows[["dataset", "preset"]].drop_duplicates()
               .itertuples(index=False)}
    rows = rows.assign(
        budget=[float(_BUDGET.match(s).group(1)) if s else default[(d, p)] or np.nan
                for s, d, p in zip(rows["_setting"], rows["dataset"], rows["preset"], strict=True)])
    rows = rows.assign(multiple=[b / default[(d, p)] if default[(d, p)] else np.nan
                                 for b, d, p in zip(rows["budget"], rows["dataset"], rows["preset"], strict=True)])
    rows = most_chosen(rows, ["dataset", "preset", "task", "base", "budget"]).drop(columns=["_setting"])
    if chosen is not None and len(chosen) and "val_choice" in rows:
        rows = _at_own_choices(rows, chosen)
    return _ranked_per_budget(rows, table.attrs.get("valid_realism", {}))


def _ranked_per_budget(rows: pd.DataFrame, valid_realism: dict) -> pd.DataFrame:
    """`rows` ranked among the methods at the same budget (`tables.add_ranks`), sorted by task, method and budget."""
    out = []
    for _, part in rows.groupby(["dataset", "preset", "task", "budget"], sort=False):
        part = part.reset_index(drop=True)
        ranked = add_ranks(part.assign(method=part["base"]))
        ranked.attrs = {}
        out.append(ranked.assign(method=part["method"].to_numpy()))
    ranked = pd.concat(out, ignore_index=True)
    ranked.attrs["valid_realism"] = valid_realism
    return ranked.sort_values(["task", "base", "budget"], kind="stable").reset_index(drop=True)


def on_shared_seeds(rows: pd.DataFrame) -> pd.DataFrame | None:
    """`budget_rows` of one task restricted to the seeds that every method present at all its budgets was fitted
    on at every budget (seed 0 where 9× has seed 0 only), each value, interval and rank made again from those seeds
    alone: the ranking across budgets on the same seeds, so that a change of rank between budgets is not a change of
    seeds. Utility is left out (it was run on its own seeds). None where there is no such seed or where every row
    already has exactly those seeds (`budget_rows` says the same)."""
    budgets = rows["budget"].unique()
    every = [b for b, g in rows.groupby("base") if g["budget"].nunique() == len(budgets)]
    part = rows[rows["base"].isin(every)]
    ids = [_ids(r) for _, r in part.iterrows()]
    if len(budgets) < 2 or not part.size or any(i is None for i in ids):
        return None
    shared = set.intersection(*(set(i) for i in ids))
    if not shared or all(set(i) == shared for i in ids):
        return None
    out = []
    for _, r in part.iterrows():
        r = r.copy()
        samples = {m: s.on_seeds(shared) for m, s in r[SAMPLES].items() if s.ids is not None}
        for m, sample in samples.items():
            iv = S.interval(sample)
            r[m], r[f"{m}_lo"], r[f"{m}_hi"], r[f"{m}_ci"] = sample.mean, iv.lo, iv.hi, iv.half
        for col in (UTILITY, f"{UTILITY}_lo", f"{UTILITY}_hi", f"{UTILITY}_ci"):
            if col in r:
                r[col] = np.nan
        own = str(r["knob_value"]).split("/")  # each seed's own choice, in seed order (`validation_choice`)
        if len(own) > 1 and len(own) == len(_ids(r)):
            r["knob_value"] = "/".join(v for v, i in zip(own, _ids(r), strict=True) if i in shared)
        r[SAMPLES], r["n_seeds"] = samples, len(shared)
        out.append(r)
    return _ranked_per_budget(pd.DataFrame(out), rows.attrs.get("valid_realism", {}))


def _ids(row) -> tuple[int, ...] | None:
    """The seeds of a row (those of its samples), or None where unknown."""
    known = [s.ids for s in row[SAMPLES].values() if s.ids is not None] if isinstance(row[SAMPLES], dict) else []
    return known[0] if known else None


def _at_own_choices(rows: pd.DataFrame, chosen: pd.DataFrame) -> pd.DataFrame:
    """`rows` with each row whose seeds did not all choose its value replaced by `chosen`'s row of the same method
    (each seed at its own choice), keeping `base`, `budget` and `multiple`."""
    key = ["dataset", "preset", "task", "method"]
    index = {k: i for i, k in enumerate(chosen[key].itertuples(index=False, name=None))}
    out = []
    for _, r in rows.iterrows():
        k = tuple(r[key])
        if float(r["val_choice"]) < 1 and k in index:
            own = chosen.iloc[index[k]].copy()
            for c in ("base", "budget", "multiple"):
                own[c] = r[c]
            r = own
        out.append(r)
    return pd.DataFrame(out).reset_index(drop=True)


def has_budget_axis(rows: pd.DataFrame) -> bool:
    """Whether some method has rows at two or more budgets (else there is no compute table to write)."""
    return bool(len(rows)) and rows.groupby(["task", "base"])["budget"].nunique().max() > 1


def metrics_of(part: pd.DataFrame) -> list[str]:
    """The metrics the table and the figure show: the ranking's realism metric and its noise-texture metric (the
    headline's two realism axes, each where one passed validity), fidelity, the structure gap and, where some point
    has it, downstream utility."""
    realism, texture = (next(iter(part.get(f"{axis}_by", pd.Series(dtype=object)).dropna().unique()), None)
                        for axis in ("realism", "texture"))
    return [m for m in (realism, texture, "ssim_gt", STRUCTURE_GAP, UTILITY)
            if m and m in part and part[m].notna().any()]


def seed_names(ids) -> str:
    """"seed 0" or "seeds 0, 1": the seeds a comparison was made on."""
    ids = sorted(ids)
    return f"seed {ids[0]}" if len(ids) == 1 else "seeds " + ", ".join(map(str, ids))


def shared_seeds(a: S.Sample, b: S.Sample) -> tuple[int, ...] | None:
    """The seeds two rows have in common where their seed sets differ (a budget fitted on fewer seeds than the other),
    else None (the same seeds, or seed numbers unknown: compare the rows as they are)."""
    if a.ids is None or b.ids is None or set(a.ids) == set(b.ids):
        return None
    return tuple(sorted(set(a.ids) & set(b.ids)))


def verdicts(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (task, method) with two budgets or more: the change of each metric between its two largest budgets (the
    larger minus the smaller, with its 95 % interval) and the verdict. Where the two budgets were fitted on different
    seeds (9× on seed 0 only, 3× on seeds 0-2) the change is taken on the seeds both have, so that one seed's own
    offset is not read as a change of compute (MedShift's seed 0 alone gained 0.06 SSIM (gt) from 1× to 3×, the
    mean of three seeds 0.02); `seeds` names them, and with one seed the interval covers test-set sampling only."""
    out = []
    for (task, base), g in rows.groupby(["task", "base"], sort=False):
        budgets = sorted(g["budget"].unique())
        if len(budgets) < 2:
            continue
        lo_row, hi_row = (g[g["budget"] == b].iloc[0] for b in budgets[-2:])
        span = " → ".join(_multiple(r) for r in (lo_row, hi_row))
        moved, unsure, changes, on = [], [], [], None
        for m in metrics_of(g):
            a, b = hi_row[SAMPLES].get(m), lo_row[SAMPLES].get(m)
            if a is None or b is None:
                continue
            on = shared_seeds(a, b)
            if on == ():
                continue
            d = S.difference(a.on_seeds(on), b.on_seeds(on)) if on else S.difference(a, b)
            changes.append(f"{m} {d.estimate:+.3g} [{d.lo:+.3g}, {d.hi:+.3g}]")
            threshold = ABS_CHANGE if m in ("ssim_gt", STRUCTURE_GAP) else REL_CHANGE * abs(lo_row[m])
            state = change_verdict(d, threshold, not spec_of(m).higher_is_better)
            if state in ("improving", "worsening"):
                moved.append(f"{m} {'better' if state == 'improving' else 'worse'}")
            elif state != "flat":
                unsure.append(m)
        seeds = ("–" if on is None else "none in common" if not on else
                 f"{seed_names(on)} only: training noise not covered" if len(on) == 1 else seed_names(on))
        verdict = ("no seed in common: no change to take" if on == () else
                   "no interval (one seed without bootstrap replicates)" if not changes else
                   "still changing (" + ", ".join(moved) + ")" if moved else
                   "undecided (interval wider than the threshold: " + ", ".join(unsure) + ")" if unsure else
                   "converged")
        out.append(dict(task=task, method=base, budgets=f"{budgets[-2]:.2g} → {budgets[-1]:.2g}", span=span,
                        seeds=seeds, change="; ".join(changes), verdict=verdict,
                        moved=", ".join(moved) if changes else None, unsure=", ".join(unsure),
                        on=None if not on else on))
    return pd.DataFrame(out)


def _multiple(row) -> str:
    """A budget as a multiple of the preset's ("3×"), or in FLOPs where the preset has none."""
    return f"{row['multiple']:g}×" if np.isfinite(row["multiple"]) else f"{row['budget']:.2g}"


def convergence_labels(table: pd.DataFrame, chosen: pd.DataFrame | None = None) -> dict[tuple[str, str], str]:
    """(task, method) -> the headline's `compute` cell, for each learned method, where some method of `table` has
    two budgets or more (else {}): the verdict between its two largest budgets ("converged 3× → 9×", "still changing
    1× → 3×: ssim_gt better", "undecided 1× → 3×: frd, ssim_gt too wide") or "one budget (1×)" for a method fitted at
    one budget only. `chosen`: as for `budget_rows`."""
    rows = budget_rows(table, chosen)
    if not has_budget_axis(rows):
        return {}
    labels = {(t, b): f"one budget ({', '.join(_multiple(r) for _, r in g.iterrows())})"
              for (t, b), g in rows.groupby(["task", "base"], sort=False)}
    for _, v in verdicts(rows).iterrows():
        on = v["on"] if isinstance(v["on"], tuple) else ()
        span = v["span"] + (f" ({seed_names(on)})" if on else "")
        labels[(v["task"], v["method"])] = (
            v["verdict"] if v["moved"] is None else f"still changing {span}: {v['moved']}" if v["moved"] else
            f"undecided {span}: {v['unsure']} too wide" if v["unsure"] else f"converged {span}")
    return labels


def ranking_settles(rows: pd.DataFrame, task: str, column: str = "avg_rank") -> str:
    """Where the ranking of the unpaired methods present at every budget of `task` stops changing."""
    part = rows[(rows["task"] == task) & (rows["base"].map(method_group) == "unpaired")]
    budgets = sorted(part["budget"].unique())
    everywhere = [m for m, g in part.groupby("base") if g["budget"].nunique() == len(budgets)]
    if len(budgets) < 2 or len(everywhere) < 2:
        return "fewer than two budgets or methods in common: no ranking to compare"
    order = {b: tuple(part[(part["budget"] == b) & part["base"].isin(everywhere)].sort_values("base")[column])
             for b in budgets}
    settle = budgets[-1]
    for b in reversed(budgets):
        if order[b] != order[budgets[-1]]:
            break
        settle = b
    names = ", ".join(sorted(everywhere))
    if settle == budgets[0]:
        return f"the ranking ({column}) of {names} is the same at every budget ({budgets[0]:.2g} to {budgets[-1]:.2g})"
    passes = reversals(part[part["base"].isin(everywhere)], column)
    how = (" (" + "; ".join(passes) + ")" if passes else
           " (no method passes another: only which of them are surely apart differs)")
    if settle == budgets[-1]:
        return (f"the ranking ({column}) of {names} still changes at the largest budget ({budgets[-1]:.2g} FLOPs): "
                f"it has not settled{how}")
    return f"the ranking ({column}) of {names} stops changing from {settle:.2g} FLOPs on{how}"


def reversals(part: pd.DataFrame, column: str) -> list[str]:
    """Each pair of methods whose order on `column` reverses between two budgets (one ranked strictly ahead at the
    smaller budget, strictly behind at the larger: a tie at either is no reversal), "medshift passes cyclegan
    (2.1e+13 → 6.3e+13 FLOPs)"; the first budget pair where it happens."""
    rank = {(r["base"], r["budget"]): r[column] for _, r in part.iterrows()}
    budgets, methods = sorted(part["budget"].unique()), sorted(part["base"].unique())
    out = []
    for a in methods:
        for b in methods:
            for i, x in enumerate(budgets):
                later = [y for y in budgets[i + 1:] if rank[(a, x)] > rank[(b, x)] and rank[(a, y)] < rank[(b, y)]]
                if later:
                    out.append(f"{a} passes {b} ({x:.2g} → {later[0]:.2g} FLOPs)")
                    break
    return out


def with_compute_verdicts(shown: pd.DataFrame, labels: dict[tuple[str, str], str]) -> pd.DataFrame:
    """The headline's formatted rows (`tables.formatted`) with a `compute` column after `seeds`: each learned
    method's label (`convergence_labels`) on its task ("–" for rows without training); `shown` unchanged without
    labels (no budget axis)."""
    if not labels or shown.empty:
        return shown
    cells = [labels.get((t, base_method(m)), "–" if method_group(m) not in ("unpaired", "distilled", "paired") else
                        "n/a") for t, m in zip(shown["task"], shown["method"], strict=True)]
    at = list(shown.columns).index("seeds") + 1 if "seeds" in shown else len(shown.columns)
    out = shown.copy()
    out.insert(at, "compute", cells)
    return out


def compute_note(labels: dict[tuple[str, str], str]) -> str:
    """The headline's footnote for its `compute` column ("" where it has none: no `convergence_labels`)."""
    if not labels:
        return ""
    return ("\ncompute: each learned method's realism, noise texture, fidelity and structure gap between its two "
            "largest training budgets (fits of their own, × the preset's budget; compute.md): *still changing* where "
            "some change is sure and larger than convergence.md's threshold (5 % of a realism value, 0.01 SSIM), "
            "*converged* where every change's 95 % interval lies within it, else *undecided* (the metrics whose "
            "interval is too wide); the rows above are the 1× "
            "fits.\n")


def compute_markdown(rows: pd.DataFrame) -> str:
    """results/tables/compute.md: every method at every budget (`budget_rows`) with intervals and its rank at that
    budget, the verdicts and where each task's ranking settles."""
    parts = ["# Rank against training compute\n",
             "Each row: a method at one training budget (a fit of its own), at the knob value validation chose; mean "
             "± half-width of the 95 % interval over test subjects and seeds; ranks among the methods at the same "
             "budget (rows not surely apart share a rank; paired upper bounds ranked among themselves). "
             "`benchmark/reporting/compute.py` says how verdicts are made. Utility (Dice), where shown: the "
             "downstream segmenter of `python -m benchmark utility --budgets ...` on the same fits (the seeds it ran; "
             "not part of the verdicts).\n"]
    for task, part in rows.groupby("task", sort=False):
        parts.append(f"## {task}\n\n" + _points_table(part, metrics_of(part)) + "\n")
        single = part[part["n_seeds"] == 1]
        if len(single):
            names = ", ".join(f"{r['base']} at {_multiple(r)}" for _, r in single.iterrows())
            parts.append(f"Rows of one seed ({names}): their intervals, and the ranks and verdicts drawn from them, "
                         "cover test-set sampling only, not training noise.\n")
        v = verdicts(part)
        if len(v):
            shown = v.drop(columns=["task", "moved", "unsure", "on"]).rename(columns={"span": "× preset"})
            parts.append(markdown(shown, index=False) + "\n")
        parts += _settles(part, task, "Ranking across budgets")
        same = on_shared_seeds(part)
        if same is not None:
            name = seed_names(_ids(same.iloc[0]))
            parts.append(f"### On {name} alone at every budget\n\nThe methods fitted at every budget, each point, "
                         f"interval and rank made again from {name} only (the seeds every such fit shares), so that "
                         "a change of rank between budgets is not a change of seeds. With one seed the intervals and "
                         "ranks cover test-set sampling only.\n")
            parts.append(_points_table(same, [m for m in metrics_of(part) if m != UTILITY]) + "\n")
            parts += _settles(same, task, f"Ranking across budgets on {name}")
        hours = training_hours(part)
        if hours:
            parts.append(hours + "\n")
    return "\n".join(parts)


def _points_table(part: pd.DataFrame, metrics: list[str]) -> str:
    """compute.md's table of a task's points: method, budget, seeds, knob, each metric with its interval, ranks."""
    table = pd.DataFrame({
        "method": part["base"], "group": part["base"].map(method_group),
        "budget (FLOPs)": [f"{b:.2g}" for b in part["budget"]],
        "× preset": [f"{m:g}" if np.isfinite(m) else "" for m in part["multiple"]],
        "seeds": part["n_seeds"], "knob": [f"{k}={v}" if k else "–" for k, v in zip(
            part["knob"], part["knob_value"], strict=True)],
        **{label_of(m): [format_cell(v, h, m) for v, h in zip(part[m], part[f"{m}_ci"], strict=True)]
           for m in metrics},
        **{c.replace("_", " "): part[c] for c in RANK_COLUMNS if c in part}})
    return markdown(table, index=False)


def _settles(rows: pd.DataFrame, task: str, lead: str) -> list[str]:
    """compute.md's lines on where the ranking of `rows` settles: one sentence where every axis says the same."""
    settles = [ranking_settles(rows, task, c) for c in RANK_COLUMNS if c in rows and rows[c].notna().any()]
    if not settles:
        return []
    return [f"{lead}: {settles[0]}.\n" if len(set(settles)) == 1 else
            f"{lead}, per axis:\n\n" + "\n".join(f"* {s}." for s in settles) + "\n"]


def training_hours(part: pd.DataFrame) -> str:
    """One line: the recorded training wall-clock of a task's rows (`train_sec`, per seed) summed over methods and
    seeds, per budget multiple and in all; "" where no row recorded it. Hours of CPU time where each fit ran on one
    thread, as the suite's sweeps do."""
    if "train_sec" not in part or not part["train_sec"].notna().any():
        return ""
    known = part[part["train_sec"].notna()]
    per = (known["train_sec"] * known["n_seeds"]).groupby(known["multiple"]).sum() / 3600
    cells = ", ".join(f"{m:g}×: {h:.2f} h" for m, h in per.items())
    return (f"Training time of these fits (recorded wall-clock per fit × seeds, summed over methods; CPU-hours where "
            f"each fit ran on one thread): {cells}; {per.sum():.2f} h in all.")


def write_compute(table: pd.DataFrame, out_dir: Path, chosen: pd.DataFrame | None = None) -> list[Path]:
    """compute.md where some method has two budgets or more (else none, and a stale one is removed); `chosen`, as
    for `budget_rows` (`own_choices`, which carries the utility of rows whose seeds chose different knob values)."""
    from benchmark.protocol.records import atomic_write

    path = Path(out_dir) / "compute.md"
    rows = budget_rows(table, chosen)
    if not has_budget_axis(rows):
        path.unlink(missing_ok=True)
        return []
    atomic_write(path, compute_markdown(rows))
    return [path]
