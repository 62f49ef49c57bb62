"""Subject-level splits, seeded by (dataset, split seed) only - never by the method or run seed."""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = {"train": 0.56, "val": 0.11, "test": 0.33}


def _rank(dataset: str, split_seed: int, subject: str) -> str:
    return hashlib.sha256(f"{dataset}|{split_seed}|{subject}".encode()).hexdigest()


def assign_splits(subjects: list[str], dataset: str, split_seed: int = 0,
                  fractions: dict[str, float] | None = None) -> dict[str, str]:
    """Map each subject to train/val/test.

    Subjects are ordered by a hash of (dataset, split_seed, subject), so the assignment depends on
    nothing else and adding a subject moves no other subject's rank. Test gets round(f_test * n)
    subjects (at least 1 when n >= 3), val round(f_val * n) (at least 1 when n >= 5), train the rest.

    Args:
        subjects: Unique subject ids.
        dataset: Dataset name (part of the seed).
        split_seed: Split seed.
        fractions: Optional {"train", "val", "test"} fractions.

    Returns:
        {subject: split}.
    """
    if len(set(subjects)) != len(subjects):
        raise ValueError("subject ids must be unique")
    fr = fractions or DEFAULT_FRACTIONS
    n = len(subjects)
    n_test = max(round(fr["test"] * n), 1 if n >= 3 else 0)
    n_val = max(round(fr["val"] * n), 1 if n >= 5 else 0)
    order = sorted(subjects, key=lambda s: _rank(dataset, split_seed, s))
    out = {}
    for i, s in enumerate(order):
        out[s] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def split_hash(rows: list[dict]) -> str:
    """Short sha256 of the sorted (id, split) pairs: the identity of a split that every run records."""
    text = "\n".join(f"{r['id']},{r['split']}" for r in sorted(rows, key=lambda r: r["id"]))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
