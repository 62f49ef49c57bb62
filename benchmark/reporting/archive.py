"""The curated copy of finished runs that is committed: `results/records/` (records, config, train.json, samples).

Raw run folders (`results/runs/`, with checkpoints) are git-ignored and do not survive a fresh clone; tables and
figures are pure functions of the records and the saved sample images, so `python -m benchmark archive` copies
exactly those of every finished run (`done` verified) into `results/records/<method>/<dataset>-<preset>/<run>/`:
`config.json`, `train.json`, `records.jsonl.gz` (the records, byte for byte, gzipped) and `samples/` (the fixed test
scenes' images, `benchmark.protocol.samples`; by default of each method's lowest seed only, which the figures show).
`collect` and `figures` read both places; a run present in both is read from `results/runs/` (the live copy).
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from benchmark.errors import RunError
from benchmark.protocol.records import atomic_write, verify_done

ARCHIVE = "records"


def archive_runs(results_dir: Path, out: Path | None = None, all_samples: bool = False) -> list[Path]:
    """Copy every finished run's records, config, train.json and samples under `out` (default
    `<results_dir>/records`); returns the archived run folders.

    Args:
        all_samples: Keep the samples of every seed (default: each method's lowest seed per dataset and preset).
    """
    results_dir = Path(results_dir)
    out = Path(out) if out is not None else results_dir / ARCHIVE
    runs = [folder for folder, why in run_status(results_dir) if why is None]
    if not runs:
        raise RunError(f"no finished runs under {results_dir / 'runs'} to archive (run `python -m benchmark run`)")
    lowest: dict[tuple, int] = {}
    for run in runs:
        seed = json.loads((run / "config.json").read_text())["seed"]
        key = (run.parent.parent.name, run.parent.name)
        lowest[key] = min(lowest.get(key, seed), seed)
    written = []
    for run in runs:
        dest = out / run.relative_to(results_dir / "runs")
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "train.json"):
            if (run / name).is_file():
                atomic_write(dest / name, (run / name).read_text())
        data = gzip.compress((run / "records.jsonl").read_bytes(), mtime=0)
        tmp = dest / ".records.jsonl.gz.tmp"
        tmp.write_bytes(data)
        tmp.replace(dest / "records.jsonl.gz")
        seed = json.loads((run / "config.json").read_text())["seed"]
        keep = all_samples or seed == lowest[(run.parent.parent.name, run.parent.name)]
        shutil.rmtree(dest / "samples", ignore_errors=True)
        if keep and (run / "samples").is_dir():
            shutil.copytree(run / "samples", dest / "samples")
        written.append(dest)
    return written


def run_status(results_dir: Path) -> list[tuple[Path, str | None]]:
    """Every run folder with records under `results_dir/runs`, sorted, with `verify_done`'s verdict: None when its
    `done` marker vouches for its records (finished), else why not (still training, interrupted, or extended)."""
    return [(f.parent, verify_done(f.parent)) for f in sorted(Path(results_dir).glob("runs/*/*/*/records.jsonl"))]


def record_files(results_dir: Path, partial: bool = False,
                 status: list[tuple[Path, str | None]] | None = None) -> list[Path]:
    """The records files `collect` reads: `runs/*/*/*/records.jsonl` of finished runs (`done` verified; with
    `partial`, also of runs still training or interrupted), then the archived runs not read from `runs/`
    (`records/*/*/*/records.jsonl.gz`; a finished copy stands in while its live run is being extended).

    Args:
        status: `run_status(results_dir)`, when the caller already has it.
    """
    results_dir = Path(results_dir)
    status = run_status(results_dir) if status is None else status
    live = [folder / "records.jsonl" for folder, why in status if partial or why is None]
    names = {f.parent.relative_to(results_dir / "runs") for f in live}
    archived = [f for f in sorted(results_dir.glob(f"{ARCHIVE}/*/*/*/records.jsonl.gz"))
                if f.parent.relative_to(results_dir / ARCHIVE) not in names]
    return live + archived
