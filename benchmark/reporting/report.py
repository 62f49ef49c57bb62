"""What `collect` writes (`build_report`): the tables of every finished run's records (`summary.{csv,md,tex}`,
`headline.md`, `variants.md`, `table1-<task>.tex`, `gaps.md`, `convergence.md`) and the utility tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.protocol.records import atomic_write
from benchmark.reporting.ablation import write_ablation
from benchmark.reporting.compute import (
    compute_note,
    convergence_labels,
    own_choices,
    with_compute_verdicts,
    write_compute,
)
from benchmark.reporting.distillation import write_distillation
from benchmark.reporting.load import method_group
from benchmark.reporting.paper import ABS_CHANGE, REL_CHANGE, convergence, paper_table, sampling_choices, selections
from benchmark.reporting.tables import SAMPLES, formatted, headline, markdown
from benchmark.reporting.utility_tables import paired_gap


@dataclass
class Report:
    """What `build_report` made: the summary table, the files written and the lines to tell the user."""

    table: pd.DataFrame
    paths: list[Path]
    notes: list[str] = field(default_factory=list)


def build_report(results_dir: Path, out_dir: Path | None = None, partial: bool = False) -> Report:
    """Every table of the records under `results_dir` (live runs and the archive), written under `out_dir`
    (default `results_dir/tables`). Realism is ranked by the metrics that passed `validity` on the records' preset.

    Args:
        partial: Also the records of runs not yet done (a table mid-sweep).
    """
    from benchmark.reporting.archive import run_status
    from benchmark.reporting.load import load_records
    from benchmark.reporting.tables import summary
    from benchmark.reporting.utility_tables import (
        attach_utility,
        load_utility,
        utility_rows,
        utility_summary,
        write_utility,
    )
    from benchmark.scoring.validity import valid_realism_metrics

    results_dir = Path(results_dir)
    status = run_status(results_dir)  # each run's done marker verified once
    df = load_records(results_dir, partial=partial, status=status)
    notes = list(df.attrs.get("notes", []))
    skipped = [(folder, why) for folder, why in status if why is not None]
    if skipped:
        notes.append(f"{'included' if partial else 'left out'} {len(skipped)} unfinished run(s) ("
                     + "; ".join(f"{f.relative_to(results_dir)}: {why}" for f, why in skipped[:3])
                     + ("; ..." if len(skipped) > 3 else "") + ")" + ("" if partial else "; --partial includes them"))
    out_dir = Path(out_dir) if out_dir is not None else results_dir / "tables"
    valid = {(d, p): valid_realism_metrics(out_dir, d, p) for d, p in df[["dataset", "preset"]].drop_duplicates()
             .itertuples(index=False)}
    usum = utility_summary(load_utility(results_dir))
    valid = {k: v for k, v in valid.items() if v is not None}
    table = attach_utility(summary(df, valid), usum)
    paths = write_tables(table, out_dir, records=df, usum=usum) + write_utility(
        usum, out_dir, utility_rows(df, usum, valid) if len(usum) else None)
    return Report(table, paths, notes)


def write_tables(table: pd.DataFrame, out_dir: Path, records: pd.DataFrame | None = None,
                 usum: pd.DataFrame | None = None) -> list[Path]:
    """summary.{csv,md,tex}, headline.md, table1-<task>.tex, gaps.md, convergence.md and chosen.md (from the
    `records`, when given; chosen.md with the utility summary `usum` beside) and variants.md under `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "summary.csv", out_dir / "summary.md", out_dir / "summary.tex", out_dir / "headline.md",
             out_dir / "variants.md"]
    atomic_write(paths[0], table.drop(columns=[SAMPLES], errors="ignore").to_csv(index=False, float_format="%.6g"))
    def note(ranked: pd.DataFrame, scope: str = "") -> str:
        """The footer of one table, naming the metric *that* table was ranked by on each axis."""
        utility = " Utility: mean Dice of a segmenter trained on the method's translations of the synthetic " \
                  "training images and tested on real images, on the row of the setting the seeds' validation " \
                  "chose (where the seeds chose different settings, on no row here: chosen.md has it; utility.md)." \
                  if "dice" in ranked and ranked["dice"].notna().any() else ""
        return (f"\n\nMean over seeds ± half-width of the 95% interval over test subjects (cluster bootstrap) and "
                f"seeds (Student t over seeds);{scope} {rank_note(ranked)}; rows not surely apart (the 95% interval of "
                "their paired difference includes 0) share a rank; paired (upper bound) rows see aligned pairs in "
                f"training and are ranked among themselves only;{external_note(ranked)} ref. = reference row, not "
                "ranked. n/a = unavailable (see the records' `unavailable`)."
                f"{utility}{cost_note(records)}{ceiling_note(ranked, out_dir)}\n")

    atomic_write(paths[1], markdown(formatted(table), index=False) + note(table))
    tex = formatted(table, tex=True).to_latex(index=False, escape=False)
    atomic_write(paths[2], tex.replace("±", r"$\pm$").replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$")
                 .replace("–", "--").replace("_", r"\_"))
    configured = headline(table)
    chosen = own_choices(records, table.attrs.get("valid_realism"), usum)  # compute's rows where seeds chose apart
    labels = convergence_labels(table, chosen)  # the headline's compute column and its footnote
    atomic_write(paths[3], markdown(with_compute_verdicts(formatted(configured), labels), index=False)
                 + note(configured) + compute_note(labels)
                 + "\n" + "\n".join(f"* {line}" for line in leaders(configured)) + "\n")
    variants_path = paths.pop()
    for task in configured["task"].unique():
        paths.append(out_dir / f"table1-{task}.tex")
        atomic_write(paths[-1], paper_table(configured, task))
    for name, make, footer in _record_tables(configured):
        part = make(records) if records is not None else pd.DataFrame()
        if len(part):
            paths.append(out_dir / name)
            atomic_write(paths[-1], markdown(part, index=False, floatfmt=".3f") + "\n\n" + footer + "\n")
    if records is not None:
        paths += write_chosen(records, table.attrs.get("valid_realism"), out_dir, usum)
    paths += write_compute(table, out_dir, chosen)
    paths += write_ablation(table, records, out_dir)
    paths += write_distillation(table, out_dir)
    paths.append(variants_path)
    variants = headline(table, variants=True)
    if len(variants):
        atomic_write(variants_path, markdown(formatted(variants), index=False) + note(
            variants, " ranks within this table (methods with `--set` variants);"))
    else:
        variants_path.unlink(missing_ok=True)
        paths.pop()
    return paths


CHOSEN_NOTE = (
    "Each method at the knob value *each seed's own* validation chose (DomainBed's reading of a per-seed selection; "
    "knob: the choices in seed order, `+` where a seed's sources chose differently), the configured methods only. "
    "Mean over seeds ± half-width of the 95% interval over test subjects (cluster bootstrap) and seeds (Student t "
    "over seeds); ranks as in headline.md, among these rows. headline.md shows every knob value of the grid, with "
    "the share of seeds × sources that chose it. Utility (where measured): the segmenter's Dice on real test images "
    "after training on the method's translations at each seed's own choice, as the other columns (utility.md).")


def write_chosen(records: pd.DataFrame, valid_realism: dict | None, out_dir: Path,
                 usum: pd.DataFrame | None = None) -> list[Path]:
    """chosen.md (`tables.validation_choice`), where any record carries a validation choice; with the downstream
    utility of the same choices where `usum` (`utility_tables.utility_summary`) has it."""
    from benchmark.reporting.tables import validation_choice
    from benchmark.reporting.utility_tables import attach_utility

    path = Path(out_dir) / "chosen.md"
    part = validation_choice(records, valid_realism)
    if part.empty:
        path.unlink(missing_ok=True)
        return []
    if usum is not None and not usum.empty:
        part = attach_utility(part, usum, own_choices=True)
    atomic_write(path, markdown(formatted(part).drop(columns=["val choice"], errors="ignore"), index=False)
                 + "\n\n" + CHOSEN_NOTE + "\n")
    return [path]


def ceiling_note(table: pd.DataFrame, tables_dir: Path) -> str:
    """The ceiling on fidelity of each dataset and preset of `table` that has one (`ceiling.md`): a footer sentence."""
    from benchmark.scoring.ceiling import ceiling_of

    parts = []
    for d, p in table[["dataset", "preset"]].drop_duplicates().itertuples(index=False):
        ceiling = ceiling_of(tables_dir, d, p)
        if ceiling:
            per = "; ".join(f"{dom} {e['ssim_gt'][0]:.4f} / {e['psnr_gt'][0]:.1f} dB" for dom, e in ceiling.items()
                            if isinstance(e, dict))
            parts.append(f" Ceiling on fidelity of {d}/{p} (SSIM (gt) / PSNR (gt) between two realisations of the "
                         f"real images' fine anatomy, ceiling.md): {per}.")
    return "".join(parts)


def _record_tables(configured: pd.DataFrame) -> list[tuple]:
    """(file name, records -> table, footer) of the tables made from the records themselves."""
    return [
        ("gaps.md", lambda records: paired_gap(records, configured),
         "What unpaired translation costs: per metric, the best unpaired row against the best paired upper bound of "
         "the headline table; advantage_of_pairs = the bound's value minus the unpaired one, signed so that > 0 "
         "favours the bound, with its 95% interval (lo, hi) from the two rows' replicates on the same test subjects "
         "and seed draws."),
        ("convergence.md", convergence,
         "Validation learning curves (the records' curve scenes, mean over seeds): spectrum distance and SSIM to the "
         "aligned image at 3/4 of the training budget and at its end, with the 95% interval of each change (end minus "
         "3/4; over seeds and the validation subjects, paired replicate by replicate). Per metric: improving = surely "
         f"better by more than {REL_CHANGE:.0%} of the realism value or {ABS_CHANGE} SSIM (gt); flat = the whole "
         "interval within that either way; worsening = surely worse by more than that; else undecided. Still "
         "improving = a metric improving and none worsening; past its best = a metric worsening and none improving "
         "(where the checkpoint rule reads that metric, it chooses one before the end); trading = one improving, "
         "the other worsening; flat = both flat."),
        ("selection.md", selections,
         "Both checkpoint rules side by side, from the validation learning curves alone (the records' curve scenes; "
         "steps per seed): by realism (the spectrum distance, or FID where recorded) and by fidelity (SSIM to the "
         "aligned image), with each rule's validation realism and fidelity (means over seeds). `rule_used` is the "
         "rule the run's test records rest on (realism for every learned method since protocol 3; under protocol 2 "
         "fidelity for the paired upper bounds). Test records exist only at the checkpoint the rule used."),
        ("sampling.md", sampling_choices,
         "The sampling choice on validation: every candidate of a method's sampling grid (MedShift: guidance, solver, "
         "step size), scored after checkpoint selection at the default knob value on the whole validation split, "
         "with its validation SSIM (gt) and realism (means over sources, then seeds; per seed in seed order). "
         "Each seed's run uses the candidate best by the knob rule (`validation.best_sampling`); `used_by` counts "
         "the seeds whose test records used it. A `--set` variant pins what it sets and is not listed."),
    ]


#: What each rank's metric is called in a table's footer.
RANK_WORDS = {"realism_rank": "realism rank (global statistics)", "texture_rank": "texture rank (noise texture)",
              "structure_rank": "structure rank", "fidelity_rank": "fidelity rank"}
METRIC_WORDS = {"ssim_src_gap": "distance of SSIM (src) to its ideal, no translation's SSIM (gt)",
                "ssim_src": "SSIM to the source (MedShift Table 1 convention)",
                "ssim_gt": "SSIM to the aligned real image"}


def rank_note(ranked: pd.DataFrame) -> str:
    """"realism rank (global statistics) by frd, texture rank (noise texture) by nps_flat, ...": each rank with the
    metric(s) it was made by in this table, read from the table itself (`<axis>_by`), so the footer cannot disagree
    with the ranks above it; an axis no row was ranked on says so."""
    parts = []
    for col, words in RANK_WORDS.items():
        by_col = col.replace("_rank", "_by")
        used = [METRIC_WORDS.get(m, m) for m in ranked[by_col].dropna().unique()] if by_col in ranked else []
        parts.append(f"{words} by {', '.join(used)}" if used else f"{words}: none (no metric valid for every row)")
    unchecked = "realism_validated" in ranked and (ranked["realism_validated"] == False).any()  # noqa: E712
    return "; ".join(parts) + (" (realism metrics not checked by `python -m benchmark validity` on this preset)"
                               if unchecked else "")


def cost_note(records: pd.DataFrame | None) -> str:
    """What `train_sec` covers, generated from the records: a method whose one fit serves several tasks has that
    fit's seconds on each of those tasks' rows (the others fit once per task)."""
    from benchmark.reporting.load import shared_fits

    shared = shared_fits(records) if records is not None else {}
    if not shared:
        return ""
    which = "; ".join(f"{m}: one fit serves {', '.join(ts)}" for m, ts in shared.items())
    return (f" train_sec: seconds of training of the fit a row rests on ({which}: its train_sec is that one fit's, "
            "the same on each of those tasks' rows; the other learned methods fit once per task).")


#: The columns `leaders` names the best unpaired row of (what a reading of the tables claims).
LEADER_METRICS = ("fid", "frd", "nps_dist", "nps_flat", "ssim_gt", "ssim_src_gap")


def leaders(table: pd.DataFrame) -> list[str]:
    """Generated sentences, one per task and metric: the unpaired row with the best mean and the unpaired rows not
    surely apart from it (the 95 % interval of their paired difference includes 0), so that a reading of the tables
    never calls a method "the best" where its lead is within the intervals."""
    import benchmark.reporting.stats as S
    from benchmark.reporting.load import method_group
    from benchmark.reporting.tables import spec_of

    out = []
    for task, part in table.groupby("task", sort=False):
        unpaired = part[part["method"].map(method_group) == "unpaired"]
        for m in LEADER_METRICS:
            if m not in unpaired or unpaired[m].isna().any() or len(unpaired) < 2:
                continue
            higher = spec_of(m).higher_is_better
            best_i = unpaired[m].idxmax() if higher else unpaired[m].idxmin()
            best = unpaired.loc[best_i]
            tied = []
            for i, r in unpaired.iterrows():
                a, b = (x[SAMPLES].get(m) if isinstance(x.get(SAMPLES), dict) else None for x in (best, r))
                if i == best_i or a is None or b is None:
                    continue
                d = S.difference(a, b)
                if not (d.lo > 0 or d.hi < 0):  # the interval includes 0 (or is unknown): not surely apart
                    tied.append(_row_name(r))
            out.append(f"{task}, {spec_of(m).label}: best unpaired mean {_row_name(best)} ({best[m]:.3f}); "
                       + (f"not surely apart from it: {', '.join(tied)}" if tied else "surely ahead of every other "
                          "unpaired row"))
    return out


def _row_name(r) -> str:
    return f"{r['method']}" + (f" {r['knob']}={r['knob_value']:g}" if r.get("knob") else "")


def external_note(ranked: pd.DataFrame) -> str:
    """The footer's words on translations made outside the suite, where a table has them."""
    if not (ranked["method"].map(method_group) == "external").any():
        return ""
    return (" external rows are translations made outside the suite (`python -m benchmark score`), trained on their "
            "own budget and ranked among themselves only;")
