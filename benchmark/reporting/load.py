"""Records of live runs (`results/runs`) and of the archive (`results/records`) as one DataFrame, one fit per point;
what each method is (its group, its base method, its table information)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.errors import ConfigError, NotFound
from benchmark.protocol.records import read_records
from benchmark.scoring.declarations import METRICS


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


def dataset_name(dataset: str | None, generator_version) -> str | None:
    """A record's dataset under today's names: `skull-sim` made by generator version 2 (before v3 became the default;
    records that name no version predate it) is `skull-sim-v2`."""
    if dataset == "skull-sim" and str(generator_version or "2") == "2":
        return "skull-sim-v2"
    return dataset


def _read_method_info(files: list[Path]) -> dict[str, str]:
    """Fill `_METHOD_INFO` from the runs' config.json; return {record file: dataset name} for the runs whose dataset
    was renamed since they ran (skull-sim of generator version 2 is `skull-sim-v2` since v3 became the default)."""
    import json

    renamed = {}
    for f in files:
        cfg_path = Path(f).parent / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        except ValueError:
            continue
        info, name = cfg.get("method_info"), (cfg.get("spec") or {}).get("method")
        if isinstance(info, dict) and name:
            _METHOD_INFO.setdefault(name, info)
        data = cfg.get("dataset_config") or {}
        if data.get("dataset") and dataset_name(data["dataset"], data.get("generator_version")) != data["dataset"]:
            renamed[str(f)] = dataset_name(data["dataset"], data.get("generator_version"))
    return renamed


def load_records(results_dir: Path, partial: bool = False, status: list | None = None) -> pd.DataFrame:
    """All records of the finished runs under `results_dir/runs` (with `partial`, of unfinished ones too: a table
    mid-sweep) and `results_dir/records` (the archive, `benchmark.reporting.archive`), or a folder of .jsonl
    fixtures, as one DataFrame; `status`: `benchmark.reporting.archive.run_status(results_dir)` when the caller
    already has it.

    Raises:
        ValueError: records of two protocol versions, or two run folders recording the same point.
    """
    from benchmark.reporting.archive import record_files, run_status

    results_dir = Path(results_dir)
    status = run_status(results_dir) if status is None else status
    files = record_files(results_dir, partial, status) or sorted(results_dir.glob("*.jsonl"))
    rows = [dict(r, _file=str(f)) for f in files for r in read_records(f)]
    renamed = _read_method_info(files)
    for r in rows:
        r["dataset"] = renamed.get(r["_file"], r.get("dataset"))
    if not rows:
        left = [(folder, why) for folder, why in status if why is not None]
        if left:
            shown = "; ".join(f"{_rel(f, results_dir)}: {why}" for f, why in left[:3])
            raise NotFound(f"no finished runs under {results_dir}: {len(left)} left out ({shown}"
                                    f"{'; ...' if len(left) > 3 else ''}); run their command again to finish them, "
                                    "or --partial to include what they hold")
        raise NotFound(f"no records under {results_dir} (run `python -m benchmark run` first)")
    df = pd.DataFrame(rows)
    df["protocol"] = df["protocol"].fillna(1).astype(int) if "protocol" in df else 1
    df, older = _older_archive_left_out(df, results_dir)
    if df["protocol"].nunique() > 1:
        old, new = (df[df["protocol"] == v]["_file"].iloc[0] for v in (df["protocol"].min(), df["protocol"].max()))
        raise ConfigError(f"records of protocol versions {sorted(map(int, df['protocol'].unique()))} are mixed (e.g. "
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
        raise ConfigError(f"two fits record {r['method']} seed {r['seed']} {r['task']} {r['source']} "
                         f"knob={r['knob_value']!r}: {Path(files[0]).parent} and {Path(files[-1]).parent}; one fit per "
                         "(method, setting, seed, data): delete one of the folders, or keep fits that differ in how "
                         "they ran (--precision, --accelerator, --devices) under another --results-dir")
    df.attrs["notes"] = older + notes
    # a variant (--set / --max-steps) is its own row: "medshift (guidance=3.0)"
    df["method"] = df["method"].where(df["setting"] == "", df["method"] + " (" + df["setting"] + ")")
    return df


def _older_archive_left_out(df: pd.DataFrame, results_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """Leave out the archived records of an older protocol version than every live run's (a newcomer's runs under
    today's protocol beside an archive made under the previous one: the archive is the past, not a mix), with one
    line saying so. Live runs of two versions, or an archive newer than a live run, stay mixed (an error below)."""
    archived = df["_file"].str.endswith(".jsonl.gz")
    if archived.all() or not archived.any():
        return df, []
    live = set(df.loc[~archived, "protocol"])
    older = archived & (df["protocol"] < min(live))
    if len(live) > 1 or not older.any():
        return df, []
    runs = df.loc[older, "_file"].map(lambda f: str(Path(f).parent)).nunique()
    versions = ", ".join(str(v) for v in sorted(set(df.loc[older, "protocol"])))
    return df[~older], [f"left out the archive's {runs} run(s) of protocol {versions} (records/): the live runs are "
                        f"protocol {min(live)}; `make archive` replaces them once today's runs are finished"]


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


def test_records(df: pd.DataFrame) -> pd.DataFrame:
    """The test records (validation records are the learning curves and the knob choice)."""
    return df[df["split"] == "test"] if "split" in df else df


def shared_fits(df: pd.DataFrame) -> dict[str, list[str]]:
    """{method: the tasks one fit serves} for the methods whose runs translate several tasks with one model (MedShift:
    one model for every domain pair), read from the records (a run id under several tasks): their `train_sec` is
    the cost of that one fit, and its checkpoint was selected on all those tasks' learning curves."""
    if "run_id" not in df or df.empty:
        return {}
    tasks = df.groupby(["method", "run_id"], sort=False)["task"].unique()
    out: dict[str, list[str]] = {}
    for (method, _), ts in tasks.items():
        if len(ts) > 1:
            out[method] = sorted(set(out.get(method, [])) | set(ts))
    return out


def is_reference(method: str) -> bool:
    """Reference rows (no translation, histogram matching) are shown but not ranked (`reference_row` declaration)."""
    return bool(method_info(method).get("reference_row"))


#: Table groups in display order: the unpaired methods the benchmark ranks, translations made outside the suite
#: (`python -m benchmark score`: their compute is not the suite's budget, so they are ranked among themselves), the
#: students distilled from a finished fit (their compute is their teacher's budget and their own: ranked among
#: themselves, compared with their teacher in distillation.md), the paired upper bounds (ranked among themselves), the
#: reference rows (unranked).
GROUPS = ("unpaired", "external", "distilled", "paired", "reference")


GROUP_LABELS = {"unpaired": "unpaired", "external": "external (own budget)",
                "distilled": "distilled (teacher's budget + own)", "paired": "paired (upper bound)",
                "reference": "reference"}


def method_group(method: str) -> str:
    """A method's table group (`TranslationMethod.group`; runs from before it was recorded: from `reference_row`; a
    student's runs from before the "distilled" group existed: from its recorded `teacher`)."""
    info = method_info(method)
    if info.get("teacher"):
        return "distilled"
    return info.get("group") or ("reference" if info.get("reference_row") else "unpaired")
