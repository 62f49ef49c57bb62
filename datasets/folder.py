"""Folder datasets: one sub-folder per domain, images as PNG/TIFF/DICOM, mapped by a small config.

Config (YAML or dict), e.g. `datasets/configs/x-digiskull.yaml`:

    name: x-digiskull
    root: /path/to/X-DigiSkull        # or --data-root
    domains:                          # domain name -> sub-folder (glob patterns allowed)
      syn_low: synthetic/low
      real_normal: real/normal
    size: 256                         # served size; images are centre-cropped and resized
    interpolation: area               # area | bilinear | nearest
    subject_regex: "^(?P<subject>[^_]+)"   # optional: groups images of one subject for splits
    aligned: false                    # true if equal file stems across domains are pixel pairs
    split_seed: 0

Files whose stem matches across domains form a `scene`. Bad files raise `BadImageError` naming the
file, unless `skip_bad` is set, in which case they are left out and listed in `skipped`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import yaml

from .base import XrayDataset
from .io import IMAGE_SUFFIXES, BadImageError, read_image
from .splits import assign_splits

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(config: str | Path) -> Path:
    """The YAML file `config` names: a file path, or the bare name of a bundled config (`x-digiskull`)."""
    path = Path(config)
    if path.is_dir():
        raise ValueError(f"dataset config {str(config)!r} is a folder; pass the YAML file that maps its domains (see "
                         "datasets/configs/x-digiskull.yaml), and the folder as --data-root")
    if path.is_file():
        return path
    bundled = CONFIG_DIR / f"{config}.yaml"
    if path.name == str(config) and bundled.is_file():  # a bare name only: never `<folder>.yaml` next to a path
        return bundled
    raise FileNotFoundError(f"dataset config {str(config)!r} not found: no such file, and no bundled config of that "
                            f"name in {CONFIG_DIR} ({', '.join(sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')))})")


def load_config(config: str | Path | dict) -> dict:
    if isinstance(config, dict):
        check_config(config)
        return dict(config)
    path = config_path(config)
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ValueError(f"dataset config {path}: not valid YAML{where} ({problem}); fix that line") from None
    except UnicodeDecodeError:
        raise ValueError(f"dataset config {path}: not UTF-8 text; save it as UTF-8") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"dataset config {path}: expected a mapping (name:, domains:, ...), got "
                         f"{type(cfg).__name__}") from None
    check_config(cfg, str(path))
    return cfg


INTERPOLATIONS = ("area", "bilinear", "nearest")
#: key -> (what it takes, test); None is each optional key's "not given".
_KEYS = {
    "name": ("a string", lambda v: isinstance(v, str) and bool(v)),
    "root": ("a folder path", lambda v: isinstance(v, str)),
    "domains": ("a mapping of domain name -> sub-folder (e.g. 'real_normal: real/normal')",
                lambda v: isinstance(v, dict) and bool(v) and all(isinstance(k, str) and isinstance(f, str)
                                                                  for k, f in v.items())),
    "size": ("a whole number of pixels of at least 1 (e.g. 256)",
             lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "interpolation": (f"one of {', '.join(INTERPOLATIONS)}", lambda v: v in INTERPOLATIONS),
    "subject_regex": ("a regular expression with a (?P<subject>...) group, or null", lambda v: isinstance(v, str)),
    "aligned": ("true or false", lambda v: isinstance(v, bool)),
    "split_seed": ("a whole number of at least 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "skip_bad": ("true or false", lambda v: isinstance(v, bool)),
}


def check_config(cfg: dict, where: str = "dataset config") -> None:
    """Every key of a folder-dataset config known and of its type, else a ValueError naming the file and the key."""
    for key, value in cfg.items():
        if key not in _KEYS:
            raise ValueError(f"dataset config {where}: unknown key {key!r}; valid keys: {', '.join(_KEYS)}")
        what, ok = _KEYS[key]
        if value is not None and not ok(value):
            raise ValueError(f"dataset config {where}: {key}: {value!r} is not {what}")
    if cfg.get("subject_regex"):
        try:
            re.compile(cfg["subject_regex"])
        except re.error as exc:
            raise ValueError(f"dataset config {where}: subject_regex {cfg['subject_regex']!r} is not a valid regular "
                             f"expression ({exc})") from None


def _check_name(path: Path) -> None:
    """Manifests, records and tables are UTF-8: a file name that is not is refused, naming it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise BadImageError(f"{shown}: file name is not valid UTF-8; rename the file") from None


