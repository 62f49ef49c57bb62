"""Translations made elsewhere: `export` writes what a translator needs, `score` scores what it made like a trained
method's translations (the same scorer, bootstrap, records and tables).

The layout (`export_task` writes it, `score_external` reads it; the README of an export says it to its reader):

    <export>/<task>/manifest.csv          id, split, domain, subject, scene, view, target, scored
    <export>/<task>/sources/<split>/<id>.png   the source images to translate (16-bit greyscale PNG)
    <export>/<task>/target/train/<id>.png      the target domain's training images (unpaired examples)
    <translations>/<split>/<id>.png       the translations, one per exported source image, the same size

`test` is required (its `scored` rows are what the tables score: each test subject from one source, as the runner
does); `val` lets validation choose among several knob values (one folder per value, each scored by its own
`score` call into the same run) and, with `train`, lets `python -m benchmark utility` train its segmenter on the
translations. A translation is a 16-bit greyscale PNG (display values, 0 black to 65535 white, like the sources) or
a float32 TIFF in [0, 1].

The records are those of a run (`results/runs/<name>/<dataset>-<preset>/seed<k>-<id>/`) with `group = "external"`,
the folder's checksum `translations_sha256`, and the user's `--meta` (nfe, sec_per_image, n_params, train_sec
fill the columns of those names; every item is kept under `meta`). Nothing here trains or checks how the
translations were made: an external method's compute is not the suite's budget, so the tables rank it in its own
group.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark.errors import RunError

SPLITS = ("test", "val", "train")
GROUP = "external"
#: --meta keys that fill a record column of the same name (the rest stay under `meta` only)
META_COLUMNS = {"nfe": float, "sec_per_image": float, "n_params": int, "train_sec": float}
LAYOUT_VERSION = 1


# ------------------------------------------------------------------------------------------ what is translated
def split_rows(dataset, task, split: str) -> pd.DataFrame:
    """The source images of `split` a translator translates, with `scored`: test, the scenes the runner scores (each
    subject from one source, `validation.task_rows`); val and train, every source image of the split (validation
    reads its task rows, the utility's segmenter all of them)."""
    import benchmark.protocol.validation as V

    parts = []
    for source in task.sources:
        rows = dataset.rows(source, split)
        scored = set(V.task_rows(dataset, source, task.sources, split)["id"])
        if split == "test":
            rows = rows[rows["id"].isin(scored)]
        parts.append(rows.assign(scored=rows["id"].isin(scored)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _read_source(dataset, rel_path: str) -> np.ndarray:
    from datasets.io import read_image

    return read_image(dataset.root / rel_path)


def export_task(dataset, task_name: str, out: Path, splits: tuple[str, ...] = SPLITS) -> Path:
    """Write the sources of `task_name`'s `splits` and the target's training images under `out/<task>`; returns
    that folder. Each image is written from the dataset's own file (a 16-bit PNG source is copied value for value)."""
    from datasets import get_task
    from datasets.io import write_png16

    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise RunError(f"--split {unknown[0]}: unknown; choose from {', '.join(SPLITS)}")
    task = get_task(task_name, dataset.domains)
    folder = Path(out) / task.name
    rows = []
    for split in splits:
        part = split_rows(dataset, task, split)
        for _, r in part.iterrows():
            path = folder / "sources" / split / f"{r['id']}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_png16(path, _read_source(dataset, r["path"]))
        rows.append(part.assign(target=task.target))
    target = dataset.rows(task.target, "train")
    for _, r in target.iterrows():
        path = folder / "target" / "train" / f"{r['id']}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_png16(path, _read_source(dataset, r["path"]))
    cols = ["id", "split", "domain", "subject", "scene", "view", "target", "scored"]
    manifest = pd.concat(rows + [target.assign(target=task.target, scored=False)], ignore_index=True)
    manifest[[c for c in cols if c in manifest]].to_csv(folder / "manifest.csv", index=False)
    (folder / "README.md").write_text(_export_readme(dataset, task, splits, manifest))
    return folder


def _export_readme(dataset, task, splits, manifest: pd.DataFrame) -> str:
    counts = ", ".join(f"{s}: {int(((manifest['split'] == s) & (manifest['domain'] != task.target)).sum())}"
                       for s in splits)
    return f"""# Sources of {dataset.name} `{task.name}` to translate ({' + '.join(task.sources)} -> {task.target})

Made by `python -m benchmark export`. Translate every image under `sources/<split>/` to the `{task.target}` domain
and write each translation under one folder per knob value (or one folder if your method has none):

    <translations>/<split>/<id>.png    16-bit greyscale PNG, {dataset.size} x {dataset.size}, the same id

Images to translate: {counts}. `target/train/` holds the target domain's training images (unpaired examples, for a
method that learns from them). `manifest.csv` names each image's split, domain, subject, scene and view; `scored`
marks the test images the tables score.

- `test` is required; `val` lets validation choose among several knob values; `val` and `train` together let the
  downstream utility train its segmenter on your translations.
- Values as in the sources: display intensities, 0 black, 65535 white (or float32 TIFF in [0, 1]).
- Then: `python -m benchmark score --name <label> --translations <translations> --task {task.name}
  [--knob NAME=VALUE] [--meta nfe=4 --meta sec_per_image=0.02 --meta n_params=1.3e9]`.

A missing, extra, wrongly sized, 8-bit or non-finite file is refused with one line naming it.
"""


# ------------------------------------------------------------------------------------------ reading translations
def _read_translation(path: Path, size: int) -> np.ndarray:
    """(H, W) in [0, 1]. Not `datasets.io.read_image`: a constant translation is a (poor) result to score, not a
    broken file."""
    from PIL import Image

    if path.suffix.lower() == ".png":
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise RunError(f"{path}: a {im.mode} PNG; translations are 16-bit greyscale PNG (write "
                               "np.uint16 values, 0-65535)")
            arr = np.asarray(im, dtype=np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise RunError(f"{path}: values in [{arr.min():.0f}, {arr.max():.0f}]; a 16-bit PNG holds 0-65535")
        arr = arr / 65535.0
    else:
        arr = _read_float_tiff(path)
    if arr.ndim != 2:
        raise RunError(f"{path}: shape {arr.shape}; translations are single-channel (greyscale) images")
    if arr.shape != (size, size):
        raise RunError(f"{path}: {arr.shape[1]} x {arr.shape[0]} pixels; the sources are {size} x {size}")
    return arr


def _read_float_tiff(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise RunError(f"{path}: NaN or Inf pixels; write finite values in [0, 1]")
    if arr.min() < 0 or arr.max() > 1:
        raise RunError(f"{path}: values in [{arr.min():.3g}, {arr.max():.3g}]; a float TIFF holds [0, 1]")
    return arr


def read_translations(folder: Path, expected: dict[str, list[str]], size: int) -> tuple[dict, str]:
    """{split: {id: (H, W) array in [0, 1]}} of the splits present under `folder` (test required), and the sha256
    of every file read (names and bytes, in sorted order).

    Raises:
        RunError: one line naming the missing, extra or unreadable files and the fix.
    """
    folder = Path(folder)
    if not (folder / "test").is_dir():
        raise RunError(f"{folder}: no test/ folder; translations go under <translations>/<split>/<id>.png "
                       "(python -m benchmark export writes the sources and a README of the layout)")
    out, digest = {}, hashlib.sha256()
    for split in SPLITS:
        if not (folder / split).is_dir():
            continue
        files = {p.stem: p for p in sorted((folder / split).iterdir())
                 if p.is_file() and not p.name.startswith(".")}
        want = set(expected[split])
        missing, extra = sorted(want - set(files)), sorted(set(files) - want)
        if missing:
            raise RunError(f"{folder / split}: {len(missing)} translation(s) missing (e.g. {missing[0]}.png); "
                           "translate every image of the export's sources/" + split)
        if extra:
            raise RunError(f"{folder / split}: {len(extra)} file(s) that are no exported source of this task "
                           f"(e.g. {files[extra[0]].name}); remove them or export this task again")
        bad = [p.name for p in files.values() if p.suffix.lower() not in (".png", ".tif", ".tiff")]
        if bad:
            raise RunError(f"{folder / split}/{bad[0]}: not a PNG or TIFF; write 16-bit PNG")
        out[split] = {}
        for i in sorted(files):
            out[split][i] = _read_translation(files[i], size)
            digest.update(f"{split}/{files[i].name}\n".encode())
            digest.update(files[i].read_bytes())
    return out, digest.hexdigest()


# ------------------------------------------------------------------------------------------ scoring
class _Translations:
    """What the evaluator asks of a method, for translations that already exist (`Evaluator.translated`)."""

    device = torch.device("cpu")

    def __init__(self, knob_name: str | None, nfe, n_params):
        self.knob_name, self._nfe, self.n_params = knob_name, nfe, n_params
        self.hparams: dict = {}

    def apply_sampling(self) -> None:
        return None

    def nfe(self, knob) -> float | None:
        return self._nfe

    def translate(self, *args, **kwargs):
        raise RunError("an external method's translations are read from its folder; none was found for this point")


def parse_meta(items: list[str]) -> dict:
    """`--meta key=value` items as a dict (values parsed as YAML scalars: numbers stay numbers)."""
    import yaml

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunError(f"--meta {item!r}: expected key=value, e.g. --meta nfe=4")
        out[key.strip()] = yaml.safe_load(value)
    for key, kind in META_COLUMNS.items():
        if key in out:
            try:
                out[key] = kind(float(out[key]))
            except (TypeError, ValueError) as exc:
                raise RunError(f"--meta {key}={out[key]!r}: expected a number") from exc
    return out


def parse_knob(item: str | None) -> tuple[str | None, object]:
    """`--knob NAME=VALUE` as (name, value); (None, None) without one."""
    import yaml

    if item is None:
        return None, None
    name, sep, value = item.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name.strip()):
        raise RunError(f"--knob {item!r}: expected NAME=VALUE, e.g. --knob strength=0.5")
    parsed = yaml.safe_load(value)
    if not isinstance(parsed, (int, float)) or isinstance(parsed, bool):
        raise RunError(f"--knob {item!r}: the value is a number (one folder per value)")
    return name.strip(), parsed


#: Colours of external methods in figures (none of the built-in methods' colours), chosen by the label's hash
PALETTE = ("tab:olive", "tab:cyan", "tab:pink", "darkgoldenrod", "teal", "indigo")


def _style(name: str) -> dict:
    colour = PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(PALETTE)]
    return dict(color=colour, marker="P", label=name)


def _as_images(arrays: list[np.ndarray]) -> torch.Tensor:
    """(N, 1, H, W) float32 in [-1, 1], converted as the datasets convert their files (`datasets.base`)."""
    return torch.stack([torch.from_numpy(a.astype(np.float32))[None] for a in arrays]) * 2.0 - 1.0


def check_name(name: str) -> None:
    from methods import METHODS

    if name in METHODS:
        raise RunError(f"--name {name}: the name of a built-in method; label external translations otherwise "
                       f"(e.g. {name}-external)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._+-]*", name):
        raise RunError(f"--name {name!r}: use lower-case letters, digits and . _ + - (it names a results folder)")


def score_external(results_dir: Path, name: str, translations: Path, task_name: str, dataset, spec_fields: dict,
                   scorer, knob: tuple[str | None, object] = (None, None), meta: dict | None = None,
                   progress=print) -> list[dict]:
    """Score one folder of translations (one knob value) into the run of (`name`, data, task, seed); the run's
    validation choice among the knob values scored so far is made again; returns the run's records.

    Args:
        spec_fields: dataset, preset, seed, data_seed, dataset_config, data_root (the run's identity with `name`
            and the task).
        knob: (name, value) of this folder, or (None, None) for a method without a knob.
        meta: `parse_meta`'s dict: nfe, sec_per_image, n_params, train_sec fill those columns; all kept in `meta`.
    """
    from dataclasses import asdict

    import benchmark.protocol.validation as V
    from benchmark.protocol.config import RunSpec
    from benchmark.protocol.provenance import git_sha
    from benchmark.protocol.records import PROTOCOL_VERSION, atomic_write, read_records, write_done, write_records
    from benchmark.run.context import PreparedRun, RunContext
    from benchmark.run.evaluate import Evaluator
    from datasets import get_task

    check_name(name)
    meta = dict(meta or {})
    task = get_task(task_name, dataset.domains)
    expected = {s: list(split_rows(dataset, task, s)["id"]) for s in SPLITS}
    images, sha = read_translations(translations, expected, dataset.size)
    knob_name, knob_value = knob
    spec = RunSpec(method=name, tasks=(task.name,), **spec_fields)
    folder = spec.folder(results_dir)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    before = (cfg.get("external") or {})
    if before and before.get("knob") != knob_name:
        raise RunError(f"{folder}: scored with --knob {before.get('knob')}=...; score every folder of {name} with the "
                       f"same knob name (or pick another --name)")
    folders = dict(before.get("folders") or {})
    if folders.get(str(knob_value), {}).get("sha256") == sha and (folder / "done").is_file():
        progress(f"{name} {task.name} {knob_name or 'no knob'}={knob_value}: these translations are scored already "
                 f"({folder})")
        return read_records(folder / "records.jsonl")
    records = [r for r in read_records(folder / "records.jsonl") if r.get("knob_value") != knob_value]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done").unlink(missing_ok=True)
    method = _Translations(knob_name, meta.get("nfe"), meta.get("n_params"))
    ev = Evaluator(PreparedRun(spec, RunContext(Path(results_dir), scorer), folder, dataset, {}, {}, method), records)
    sec = meta.get("sec_per_image")
    extra = dict(group=GROUP, translations_sha256=sha, meta=meta or None,
                 **{k: meta[k] for k in ("train_sec",) if k in meta})
    for split in ("val", "test"):
        if split not in images:
            continue
        for source in task.sources:
            rows = V.task_rows(dataset, source, task.sources, split)
            ev.translated[ev.key(split, task.name, source, knob_value)] = (
                _as_images([images[split][i] for i in rows["id"]]), sec)
            rec = ev.val_record(task.name, source, knob_value) if split == "val" else \
                ev.test_record(task.name, source, knob_value, val_choice=False)
            ev.add(dict(rec, **extra))
    records, chosen = _with_val_choice(ev.records)
    write_records(folder / "records.jsonl", records)
    folders[str(knob_value)] = dict(path=str(Path(translations).resolve()), sha256=sha, splits=sorted(images),
                                    meta=meta)
    values = sorted({r["knob_value"] for r in records if r.get("split") == "test"}, key=lambda v: (v is None, v))
    info = dict(knob=knob_name, knob_grid=values or [None], reference_row=False, style=_style(name), group=GROUP)
    atomic_write(cfg_path, json.dumps(dict(
        spec=asdict(spec), run_id=spec.run_id, method_config={}, seed=spec.seed, split_hash=dataset.split_hash,
        data_identity=spec.data_identity, data_fingerprint=dataset.fingerprint,
        data_content=dataset.content_fingerprint, dataset_config=dataset.config, git_sha=git_sha(),
        knob=knob_name, knob_grid=values or [None], method_info=info, protocol=PROTOCOL_VERSION,
        external=dict(layout=LAYOUT_VERSION, knob=knob_name, folders=folders)), indent=2, default=str))
    write_done(folder, records)
    progress(f"{name} {task.name}: scored {knob_name or 'no knob'}={knob_value} ({', '.join(sorted(images))}); "
             + ("validation chooses among the knob values once each has val/ translations" if chosen is None else
                f"validation's choice: {knob_name}={next(iter(chosen))}" if knob_name else "")
             + f" -> {folder}")
    return records


def _with_val_choice(records: list[dict]) -> tuple[list[dict], set | None]:
    """The records with each test record's `val_choice`, and the chosen values: the knob value whose validation
    records are best (`validation.best_knob`) where every scored value has them; the only value where there is one;
    else None (several values without validation translations: nothing is chosen, every value is shown)."""
    import benchmark.protocol.validation as V
    from benchmark.protocol.records import seal

    values = list(dict.fromkeys(r["knob_value"] for r in records if r.get("split") == "test"))
    val = [r for r in records if r.get("split") == "val" and r["knob_value"] in values]
    if values and {r["knob_value"] for r in val} >= set(values):
        chosen = {V.best_knob(val)}
    else:
        chosen = set(values) if len(values) == 1 else None
    return [seal(dict(r, val_choice=None if chosen is None else r["knob_value"] in chosen))
            if r.get("split") == "test" else r for r in records], chosen


class ExternalTranslator:
    """The translations of an external run's validation-chosen folder, for the downstream utility
    (`benchmark.orchestration.utility`): its `train/` and `val/` images, read (and checked against the checksum
    recorded when they were scored) instead of translated."""

    external = True

    def __init__(self, folder: Path, dataset, task, knob):
        cfg = json.loads((Path(folder) / "config.json").read_text())
        ext = cfg["external"]
        self.knob_name = ext.get("knob")
        entry = ext["folders"].get(str(knob))
        if entry is None:
            raise RunError(f"{folder}: no translations recorded for {self.knob_name}={knob}")
        path = Path(entry["path"])
        if not {"train", "val"} <= set(entry["splits"]):
            raise RunError(f"utility: {path} has no {' and '.join(sorted({'train', 'val'} - set(entry['splits'])))}/ "
                           "translations; the segmenter trains on the training split's translations and chooses its "
                           "checkpoint on the validation split's: translate both (python -m benchmark export), then "
                           "score the folder again")
        expected = {s: list(split_rows(dataset, task, s)["id"]) for s in SPLITS}
        images, sha = read_translations(path, expected, dataset.size)
        if sha != entry["sha256"]:
            raise RunError(f"utility: {path} changed since it was scored; score it again (python -m benchmark score)")
        self.images = {i: a for split in ("train", "val") for i, a in images[split].items()}

    def read(self, rows: pd.DataFrame) -> torch.Tensor:
        return _as_images([self.images[i] for i in rows["id"]])


def external_names(results_dir: Path, dataset: str, preset: str) -> list[str]:
    """The labels of the external runs under `results_dir/runs` on this dataset and preset."""
    names = []
    for cfg in sorted(Path(results_dir).glob(f"runs/*/{dataset}-{preset}/*/config.json")):
        if json.loads(cfg.read_text()).get("external"):
            names.append(cfg.parent.parent.parent.name)
    return list(dict.fromkeys(names))
