"""CI regression: every registered method trained, translated and scored end to end on the `micro` skull-sim preset,
compared with a committed reference (`results/reference/regress.json`) and checked against invariants.

`python -m benchmark regress` (`make regress`, run by `make test`) runs the real runner (`benchmark.run.stages.run_one`:
FLOP budget, learning curve, choices on validation, test split) for seed 0 on `sim2real`, each method in one of two
single-threaded processes (so that its float sums are summed in one order whichever process runs it), then fails
(exit 1, a table of what moved and by how much) if
* a record's metric moved from the reference by more than its tolerance (per method and metric, stored with the
  reference; how they were derived is stored there too, `derive_tolerances`), or
* nfe or the number of parameters differ from the reference at all, or a point is missing or new, or
* an invariant that holds whatever the reference says is broken (`invariants`): no translation has SSIM to the
  source 1; every learned method (unpaired and paired) beats no translation on the spectrum distance at its
  validation-chosen knob value (`WEIGHT_FREE_REALISM`); every knob sweep is strictly monotone in SSIM to the
  source.

`python -m benchmark regress --update` (`make regress-update`) rewrites the reference from a new run and prints
what changed: use it when a change is *meant* to move numbers (a method fixed or improved, a metric changed), and
say so in the commit. `--repeat N` runs the first N of `REPEATS` (seeds 1, 2, ...: a learned method trained on another
CPU, whose float sums run in another order, drifts onto another trajectory the way another seed does; last, seed 0 on
2 threads, which reorders the sums the way another machine does) and derives the tolerances from the spread
(`derive_tolerances`). With `--results-dir`, finished runs there are re-used, so an interrupted update resumes.
"""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "results" / "reference" / "regress.json"
PRESET, TASK, SEED = "micro", "sim2real", 0
#: (seed, threads) of the repeated runs that tolerances are derived from; the first is the reference run itself.
#: Another seed comes first: on 2 cores the 2-thread run oversubscribes them (2 processes x 2 threads) and takes
#: several times as long.
REPEATS = ((SEED, 1), (1, 1), (2, 1), (3, 1), (4, 1), (SEED, 2))
#: The regression's training budget in FLOPs (the same for every learned method; 5x the `micro` preset's, so that
#: the diffusion models learn enough to beat no translation) and its per-method deltas, which only trade a batch
#: size or width for fewer, cheaper-per-FLOP iterations of the networks that are overhead-bound at 32 px.
BUDGET = 1.5e12
SETTINGS = {"cyclegan": (("batch_size", 4),), "pix2pix": (("batch_size", 8), ("ngf", 16), ("ndf", 16)),
            "unet-regression": (("ngf", 16),)}
#: Processes the methods are shared out to (each single-threaded, so every method's float sums keep one order).
JOBS = 2
#: Compared metrics: the weight-free ones every machine computes (FRD needs its optional packages: compared when the
#: reference and the run both have it).
COMPARED = ("ssim_src", "psnr_src", "ssim_gt", "psnr_gt", "nps_dist", "nps_flat", "hist_w1", "frd")
EXACT = ("nfe", "n_params")
#: The realism metrics every learned method must beat no translation on: the spectrum distance, the weight-free one
#: that passes the metric-validity check wherever it was run (tiny, small). FRD resamples micro's 32-px images to
#: 16 px (its 2 mm grid) and the flat-region NPS is undefined where no 16-px tile is unclipped: both are compared
#: with the reference, not held to this invariant (ContourDiff is genuinely behind no translation on FRD at these
#: budgets, on tiny too).
WEIGHT_FREE_REALISM = ("nps_dist",)
#: Neighbouring knob values whose SSIM (src) ties within this much do not break the monotonicity invariant (seed 1
#: on micro puts MedShift's tau 0.45 and 0.6 within 0.0025 of each other, the wrong way round); a reversal by more
#: fails.
MONOTONE_SLACK = 5e-3
#: Tolerance = TOL_FACTOR x the largest deviation from the reference run seen over the repeated runs (`REPEATS`),
#: and at least the floor of the metric's scale (what no bug would move by less).
TOL_FACTOR = 3.0
TOL_FLOOR = {"ssim_src": 2e-3, "ssim_gt": 2e-3, "psnr_src": 0.05, "psnr_gt": 0.05, "nps_dist": 5e-3,
             "nps_flat": 5e-3, "hist_w1": 1e-3, "frd": 0.05}


