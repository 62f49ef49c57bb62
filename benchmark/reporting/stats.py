"""Intervals over seeds and test subjects, valid with a few seeds, and comparisons of two rows.

A row of a table is a method at a knob value, fitted with n seeds and scored on one test set. Its estimate is the
mean over seeds of the per-seed values; two things would change it on a re-run: the seeds (training noise) and the
test set (which subjects were drawn). Every seed is scored on the *same* test set, so

    Var(mean) = s^2 / n  +  v_test

with s^2 the sample variance of the per-seed values (training noise, n - 1 degrees of freedom) and v_test the
variance over the subject-level cluster bootstrap of the seed mean (replicate b of every seed uses the same subject
draw, `benchmark.scoring.metrics.subject_bootstrap`). The interval is

    mean ± t_{q, nu} * sqrt(s^2 / n + v_test),   nu = (s^2 / n + v_test)^2 / ((s^2 / n)^2 / (n - 1))

(Welch-Satterthwaite: the bootstrap part counts as known; with 3 seeds and seed noise dominating this is the
Student-t interval over seeds with 2 degrees of freedom, with test-set noise dominating it is the normal interval of
the bootstrap). It is centred on the estimate, so it always contains it: a set-level metric (FID, FRD) is biased
under the bootstrap, whose resampled sets repeat images, and a percentile interval of such replicates can miss
its own estimate (CycleGAN's FRD 5.212 was given [5.232, 5.389]); here the bootstrap gives a spread only.

`tests/benchmark/reporting/test_stats.py` checks coverage on a simulated two-level model (seeds x subjects) with
known truth: at least 90 % of nominal 95 % intervals cover it at 3 and at 5 seeds, whichever level dominates.

Two rows scored on the same test subjects are compared by the interval of their difference: the seed parts add
(independent fits), the bootstrap part is the variance of the replicate-by-replicate difference (the same subject
draws, so test-set noise they share cancels). Ranks are decided from these intervals (`benchmark.reporting.tables`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


@dataclass(frozen=True, eq=False)
class Sample:
    """What a row's interval is computed from.

    Attributes:
        seeds: (n,) per-seed values (each the mean over the task's sources).
        replicates: (n, B) subject-bootstrap replicates of each seed's value (the same subject draw b for every seed
            and, on one test set, for every method), or None where the records have none.
        ids: the seed numbers of `seeds`, in their order, where known (None: unknown).
    """

    seeds: np.ndarray
    replicates: np.ndarray | None = None
    ids: tuple[int, ...] | None = None

    def __eq__(self, other) -> bool:  # arrays: equal values (NaN equal to NaN), not elementwise truth
        if not isinstance(other, Sample):
            return NotImplemented
        same = (self.replicates is None) == (other.replicates is None)
        return same and np.array_equal(self.seeds, other.seeds, equal_nan=True) and (
            self.replicates is None or np.array_equal(self.replicates, other.replicates, equal_nan=True))

    __hash__ = None

    @property
    def n(self) -> int:
        return int(np.isfinite(self.seeds).sum())

    @property
    def mean(self) -> float:
        v = self.seeds[np.isfinite(self.seeds)]
        return float(v.mean()) if len(v) else float("nan")

    def seed_var(self) -> float:
        """s^2 / n, the variance of the mean over seeds from training noise (NaN with one seed: unknown)."""
        v = self.seeds[np.isfinite(self.seeds)]
        return float(v.var(ddof=1) / len(v)) if len(v) > 1 else float("nan")

    def on_seeds(self, ids) -> Sample:
        """The sample restricted to the seeds `ids` (a subset of its own `ids`), in its own order."""
        if self.ids is None or not set(ids) <= set(self.ids):
            raise ValueError(f"seeds {sorted(ids)} are not all among this sample's {self.ids}")
        keep = [i for i, s in enumerate(self.ids) if s in set(ids)]
        reps = None if self.replicates is None else np.asarray(self.replicates)[keep]
        return Sample(np.asarray(self.seeds)[keep], reps, tuple(self.ids[i] for i in keep))

    def seed_mean_replicates(self) -> np.ndarray | None:
        """(B,) replicate b of the mean over seeds."""
        if self.replicates is None:
            return None
        return np.asarray(self.replicates, np.float64).mean(axis=0)


@dataclass(frozen=True)
class Interval:
    """`estimate` ± `half` (lo, hi), with the degrees of freedom of its t quantile (inf: normal)."""

    estimate: float
    lo: float
    hi: float
    dof: float

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2


def _interval(estimate: float, seed_parts: list[tuple[float, int]], test_var: float, level: float) -> Interval:
    """estimate ± t * sqrt(sum of seed parts + test_var); seed_parts: [(variance of a mean, its n)]."""
    from scipy import stats

    known = [(v, n) for v, n in seed_parts if np.isfinite(v)]
    test_var = test_var if np.isfinite(test_var) else 0.0
    total = sum(v for v, _ in known) + test_var
    if not np.isfinite(estimate) or (not known and test_var == 0.0):
        return Interval(estimate, float("nan"), float("nan"), float("nan"))
    denominator = sum(v * v / (n - 1) for v, n in known if v > 0)
    dof = total * total / denominator if denominator > 0 else math.inf
    half = float(stats.t.ppf(0.5 + level / 2, dof) if np.isfinite(dof) else stats.norm.ppf(0.5 + level / 2))
    half *= math.sqrt(total)
    return Interval(estimate, estimate - half, estimate + half, dof)


def _test_var(replicates: np.ndarray | None) -> float:
    if replicates is None:
        return float("nan")
    r = np.asarray(replicates, np.float64)
    r = r[np.isfinite(r)]
    return float(r.var(ddof=1)) if len(r) > 1 else float("nan")


def interval(sample: Sample, level: float = LEVEL) -> Interval:
    """The row's interval: seeds and test-set sampling together (module docstring). With one seed the seed part is
    unknown and only test-set sampling is covered; without replicates only the seeds are."""
    return _interval(sample.mean, [(sample.seed_var(), sample.n)], _test_var(sample.seed_mean_replicates()), level)


def paired(a: Sample, b: Sample) -> bool:
    """Whether the replicates of `a` and `b` are paired (the same number of subject draws: one test set)."""
    return a.replicates is not None and b.replicates is not None and \
        np.asarray(a.replicates).shape[1] == np.asarray(b.replicates).shape[1]


def difference(a: Sample, b: Sample, level: float = LEVEL) -> Interval:
    """Interval of mean(a) - mean(b): independent seeds, the test-set part from the replicate-by-replicate difference
    where the two rows share their subject draws (else the two test-set parts add)."""
    if paired(a, b):
        test_var = _test_var(a.seed_mean_replicates() - b.seed_mean_replicates())
    else:
        test_var = _test_var(a.seed_mean_replicates()) + _test_var(b.seed_mean_replicates())
    return _interval(a.mean - b.mean, [(a.seed_var(), a.n), (b.seed_var(), b.n)], test_var, level)


def seed_paired_difference(a: Sample, b: Sample, level: float = LEVEL) -> Interval:
    """Interval of mean(a) - mean(b) where seed i of `a` and of `b` is the same seed (a configuration and its
    default refit or resampled with that seed): Student t over the per-seed differences (their own spread, so a
    training noise the two share cancels) and the test-set part from the replicate-by-replicate difference where
    the two rows share their subject draws. With one seed only test-set sampling is covered."""
    if len(a.seeds) != len(b.seeds):
        raise ValueError(f"seed-paired rows need the same seeds: {len(a.seeds)} against {len(b.seeds)}")
    if paired(a, b):
        return interval(Sample(a.seeds - b.seeds, np.asarray(a.replicates) - np.asarray(b.replicates)), level)
    d = Sample(a.seeds - b.seeds)
    test_var = _test_var(a.seed_mean_replicates()) + _test_var(b.seed_mean_replicates())
    return _interval(d.mean, [(d.seed_var(), d.n)], test_var, level)


def difference_ranks(samples: list[Sample], higher_is_better: bool, level: float = LEVEL) -> np.ndarray:
    """1 + the number of rows whose difference to this row has an interval entirely on the better side (rows not
    surely apart share a rank)."""
    ranks = np.ones(len(samples))
    for i, mine in enumerate(samples):
        for j, other in enumerate(samples):
            if i != j:
                d = difference(other, mine, level)  # > 0: the other row is higher
                ranks[i] += bool(d.lo > 0) if higher_is_better else bool(d.hi < 0)  # NaN compares False
    return ranks