def scan_folder(config: str | Path | dict, root: str | Path | None = None, skip_bad: bool = False) -> XrayDataset:
    """Build an `XrayDataset` from a folder of domain sub-folders.

    Args:
        config: Config dict, YAML path or name of a bundled config.
        root: Data root (overrides `config["root"]`).
        skip_bad: Leave out unreadable files (listed in `dataset.config["skipped"]`) instead of failing; the
            config's `skip_bad: true` does the same (the way to ask for it from the command line).

    Raises:
        FileNotFoundError: Root or a domain folder is missing.
        BadImageError: A file cannot be used (names the file), or sizes differ with no `size` configured.
    """
    cfg = load_config(config)
    skip_bad = skip_bad or bool(cfg.get("skip_bad", False))
    root = Path(root or cfg.get("root") or "")
    if not str(root) or not root.is_dir():
        raise FileNotFoundError(f"data root {str(root)!r} is not a folder; pass --data-root or set 'root' in the "
                                "config")
    domains = cfg.get("domains") or {}
    if not domains:
        raise ValueError("dataset config has no 'domains' mapping (domain name -> sub-folder)")
    regex = re.compile(cfg["subject_regex"]) if cfg.get("subject_regex") else None
    rows, skipped, shapes = [], [], {}
    for domain, pattern in domains.items():
        folders = sorted(p for p in root.glob(str(pattern)) if p.is_dir())
        if not folders:
            raise FileNotFoundError(f"domain {domain!r}: no folder matches {str(root / str(pattern))!r}; "
                                    f"fix 'domains' in the config (folders present: "
                                    f"{', '.join(sorted(p.name for p in root.iterdir() if p.is_dir())) or 'none'})")
        files = sorted(f for folder in folders for f in folder.iterdir()
                       if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"domain {domain!r}: folder(s) {', '.join(map(str, folders))} hold no "
                                    f"{'/'.join(IMAGE_SUFFIXES)} files")
        for f in files:
            try:
                _check_name(f)
                shapes[f] = read_image(f).shape
            except BadImageError as exc:
                if not skip_bad:
                    raise
                skipped.append(str(exc))
                continue
            stem = f.stem
            subject = stem
            if regex is not None:
                m = regex.search(stem)
                subject = m.group("subject") if m and "subject" in m.groupdict() else (m.group(0) if m else stem)
            rows.append(dict(id=f"{domain}/{stem}", scene=stem, subject=subject, view="", domain=domain,
                             path=str(f.relative_to(root)), dose="", kvp=""))
    if not rows:
        raise BadImageError(f"{root}: no usable images")
    size = cfg.get("size")
    if size is None:
        distinct = sorted(set(shapes.values()))
        if len(distinct) > 1:
            a = next(f for f, s in shapes.items() if s == distinct[0])
            b = next(f for f, s in shapes.items() if s == distinct[1])
            raise BadImageError(f"mixed image sizes: {a} is {distinct[0]}, {b} is {distinct[1]}; set 'size: N' in "
                                "the dataset config to centre-crop and resize every image")
        size = min(distinct[0])
    split_seed = int(cfg.get("split_seed", 0))
    name = cfg.get("name", root.name)
    splits = assign_splits(sorted({r["subject"] for r in rows}), name, split_seed)
    for r in rows:
        r["split"] = splits[r["subject"]]
    cfg_out = dict(cfg, root=str(root), size=int(size), skipped=skipped)
    return XrayDataset(name=name, root=root, manifest=pd.DataFrame(rows), domains=tuple(domains), size=int(size),
                       aligned=bool(cfg.get("aligned", False)), config=cfg_out,
                       interpolation=cfg.get("interpolation", "area"))