def point_name(rec: dict) -> str:
    knob = "" if rec.get("knob_value") in (None, "") else f" {rec['knob']}={rec['knob_value']:g}"
    return f"{rec['source']}{knob}"


def regressed(names) -> list[str]:
    """The methods the reference covers: this repository's, less the distilled students (`medshift-fewstep`, in
    progress: on micro its validation chooses tau 0.9, where it does not beat no translation on the spectrum distance,
    an invariant every learned method here must hold)."""
    from methods import get_method

    return [n for n in names if not get_method(n).teacher]


def run_regression(results_dir: Path, methods: list[str] | None = None, overrides: tuple = (), threads: int = 1,
                   frd: bool = True, budget: float = BUDGET, seed: int = SEED) -> list[dict]:
    """Test records of every method (or `methods`) on micro/sim2real for `seed`, in `results_dir`."""
    import torch

    from benchmark.protocol.config import plan
    from benchmark.run.context import RunContext
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer
    from datasets import dataset_domains
    from methods import BUILTIN_METHODS

    domains, _ = dataset_domains("skull-sim", preset=PRESET)
    specs = [spec for name in (methods or regressed(BUILTIN_METHODS))
             for spec in plan([name], [seed], [TASK], domains, dataset="skull-sim", preset=PRESET, budget=budget,
                              overrides=SETTINGS.get(name, ()) + tuple(overrides))]
    ctx = RunContext(Path(results_dir), Scorer(cache_dir=Path(results_dir) / "cache", frd=frd, n_boot=10), quiet=True)
    records, before = [], torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for spec in specs:
            records += [r for r in run_one(spec, ctx) if r.get("split", "test") == "test"]
    finally:
        torch.set_num_threads(before)
    return records


def _worker(args) -> tuple[list[dict], dict]:
    import time

    results_dir, methods, overrides, threads, frd, budget, seed = args
    records, seconds = [], {}
    for method in methods:
        t0 = time.perf_counter()
        records += run_regression(results_dir, [method], overrides, threads, frd, budget, seed)
        seconds[method] = time.perf_counter() - t0
    return records, seconds


def run_parallel(results_dir: Path, methods: list[str], overrides: tuple = (), threads: int = 1, frd: bool = True,
                 budget: float = BUDGET, jobs: int = JOBS, cost: dict | None = None,
                 seed: int = SEED) -> tuple[list[dict], dict]:
    """`run_regression` of `methods` shared out to `jobs` processes (longest first, each to the least loaded,
    by the seconds in `cost`); returns (test records, seconds per method). Every method's numbers are the same
    whichever process runs it: each run seeds its own generators."""
    import multiprocessing as mp

    from datasets import load_dataset

    load_dataset("skull-sim", preset=PRESET)  # generate once, before the workers read it
    cost = cost or {}
    groups: list[list[str]] = [[] for _ in range(max(1, jobs))]
    load = [0.0] * len(groups)
    from methods import get_method

    teachers = {m: get_method(m).teacher for m in methods if get_method(m).teacher in methods}
    for method in sorted((m for m in methods if m not in teachers), key=lambda m: -cost.get(m, 60.0)):
        k = load.index(min(load))
        groups[k].append(method)
        load[k] += cost.get(method, 60.0)
    for student, teacher in teachers.items():  # after its teacher, in its process: it distils the teacher's fit
        k = next(i for i, g in enumerate(groups) if teacher in g)
        groups[k].append(student)
        load[k] += cost.get(student, 60.0)
    tasks = [(results_dir, g, overrides, threads, frd, budget, seed) for g in groups if g]
    if len(tasks) == 1:
        outs = [_worker(tasks[0])]
    else:
        import signal
        import sys

        # a terminated regression takes its workers with it (the pool's exit terminates them)
        previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            with mp.get_context("spawn").Pool(len(tasks)) as pool:
                outs = pool.map(_worker, tasks)
        finally:
            signal.signal(signal.SIGTERM, previous)
    records, seconds = [], {}
    for recs, secs in outs:
        records += recs
        seconds.update(secs)
    return records, seconds


def summarize(records: list[dict]) -> dict:
    """{method: {point: {metric: value, ..., "val_choice": bool}}} of test records."""
    out: dict = {}
    for r in records:
        values = {m: r.get(m) for m in COMPARED + EXACT}
        values["val_choice"] = bool(r.get("val_choice"))
        out.setdefault(r["method"], {})[point_name(r)] = values
    return out


