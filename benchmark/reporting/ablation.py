"""MedShift's ablation (`medshift-ablation.md`, the `medshift-ablation-<task>` figure): each `--set`/`--vary` variant of
MedShift (a fit of its own, e.g. `space=latent`, `base_channels=32`, `train_on=task`, or a sampling variant re-using
the default fit, e.g. `solver=heun`, `encode_guidance=1`) with each seed at the knob value its own validation chose
(`tables.validation_choice`, as the headline reads MedShift), beside the default configuration and CycleGAN, with
each variant's difference to the default and the encoder's round trip.

A pure function of the records (with their `stats.Sample`s through `tables.summary`); without records, of the summary
table, at the knob value most seeds chose. Budget variants (`budget=`) belong to `compute.md` and are left out.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import benchmark.reporting.stats as S
from benchmark.reporting.load import base_method, test_records
from benchmark.reporting.tables import (
    SAMPLES,
    STRUCTURE_GAP,
    format_cell,
    label_of,
    markdown,
    most_chosen,
    realism_metric,
    spec_of,
    validation_choice,
)
from benchmark.scoring.metrics import mean_ci_over_seeds

ABLATED = "medshift"
#: the unpaired method the ablation is read against (the one MedShift loses to on tiny)
BESIDE = "cyclegan"
#: columns with intervals, and those also differenced against the default configuration
SHOWN = ("nps_flat", "ssim_gt", "ssim_src", STRUCTURE_GAP)
DIFFERENCED = ("ssim_gt", STRUCTURE_GAP)
FOOTER = (
    "Each configuration with each seed at the knob value its own validation chose (`knob (per seed)`, in seed order), "
    "mean over seeds ± half-width of the 95% interval over test subjects and seeds. Δ = the configuration "
    "minus the default on the seeds the configuration has, seed by seed (the default's fit of the same seed: a "
    "sampling variant re-uses it, a fit variant starts from the same seed) and replicate by replicate on the shared "
    "test subjects, with the 95% interval of that difference (`stats.seed_paired_difference`; with one seed it covers "
    "test-set sampling only); CycleGAN's against the default's seeds as independent; bold where it excludes 0 "
    "with two seeds or more. "
    "Round trip: the target's real test images encoded to tau under "
    "their own label and decoded under it (SSIM / PSNR to themselves; 1 / ∞ is a perfect inversion), mean over "
    "seeds. Autoencoder SSIM: a latent configuration's first stage alone, decode(encode(x)) of the same images, the "
    "ceiling its round trip and fidelity sit under (– in pixel space). val SSIM (gt): the criterion each seed's "
    "knob choice maximised (validation SSIM (gt) at its chosen tau, mean over seeds); the MedShift configuration "
    "with the highest (over the seeds all have) is *validation's pick*, the one to read without choosing on the "
    "test split. A configuration "
    "with one seed has an "
    "interval over test subjects only. `setting` is the `--set`/`--vary` "
    "that makes the variant; a fit variant trains again, a sampling variant re-uses the default fit's weights.")


def is_ablation(method: str) -> bool:
    return base_method(method) == ABLATED and method != ABLATED and "budget=" not in method \
        and "misregister=" not in method  # the same method on other data, not a configuration of it


def setting_of(method: str) -> str:
    """The `--set` of a variant's name as typed ("medshift (space=\"latent\")" -> "space=latent")."""
    return method[len(ABLATED) + 2:-1].replace('"', "")


def has_ablation(table: pd.DataFrame) -> bool:
    return bool(len(table)) and table["method"].map(is_ablation).any()


def configurations(table: pd.DataFrame, records: pd.DataFrame | None, task: str) -> pd.DataFrame:
    """The rows of `task` the ablation reads: MedShift, its variants and `BESIDE`, each seed at its own validation
    choice (from the records), or without records the summary's most-chosen row. Empty without a variant."""
    part = table[table["task"] == task]
    if not part["method"].map(is_ablation).any() or not (part["method"] == ABLATED).any():
        return part.iloc[:0]
    keep = (lambda m: m.isin([ABLATED, BESIDE]) | m.map(is_ablation))
    if records is not None and "val_choice" in records:
        # no translation's records too: the structure column's ideal is its SSIM (gt)
        recs = records[(records["task"] == task) & (keep(records["method"]) | (records["method"] == "identity"))]
        own = validation_choice(recs, table.attrs.get("valid_realism"), variants=True)
        if len(own) and (own["method"] == ABLATED).any():
            return own[keep(own["method"])]
    chosen = most_chosen(part, ["task", "method"])
    return chosen[keep(chosen["method"])]


