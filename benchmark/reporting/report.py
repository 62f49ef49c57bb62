"""What `collect` writes (`build_report`): the tables of every finished run's records (`summary.{csv,md,tex}`,
`headline.md`, `variants.md`, `table1-<task>.tex`, `gaps.md`, `convergence.md`) and the utility tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from benchmark.protocol.records import atomic_write
from benchmark.reporting.paper import ABS_CHANGE, REL_CHANGE, convergence, paper_table
from benchmark.reporting.tables import SAMPLES, formatted, headline
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
    from benchmark.reporting.utility_tables import attach_utility, load_utility, utility_summary, write_utility
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
    table = attach_utility(summary(df, {k: v for k, v in valid.items() if v is not None}), usum)
    paths = write_tables(table, out_dir, records=df) + write_utility(usum, out_dir, headline(table))
    return Report(table, paths, notes)


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