def compare(now: dict, reference: dict) -> list[dict]:
    """Rows (method, point, metric, reference, now, diff, tolerance) of everything outside its tolerance."""
    rows = []
    tol = reference.get("tolerances", {})
    ref = reference["results"]
    for method in sorted(set(ref) | set(now)):
        if method not in now or method not in ref:
            rows.append(dict(method=method, point="*", metric="(method)", reference="present" if method in ref
                             else "absent", now="present" if method in now else "absent", diff=None, tolerance=None))
            continue
        for point in sorted(set(ref[method]) | set(now[method])):
            a, b = ref[method].get(point), now[method].get(point)
            if a is None or b is None:
                rows.append(dict(method=method, point=point, metric="(point)", reference="present" if a else "absent",
                                 now="present" if b else "absent", diff=None, tolerance=None))
                continue
            for metric in COMPARED + EXACT:
                x, y = a.get(metric), b.get(metric)
                if x is None or y is None:
                    continue  # e.g. FRD where its packages are not installed
                limit = 0.0 if metric in EXACT else tol.get(method, {}).get(metric, TOL_FLOOR.get(metric, 0.0))
                diff = y - x
                if not (abs(diff) <= limit) or not math.isfinite(y):
                    rows.append(dict(method=method, point=point, metric=metric, reference=x, now=y, diff=diff,
                                     tolerance=limit))
    return rows


def invariants(now: dict, info: dict) -> list[str]:
    """What must hold on micro whatever the reference says (see module docstring).

    Args:
        now: `summarize` of the run.
        info: {method: TranslationMethod.table_info()}.
    """
    problems = []
    identity = now.get("identity", {})
    for point, v in identity.items():
        if v["ssim_src"] != 1.0:
            problems.append(f"identity {point}: SSIM (src) {v['ssim_src']!r} != 1")
    for method, points in now.items():
        group = info[method]["group"]
        chosen = {p: v for p, v in points.items() if v["val_choice"]}
        if group != "reference" and method != "identity":
            for point, v in chosen.items():
                source = point.split()[0]
                base = identity.get(source)
                for metric in WEIGHT_FREE_REALISM:
                    if base and v.get(metric) is not None and base.get(metric) is not None \
                            and not v[metric] < base[metric]:
                        problems.append(f"{method} {point}: {metric} {v[metric]:.4g} does not beat no translation's "
                                        f"{base[metric]:.4g}")
        if info[method]["knob"] is not None:
            by_source: dict = {}
            for point, v in points.items():
                source, _, knob = point.partition(" ")
                by_source.setdefault(source, []).append((float(knob.split("=")[1]), v["ssim_src"]))
            for source, pairs in by_source.items():
                ordered = [s for _, s in sorted(pairs)]
                steps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
                if not (all(d > -MONOTONE_SLACK for d in steps) or all(d < MONOTONE_SLACK for d in steps)):
                    problems.append(f"{method} {source}: SSIM (src) over its knob {sorted(pairs)} is not monotone")
    return problems


def derive_tolerances(runs: list[dict]) -> dict:
    """{method: {metric: tolerance}}: TOL_FACTOR x the largest deviation of any point from the first run, at least
    the metric's floor."""
    first, tol = runs[0], {}
    for method, points in first.items():
        for metric in COMPARED:
            dev = 0.0
            for other in runs[1:]:
                for point, v in points.items():
                    a, b = v.get(metric), other.get(method, {}).get(point, {}).get(metric)
                    if a is not None and b is not None:
                        dev = max(dev, abs(b - a))
            tol.setdefault(method, {})[metric] = max(TOL_FACTOR * dev, TOL_FLOOR[metric])
    return tol


def format_rows(rows: list[dict]) -> str:
    def fmt(v):
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    head = "| method | point | metric | reference | now | diff | tolerance |\n|---|---|---|---|---|---|---|\n"
    return head + "".join(f"| {r['method']} | {r['point']} | {r['metric']} | {fmt(r['reference'])} | {fmt(r['now'])} "
                          f"| {fmt(r['diff'])} | {fmt(r['tolerance'])} |\n" for r in rows)


def method_infos(methods) -> dict:
    from methods import get_method

    return {m: get_method(m).table_info() for m in methods}