def round_trip(records: pd.DataFrame | None) -> dict:
    """{(task, method): {"ssim": (mean, half), "psnr": (mean, half)}} over seeds, from the test records at the chosen
    knob that carry a round trip (`Evaluator.round_trip`)."""
    if records is None or "roundtrip_ssim" not in records:
        return {}
    recs = test_records(records)
    recs = recs[recs["val_choice"].fillna(False).astype(bool) & recs["roundtrip_ssim"].notna()]
    out = {}
    cols = ["roundtrip_ssim", "roundtrip_psnr"] + [c for c in ("ae_recon_ssim", "ae_recon_psnr") if c in recs]
    for (task, method), g in recs.groupby(["task", "method"], sort=False):
        per_seed = g.groupby("seed")[cols].mean()
        out[task, method] = {k: mean_ci_over_seeds(per_seed[f"roundtrip_{k}"].to_numpy(float)) for k in
                             ("ssim", "psnr")}
        if "ae_recon_ssim" in per_seed and per_seed["ae_recon_ssim"].notna().any():
            out[task, method]["ae_ssim"] = mean_ci_over_seeds(per_seed["ae_recon_ssim"].dropna().to_numpy(float))
    return out


def validation_scores(records: pd.DataFrame | None) -> dict:
    """{(task, method): per-seed Series} of the validation criterion each seed's knob choice maximised: the mean SSIM
    (gt) over the task's sources of the selected checkpoint's validation records at the seed's best knob value
    (`validation.best_knob`). What picks among the configurations without reading the test split."""
    if records is None or "split" not in records or "ssim_gt" not in records:
        return {}
    val = records[(records["split"] == "val") & (records["step"].astype(str) == "selected")
                  & records["ssim_gt"].notna()]
    return {key: g.groupby(["seed", "knob_value"], dropna=False)["ssim_gt"].mean().groupby(level="seed").max()
            for key, g in val.groupby(["task", "method"], sort=False)}


def validation_pick(scores: dict, task: str, methods) -> str | None:
    """The MedShift configuration (of `methods`) with the best mean validation score over the seeds every scored
    configuration has (all of them where they share none)."""
    mine = {m: scores[task, m] for m in methods if (task, m) in scores and (m == ABLATED or is_ablation(m))}
    if not mine:
        return None
    shared = set.intersection(*(set(v.index) for v in mine.values()))
    means = {m: (v.loc[sorted(shared)] if shared else v).mean() for m, v in mine.items()}
    return max(means, key=means.get)


def matched_default(table: pd.DataFrame, records: pd.DataFrame | None, task: str, seeds) -> pd.Series | None:
    """The default configuration's row on `seeds` only (each at its own choice), for a seed-paired difference; None
    without records or where the default lacks one of them."""
    if records is None or "val_choice" not in records:
        return None
    keep = records["method"].isin([ABLATED, "identity"]) & (records["task"] == task) & records["seed"].isin(seeds)
    own = validation_choice(records[keep], table.attrs.get("valid_realism"))
    own = own[own["method"] == ABLATED]
    return own.iloc[0] if len(own) and own.iloc[0]["n_seeds"] == len(seeds) else None


def _delta(row: pd.Series, default: pd.Series, metric: str, seed_paired: bool = False) -> str:
    a, b = row[SAMPLES].get(metric), default[SAMPLES].get(metric)
    if a is None or b is None or not np.isfinite(a.mean) or not np.isfinite(b.mean):
        return "n/a"
    iv = S.seed_paired_difference(a, b) if seed_paired else S.difference(a, b)
    if not np.isfinite(iv.lo):
        return f"{iv.estimate:+.3f}"
    text = f"{iv.estimate:+.3f} [{iv.lo:+.3f}, {iv.hi:+.3f}]"
    if min(a.n, b.n) < 2:  # one seed: the interval leaves training noise out, so it proves nothing apart
        return text
    return f"**{text}**" if iv.lo > 0 or iv.hi < 0 else text


