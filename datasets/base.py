"""The one data object every method, runner and metric reads: `XrayDataset`, plus tasks.

A dataset is a manifest (one row per image: id, scene, subject, domain, split, path, ...) and a
root folder. Images are served as float32 tensors (N, 1, H, W) in [-1, 1] (display space: bone
bright). Rows sharing a `scene` are the same view in different domains; when `aligned` is True
they are pixel-exact pairs and the evaluation can fetch a test image's counterpart.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .io import read_image
from .splits import split_hash


def digest_cache_path(folder: Path) -> Path:
    """Where the file digests of the images under `folder` are cached: `$XRAYBENCH_CACHE` (default
    `~/.cache/xraybench`)/digests/<sha of the folder's path>.json, outside the data (which may be read-only)."""
    import os

    base = Path(os.environ.get("XRAYBENCH_CACHE") or Path.home() / ".cache" / "xraybench")
    return base / "digests" / f"{hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:16]}.json"


def file_digests(paths: list[Path]) -> list[str]:
    """The sha256 of each file's bytes, read from the cache where the file's size and mtime are those cached (a file
    edited in place gets a new mtime), else computed and cached. The cache is a convenience: one that cannot be read
    or written is ignored."""
    import json
    import os

    if not paths:
        return []
    cache_path = digest_cache_path(Path(os.path.commonpath([str(p) for p in paths])))
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out, changed = [], False
    for path in paths:
        st = path.stat()
        key, stamp = str(path), [st.st_size, st.st_mtime_ns]
        hit = cache.get(key)
        if not (isinstance(hit, list) and hit[:2] == stamp and len(hit) == 3):
            hit = [*stamp, hashlib.sha256(path.read_bytes()).hexdigest()]
            cache[key], changed = hit, True
        out.append(hit[2])
    if changed:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f".{cache_path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_path)
        except OSError:
            pass
    return out


@dataclass(frozen=True)
class Task:
    """A translation task: images of `sources` are translated to `target`."""

    name: str
    sources: tuple[str, ...]
    target: str

    @property
    def domains(self) -> tuple[str, ...]:
        return self.sources + (self.target,)


TASKS: dict[str, Task] = {
    "sim2real": Task("sim2real", ("syn_low", "syn_high"), "real_normal"),
    "dose": Task("dose", ("real_low",), "real_high"),
}


def get_task(name: str, domains: tuple[str, ...] | None = None) -> Task:
    """Look up a task; `src1+src2->tgt` defines an ad-hoc one. Domains are checked when given."""
    if name in TASKS:
        task = TASKS[name]
    elif "->" in name:
        src, tgt = name.split("->", 1)
        task = Task(name, tuple(s for s in src.split("+") if s), tgt)
    else:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(TASKS)} (or 'a+b->c')")
    if domains is not None:
        missing = [d for d in task.domains if d not in domains]
        if missing:
            raise KeyError(f"task {name!r} uses domain(s) {', '.join(missing)} that the dataset does not have; "
                           f"its domains: {', '.join(domains)}")
    return task