def main(update: bool = False, repeat: int = 1, methods: list[str] | None = None, overrides: tuple = (),
         results_dir: Path | None = None, reference_path: Path = REFERENCE_PATH, frd: bool = True,
         jobs: int = JOBS, also: tuple = ()) -> int:
    """Run the regression; 0 when it passes (or the reference was rewritten), 1 when it fails.

    Args:
        jobs: Processes; 1 runs every method in this process (what a drill that patches code needs).
        also: With `update`: reference files (`regress.json`) of the same code run on other machines; their
            results count as repeats when the tolerances are derived (another CPU's kernels drift GAN-trained
            U-Nets by more than some metrics' seed spread).
    """
    import time

    from benchmark.errors import RunError

    if update and (methods or overrides):
        raise RunError("--update rewrites the whole reference: run it without --method and --set")
    if also and not update:
        raise RunError("--also only adds runs to the tolerances that --update derives: add --update")

    from methods import BUILTIN_METHODS

    old = json.loads(reference_path.read_text()) if reference_path.is_file() else None
    names = methods or regressed(BUILTIN_METHODS)  # the reference covers this repository's methods, not plugins
    runs, seconds, per_method = [], [], {}
    if not 1 <= repeat <= len(REPEATS):
        raise RunError(f"--repeat {repeat}: between 1 and {len(REPEATS)} (the runs of REPEATS)")
    for k, (seed, threads) in enumerate(REPEATS[:repeat]):
        with tempfile.TemporaryDirectory(prefix="regress-") as tmp:
            out = Path(results_dir) / f"run{k}" if results_dir else Path(tmp)
            t0 = time.perf_counter()
            records, secs = run_parallel(out, names, overrides, threads=threads, frd=frd, jobs=jobs, seed=seed,
                                         cost=(old or {}).get("method_seconds"))
            runs.append(summarize(records))
            seconds.append(time.perf_counter() - t0)
            # a run re-used from --results-dir takes no time: keep the slowest measurement of each method
            per_method = {m: max(v, per_method.get(m, 0.0)) for m, v in secs.items()}
    now = runs[0]
    problems = invariants(now, method_infos(now))
    if update:
        others = [json.loads(Path(p).read_text())["results"] for p in also]
        if repeat > 1 or others:  # derive the tolerances from this invocation's runs
            tol = derive_tolerances(runs + others)
            elsewhere = f" and {len(others)} run(s) of seed 0 on other machines" if others else ""
            how = (f"{TOL_FACTOR:g} x the largest deviation from the reference run over {repeat} runs (seed, "
                   f"threads) = {list(REPEATS[:repeat])}{elsewhere}, at least the floor per metric")
        else:  # one run: keep the tolerances (and how they were derived) of the old reference
            tol = (old or {}).get("tolerances") or derive_tolerances(runs)
            how = (old or {}).get("tolerance_derivation", "floors only")
        new = dict(preset=PRESET, task=TASK, seed=SEED, threads=1, budget=BUDGET, settings=SETTINGS, jobs=JOBS,
                   seconds=round(max(seconds), 1), method_seconds={m: round(v, 1) for m, v in per_method.items()},
                   results=now, tolerances=tol, tolerance_derivation=how, floors=TOL_FLOOR)
        if old is not None:
            changed = compare(now, dict(old, tolerances={}))
            print(f"reference rewritten; {len(changed)} value(s) changed:\n" + format_rows(changed))
        reference_path.parent.mkdir(parents=True, exist_ok=True)
        reference_path.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        print(f"written: {reference_path} ({', '.join(f'{v:.0f}' for v in seconds)} s per run)")
        for p in problems:
            print(f"invariant broken (the reference was written anyway): {p}")
        for (seed, threads), run in zip(REPEATS[1:repeat], runs[1:], strict=True):
            for p in invariants(run, method_infos(run)):
                print(f"invariant broken in the repeat with seed {seed}, {threads} thread(s): {p}")
        return 0
    if old is None:
        print(f"no reference at {reference_path}: run `make regress-update` first")
        return 1
    rows = compare(now if not methods else now, dict(old, results={m: v for m, v in old["results"].items()
                                                                   if not methods or m in methods}))
    if rows or problems:
        print(f"REGRESSION: {len(rows)} value(s) outside the tolerance of {reference_path.name}, "
              f"{len(problems)} invariant(s) broken")
        if rows:
            print(format_rows(rows))
        for p in problems:
            print(f"invariant broken: {p}")
        return 1
    n = sum(len(v) for v in now.values())
    print(f"regression passed: {len(now)} methods, {n} test points within tolerance, invariants hold "
          f"({seconds[0]:.0f} s)")
    return 0
