"""Subject-level splits, seeded by (dataset, split seed) only - never by the method or run seed.

Four roles, disjoint by subject:
* `train` - what methods fit on;
* `val`   - every choice (training length, checkpoint, default settings, headline knob value);
* `test`  - read once per final run: the translated images that the tables report;
* `ref`   - real images of *other* subjects that set-level realism (FRD, FID, spectra, histograms) compares a
  translated set with, so that reproducing a scene's own aligned counterpart earns nothing. Methods never see it.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test", "ref")
#: Folder datasets: fractions of the subjects (skull-sim presets give counts instead).
DEFAULT_FRACTIONS = {"train": 0.45, "val": 0.1, "test": 0.3, "ref": 0.15}
#: Smallest number of subjects at which a held-out split gets at least one subject.
MIN_SUBJECTS = {"test": 3, "ref": 4, "val": 5}


def _rank(dataset: str, split_seed: int, subject: str) -> str:
    return hashlib.sha256(f"{dataset}|{split_seed}|{subject}".encode()).hexdigest()


def split_sizes(n: int, fractions: dict[str, float] | None = None,
                counts: dict[str, int] | None = None) -> dict[str, int]:
    """Subjects per held-out split (test, ref, val); train gets the rest.

    Args:
        n: Number of subjects.
        fractions: {"test", "ref", "val"} fractions (default `DEFAULT_FRACTIONS`); ignored with `counts`.
        counts: Exact {"test", "ref", "val"} subject counts.
    """
    if counts is not None:
        sizes = {s: int(counts.get(s, 0)) for s in ("test", "ref", "val")}
    else:
        fr = fractions or DEFAULT_FRACTIONS
        sizes = {s: max(round(fr.get(s, 0.0) * n), 1 if n >= MIN_SUBJECTS[s] else 0) for s in ("test", "ref", "val")}
    if sum(sizes.values()) >= n and n > 0:
        raise ValueError(f"split sizes {sizes} leave no training subject out of {n}")
    return sizes


def assign_splits(subjects: list[str], dataset: str, split_seed: int = 0,
                  fractions: dict[str, float] | None = None, counts: dict[str, int] | None = None) -> dict[str, str]:
    """Map each subject to train/val/test/ref.

    Subjects are ordered by a hash of (dataset, split_seed, subject), so the assignment depends on
    nothing else and adding a subject moves no other subject's rank. The first subjects in that order
    are test, then ref, then val; train gets the rest (sizes from `split_sizes`).

    Returns:
        {subject: split}.
    """
    if len(set(subjects)) != len(subjects):
        raise ValueError("subject ids must be unique")
    sizes = split_sizes(len(subjects), fractions, counts)
    order = sorted(subjects, key=lambda s: _rank(dataset, split_seed, s))
    bounds, total = [], 0
    for split in ("test", "ref", "val"):
        total += sizes[split]
        bounds.append((total, split))
    out = {}
    for i, s in enumerate(order):
        out[s] = next((split for bound, split in bounds if i < bound), "train")
    return out


def split_hash(rows: list[dict]) -> str:
    """Short sha256 of the sorted (id, split) pairs: the identity of a split that every run records."""
    text = "\n".join(f"{r['id']},{r['split']}" for r in sorted(rows, key=lambda r: r["id"]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