@dataclass
class XrayDataset:
    """Manifest-backed image set.

    Attributes:
        name: Dataset name (registry key).
        root: Folder the manifest paths are relative to.
        manifest: One row per image.
        domains: Domain names in label order (domain index = position).
        size: Side length images are served at.
        aligned: Whether rows of one scene are pixel-aligned across domains.
        config: Resolved dataset config (recorded by runs).
    """

    name: str
    root: Path
    manifest: pd.DataFrame
    domains: tuple[str, ...]
    size: int
    aligned: bool
    config: dict = field(default_factory=dict)
    interpolation: str = "area"
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.manifest["domain"]) - set(self.domains))
        if unknown:
            raise ValueError(f"manifest of {self.root} has unknown domain(s) {unknown}; known: {self.domains}")

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over every image's id, split, path and byte size (a run's config.json records it; a finished run
        is not reused for data that changed since). `content_fingerprint` also notices an edit that keeps the size."""
        h = hashlib.sha256()
        for rec in self.manifest.sort_values("id")[["id", "split", "path"]].itertuples(index=False):
            h.update(f"{rec.id}\t{rec.split}\t{rec.path}\t{(self.root / rec.path).stat().st_size}\n".encode())
        return h.hexdigest()

    @cached_property
    def content_fingerprint(self) -> str:
        """sha256 over every image's id, split, path and the sha256 of its bytes: an in-place edit that keeps a file's
        size is noticed too. Each file's digest is computed once and cached by (size, mtime) (`file_digests`)."""
        rows = self.manifest.sort_values("id")[["id", "split", "path"]]
        digests = file_digests([self.root / p for p in rows["path"]])
        h = hashlib.sha256()
        for rec, digest in zip(rows.itertuples(index=False), digests, strict=True):
            h.update(f"{rec.id}\t{rec.split}\t{rec.path}\t{digest}\n".encode())
        return h.hexdigest()

    @property
    def split_hash(self) -> str:
        return split_hash(self.manifest[["id", "split"]].to_dict("records"))

    def domain_index(self, domain: str) -> int:
        if domain not in self.domains:
            raise KeyError(f"unknown domain {domain!r}; available: {', '.join(self.domains)}")
        return self.domains.index(domain)

    def rows(self, domains: str | tuple[str, ...] | list[str], split: str | None = None) -> pd.DataFrame:
        """Manifest rows of the given domain(s) and split, sorted by id (deterministic order)."""
        domains = (domains,) if isinstance(domains, str) else tuple(domains)
        for d in domains:
            self.domain_index(d)
        m = self.manifest[self.manifest["domain"].isin(domains)]
        if split is not None:
            m = m[m["split"] == split]
        return m.sort_values("id").reset_index(drop=True)

    def load(self, rows: pd.DataFrame) -> torch.Tensor:
        """Images of `rows` as float32 (N, 1, size, size) in [-1, 1]."""
        imgs = [self._load_one(p) for p in rows["path"]]
        if not imgs:
            return torch.empty(0, 1, self.size, self.size)
        return torch.stack(imgs)

    def images(self, domain: str, split: str) -> tuple[torch.Tensor, pd.DataFrame]:
        rows = self.rows(domain, split)
        if rows.empty:
            raise ValueError(f"{self.name}: no images of domain {domain!r} in split {split!r}")
        return self.load(rows), rows

    def counterparts(self, rows: pd.DataFrame, domain: str) -> tuple[torch.Tensor | None, str | None]:
        """Aligned images of the same scenes in `domain`, or (None, reason) if unavailable."""
        if not self.aligned:
            return None, f"dataset {self.name} has no pixel-aligned pairs"
        other = self.manifest[self.manifest["domain"] == domain].set_index("scene")
        missing = [s for s in rows["scene"] if s not in other.index]
        if missing:
            return None, f"{len(missing)} scene(s) have no {domain} counterpart (e.g. {missing[0]})"
        return self.load(other.loc[list(rows["scene"])].reset_index()), None

    def _load_one(self, rel_path: str) -> torch.Tensor:
        if rel_path not in self._cache:
            arr = read_image(self.root / rel_path)
            t = torch.from_numpy(arr.astype(np.float32))[None]
            if t.shape[-1] != self.size or t.shape[-2] != self.size:
                t = resize_square(t, self.size, self.interpolation)
            self._cache[rel_path] = t * 2.0 - 1.0
        return self._cache[rel_path]


def resize_square(img: torch.Tensor, size: int, interpolation: str = "area") -> torch.Tensor:
    """Centre-crop (1, H, W) to a square, then resize to `size` with the stated interpolation.

    Args:
        img: (1, H, W) float in [0, 1].
        size: Output side.
        interpolation: "area" (box average, for downsampling), "bilinear" (antialiased) or "nearest".
    """
    _, h, w = img.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[:, top:top + side, left:left + side]
    if side == size:
        return img
    if interpolation == "area":
        out = torch.nn.functional.interpolate(img[None], size=(size, size), mode="area")
    elif interpolation == "bilinear":
        out = torch.nn.functional.interpolate(img[None], size=(size, size), mode="bilinear",
                                              antialias=True, align_corners=False)
    elif interpolation == "nearest":
        out = torch.nn.functional.interpolate(img[None], size=(size, size), mode="nearest")
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}; use area, bilinear or nearest")
    return out[0].clamp(0.0, 1.0)