def ablation_table(table: pd.DataFrame, records: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration of MedShift (default first, then its variants) and the `BESIDE` method, per task
    that has a variant; empty without one."""
    rows = []
    rt, vs = round_trip(records), validation_scores(records)
    for task in table["task"].unique():
        chosen = configurations(table, records, task)
        if chosen.empty:
            continue
        default = chosen[chosen["method"] == ABLATED].iloc[0]
        pick = validation_pick(vs, task, chosen["method"])
        variants = chosen[chosen["method"].map(is_ablation)].sort_values("method")
        beside = chosen[chosen["method"] == BESIDE]
        realism = realism_metric(chosen[chosen["method"].isin([ABLATED, BESIDE]) | chosen["method"].map(is_ablation)])
        shown = ([realism] if realism else []) + [m for m in SHOWN if m in chosen]
        for _, r in pd.concat([default.to_frame().T, variants, beside]).iterrows():
            method = r["method"]
            row = {"task": task, "configuration": ("default" if method == ABLATED else setting_of(method)
                                                    if is_ablation(method) else method)
                   + (" (validation's pick)" if method == pick else "")}
            row["knob (per seed)"] = "–" if not r["knob"] else f"{r['knob']}={r['knob_value']}"
            row["seeds"] = f"{r['n_seeds']:g}"
            for m in shown:
                row[label_of(m)] = format_cell(r[m], r.get(f"{m}_ci"), m, digits=3)
            # a variant against the default on the same seeds, paired seed by seed; CycleGAN against all of them
            seeds = sorted(records[(records["task"] == task) & (records["method"] == method)]["seed"].unique()) \
                if records is not None and is_ablation(method) else []
            matched = matched_default(table, records, task, seeds) if seeds else None
            for m in ([realism] if realism else []) + list(DIFFERENCED):
                if m in chosen:
                    row[f"Δ {spec_of(m).label}"] = "–" if method == ABLATED else _delta(r, default, m) \
                        if matched is None else _delta(r, matched, m, seed_paired=True)
            trip = rt.get((task, method))
            row["round trip SSIM"] = format_cell(*trip["ssim"], "ssim_gt") if trip else "–"
            row["round trip PSNR"] = format_cell(*trip["psnr"], "psnr_gt") if trip else "–"
            row["autoencoder SSIM"] = format_cell(*trip["ae_ssim"], "ssim_gt") if trip and "ae_ssim" in trip else "–"
            score = vs.get((task, method))
            row["val SSIM (gt)"] = "–" if score is None else format_cell(
                *mean_ci_over_seeds(score.to_numpy(float)), "ssim_gt")
            row["nfe"] = f"{r['nfe']:.3g}" if pd.notna(r.get("nfe")) else "n/a"
            row["params"] = f"{r['n_params'] / 1e6:.2f}M" if pd.notna(r.get("n_params")) else "n/a"
            rows.append(row)
    return pd.DataFrame(rows)


def write_ablation(table: pd.DataFrame, records: pd.DataFrame | None, out_dir: Path) -> list[Path]:
    """medshift-ablation.md where MedShift has variants (else none, and a stale one is removed)."""
    from benchmark.protocol.records import atomic_write

    path = Path(out_dir) / "medshift-ablation.md"
    part = ablation_table(table, records)
    if part.empty:
        path.unlink(missing_ok=True)
        return []
    atomic_write(path, markdown(part, index=False) + "\n\n" + FOOTER + "\n")
    return [path]


def ablation_figure(table: pd.DataFrame, task: str, records: pd.DataFrame | None = None):
    """medshift-ablation-<task>: realism (x) against fidelity (SSIM (gt), y), one point per configuration (each seed
    at its own chosen knob, `configurations`) with its intervals on both axes; the default and CycleGAN drawn apart.
    None without variants."""
    import matplotlib.pyplot as plt

    from benchmark.reporting.styles import VARIANT_STYLES, method_style

    chosen = configurations(table, records, task)
    if chosen.empty:
        return None
    x = realism_metric(chosen) or "nps_dist"
    fig, ax = plt.subplots(figsize=(8.6, 4.4))
    n = 0
    for _, r in chosen.iterrows():
        method = r["method"]
        if is_ablation(method):
            color, marker = VARIANT_STYLES[n % len(VARIANT_STYLES)]
            label = setting_of(method)
            n += 1
        else:
            style = method_style(method)
            color, marker = style.get("color", "black"), style.get("marker", "o")
            label = "MedShift default" if method == ABLATED else style["label"]
        err = [[r[f"{m}"] - r[f"{m}_lo"] for m in (x, "ssim_gt")], [r[f"{m}_hi"] - r[f"{m}"] for m in (x, "ssim_gt")]]
        err = np.nan_to_num(np.asarray(err, float))
        ax.errorbar(r[x], r["ssim_gt"], xerr=err[:, :1], yerr=err[:, 1:], color=color, marker=marker, capsize=3,
                    markersize=8 if method in (ABLATED, BESIDE) else 6, linestyle="none",
                    zorder=3 if method in (ABLATED, BESIDE) else 2,
                    label=f"{label} ({r['knob']}={r['knob_value']}, {r['n_seeds']:g} seed{'s' * (r['n_seeds'] > 1)})"
                    if r["knob"] else f"{label} ({r['n_seeds']:g} seed{'s' * (r['n_seeds'] > 1)})")
    if ax.get_ylim()[1] > 1.0:  # SSIM is at most 1: an interval of few seeds reaching past it runs off the frame
        ax.set_ylim(top=1.0)
    ax.set_xlabel(label_of(x) + "  (realism)")
    ax.set_ylabel(label_of("ssim_gt") + "  (fidelity)")
    ax.set_title(f"MedShift ablation, {chosen['dataset'].iloc[0]}/{chosen['preset'].iloc[0]} {task}: each seed at its "
                 "own validation-chosen knob", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
