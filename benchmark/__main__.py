"""`python -m benchmark {run,sweep,rescore,collect,figures,archive,regress,validity,utility,perf,weights}`: a thin
CLI over importable functions."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="fit, translate and score methods; append records under results/runs")
    _add_fit_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit")
    p.add_argument("--quiet", action="store_true")


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="methods x seeds x tasks x --vary settings as independent jobs, here or on SLURM")
    _add_fit_args(p)
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="one fit per value (repeatable: the cartesian product)")
    p.add_argument("--executor", default="local", choices=["local", "slurm", "submitit-local"])
    p.add_argument("--jobs", type=int, default=1, help="local: fits at a time, each with cores/jobs threads")
    p.add_argument("--log-dir", type=Path, default=None, help="submitit's folder (default: <results>/sweeps)")
    p.add_argument("--slurm-config", type=Path, default=None, help="YAML of submitit AutoExecutor parameters")
    p.add_argument("--partition", default=None, help="slurm_partition")
    p.add_argument("--account", default=None, help="slurm_account")
    p.add_argument("--time-min", type=int, default=None, help="timeout_min per job")
    p.add_argument("--gpus", type=int, default=None, help="gpus_per_node")
    p.add_argument("--cpus", type=int, default=None, help="cpus_per_task")
    p.add_argument("--mem-gb", type=int, default=None, help="mem_gb")
    p.add_argument("--array-parallelism", type=int, default=None, help="slurm_array_parallelism")
    p.add_argument("--no-wait", action="store_true", help="submit and return (slurm)")
    p.add_argument("--dry-run", action="store_true", help="print the jobs with their status and exit")


def _add_fit_args(p) -> None:
    p.add_argument("--method", nargs="+", default=["medshift"], help="method name(s) or 'all'")
    p.add_argument("--dataset", default="skull-sim")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--task", nargs="+", default=["sim2real"], help="task name(s), or 'src1+src2->tgt'")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--max-steps", type=int, default=None, help="training iterations (bypasses the FLOP budget)")
    p.add_argument("--budget", type=float, default=None,
                   help="training FLOPs per learned method (default: benchmark/configs/budgets.yaml for the preset)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method config override")
    p.add_argument("--curve", action="store_true", help="also sweep the dense knob grid (for figures)")
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu", "auto"])
    p.add_argument("--precision", default="32-true", help="Lightning precision, e.g. bf16-mixed on a GPU")
    p.add_argument("--devices", type=int, default=1,
                   help="devices one fit trains on (the method's batch is split over them: the same global batch, "
                        "iterations and FLOPs)")
    p.add_argument("--num-nodes", type=int, default=1,
                   help="nodes one fit trains on (with --strategy ddp: one process per device on every node, started "
                        "by srun or torchrun, each running this command)")
    p.add_argument("--strategy", default="auto",
                   help="Lightning strategy: ddp_fork (the default of --devices > 1: forked on one machine) or ddp "
                        "(the default of --num-nodes > 1: processes started by srun or torchrun)")
    p.add_argument("--accumulate", type=int, default=1, metavar="N",
                   help="gradient accumulation: each device's share of the batch in N micro-batches (the same global "
                        "batch, iterations and FLOPs; less memory)")
    p.add_argument("--speedup", nargs="+", default=[], choices=["channels_last", "compile", "tf32"],
                   help="opt-in: channels-last memory format, torch.compile of the networks, TF32 on NVIDIA GPUs")
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--clip-dir", type=Path, default=None, help="local CLIP folder for CMMD (optional)")
    p.add_argument("--no-frd", action="store_true", help="skip FRD (radiomics, ~0.2 s per 64 px image on 1 core)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--dataset-config", default=None, help="YAML for folder datasets")


def cmd_run(args) -> int:
    import torch

    from benchmark.config import parse_set, plan, resolve_config
    from benchmark.run import RunContext, data_key
    from datasets import dataset_domains
    from methods import METHODS

    # every core unless the user pinned a count (OMP_NUM_THREADS), e.g. to run two benchmarks side by side
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(os.cpu_count() or 1, 16))))
    for m in args.method:
        if m != "all" and m not in METHODS:
            raise KeyError(f"unknown method {m!r}; available: {', '.join(METHODS)}, all")
    domains, loaded = dataset_domains(args.dataset, preset=args.preset, seed=args.data_seed,
                                      data_root=args.data_root, config=args.dataset_config)
    specs = plan(args.method, args.seeds, args.task, domains, dataset=args.dataset, preset=args.preset,
                 data_seed=args.data_seed, max_steps=args.max_steps, budget=args.budget, overrides=parse_set(args.set),
                 curve=args.curve, accelerator=args.accelerator, precision=args.precision,
                 dataset_config=args.dataset_config, data_root=args.data_root, devices=args.devices,
                 strategy=_strategy(args), speedups=tuple(args.speedup),
                 accumulate=args.accumulate, num_nodes=args.num_nodes)
    resolved = [dict(run=str(s.folder(args.results_dir)), done=(s.folder(args.results_dir) / "done").is_file(),
                     method=s.method, seed=s.seed, tasks=list(s.tasks), config=resolve_config(s)) for s in specs]
    if args.dry_run:
        print(json.dumps(resolved, indent=2, default=str))
        return 0
    _check_writable(args.results_dir)
    if specs[0].launched_outside and specs[0].world > 1:
        return _run_launched(specs, args)
    from rich.console import Console
    from rich.progress import Progress

    console = Console(width=None if sys.stdout.isatty() else 160)
    with Progress(console=console, disable=args.quiet) as progress:
        ctx = RunContext(args.results_dir, _run_scorer(args), progress=progress, quiet=args.quiet)
        if loaded is not None:  # a folder dataset was scanned to learn its domains: not again
            ctx.datasets[data_key(specs[0])] = loaded
        _prepare_data(specs[0], ctx, progress)
        specs = _applicable(specs, args.method, ctx, console)
        overall = progress.add_task("runs", total=len(specs))
        records = []
        from benchmark.run import run_one

        for spec in specs:
            records += run_one(spec, ctx)
            progress.advance(overall)
    by_reason: dict[str, list[str]] = {}
    for metric, reason in ctx.scorer.unavailable.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, names in by_reason.items():
        console.print(f"[yellow]unavailable[/] {', '.join(names)}: {reason}")
    _print_table(records, console)
    return 0


def _run_scorer(args):
    """The scorer of `run`'s options."""
    from benchmark.scorer import Scorer

    return Scorer(weights_dir=args.weights_dir, cache_dir=args.results_dir / "cache", clip_dir=args.clip_dir,
                  frd=not args.no_frd)


def _run_launched(specs: list, args) -> int:
    """One fit whose processes a launcher started (`--strategy ddp`): every process runs it, the first rank alone
    writes and prints. One fit per launch: the other ranks would otherwise wait, idle and against the process group's
    timeout, while the first evaluates."""
    from benchmark.records import RunError
    from benchmark.run import RunContext, launch_rank, run_one

    spec = specs[0]
    if len(specs) > 1:
        raise RunError(f"--strategy ddp over {spec.world} processes runs one fit per launch, and this request makes "
                       f"{len(specs)} (methods x seeds); launch one each, or use `python -m benchmark sweep --executor "
                       "slurm`, which submits one job per fit")
    records = run_one(spec, RunContext(args.results_dir, _run_scorer(args), quiet=True))
    if launch_rank(spec) == 0:
        tests = [r for r in records if r.get("split", "test") == "test"]
        print(f"{spec.method} seed {spec.seed}: {len(tests)} test records in {spec.folder(args.results_dir)}")
    return 0


def _strategy(args) -> str:
    """--strategy; `auto` is ddp over several nodes and ddp_fork over several devices of one."""
    if args.strategy != "auto":
        return args.strategy
    return "ddp" if args.num_nodes > 1 else "ddp_fork" if args.devices > 1 else "auto"


def _applicable(specs: list, methods: list[str], ctx, console) -> list:
    """The specs whose method can run on its data, checked before any run: a method asked for by name that cannot
    stops the invocation (one line); with `--method all` it is left out, with a note."""
    from benchmark.records import RunError
    from benchmark.run import check_data, load_data

    keep, noted = [], set()
    for spec in specs:
        try:
            check_data(load_data(spec, ctx), spec)
        except RunError as exc:
            if methods != ["all"]:
                raise
            if spec.method not in noted:
                console.print(f"[yellow]skipped[/] {exc}")
                noted.add(spec.method)
            continue
        keep.append(spec)
    return keep


def _check_writable(results_dir: Path) -> None:
    from benchmark.records import RunError

    try:
        (results_dir / "runs").mkdir(parents=True, exist_ok=True)
        probe = results_dir / "runs" / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"results folder {results_dir} is not writable ({exc.strerror}); pass --results-dir") from exc


def _prepare_data(spec, ctx, progress) -> None:
    """Load (generate on first use) the dataset with a progress bar."""
    from benchmark.run import load_data

    bar = progress.add_task(f"data {spec.dataset}/{spec.preset}", total=None)

    def update(done, total):
        progress.update(bar, completed=done, total=total)

    load_data(spec, ctx, progress=update)
    progress.update(bar, completed=1, total=1)


def _print_table(records: list[dict], console) -> None:
    from rich.table import Table

    from benchmark.metrics import METRICS

    records = [r for r in records if r.get("split", "test") == "test"]
    shown = [m for m, spec in METRICS.items() if spec.in_table and any(r.get(m) is not None for r in records)]
    cols = ["method", "seed", "task", "source", "knob_value", *shown, "nfe", "sec_per_image"]
    table = Table(title="test results (this invocation; `make collect` for mean ± CI tables)")
    for c in cols:
        table.add_column(c, no_wrap=True)
    for r in records:
        table.add_row(*["n/a" if r.get(c) is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])
                        for c in cols])
    console.print(table)


def cmd_rescore(args) -> int:
    """Add the metrics the scorer can compute now to every finished run's records (no training)."""
    import torch

    from benchmark.config import finished_specs
    from benchmark.records import of_split, read_records
    from benchmark.rescore import stale_metrics
    from benchmark.run import RunContext, run_one
    from benchmark.scorer import Scorer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(os.cpu_count() or 1, 16))))
    specs = finished_specs(args.results_dir, args.method)
    if not specs:
        raise FileNotFoundError(f"no finished runs under {args.results_dir / 'runs'}"
                                + (f" for {', '.join(args.method)}" if args.method else ""))
    _check_writable(args.results_dir)
    ctx = RunContext(args.results_dir, Scorer(weights_dir=args.weights_dir, cache_dir=args.results_dir / "cache",
                                              clip_dir=args.clip_dir), quiet=True, rescore=True)
    for spec in specs:
        records = of_split(read_records(spec.folder(args.results_dir) / "records.jsonl"))
        before = sum(bool(stale_metrics(r, ctx.scorer.unavailable)) for r in records)
        run_one(spec, ctx)
        print(f"{spec.folder(args.results_dir)}: {before} record(s) re-scored", flush=True)
    for metric, reason in ctx.scorer.unavailable.items():
        print(f"still unavailable: {metric}: {reason}")
    return 0


def cmd_collect(args) -> int:
    from benchmark.archive import run_status
    from benchmark.collect import (
        attach_utility,
        formatted,
        headline,
        load_records,
        load_utility,
        summary,
        utility_summary,
        write_tables,
        write_utility,
    )
    from benchmark.validity import valid_realism_metrics

    status = run_status(args.results_dir)  # each run's done marker verified once
    df = load_records(args.results_dir, partial=args.partial, status=status)
    for note in df.attrs.get("notes", []):
        print(note)
    skipped = [(folder, why) for folder, why in status if why is not None]
    if skipped:
        print(f"{'included' if args.partial else 'left out'} {len(skipped)} unfinished run(s) ("
              + "; ".join(f"{f.relative_to(args.results_dir)}: {why}" for f, why in skipped[:3])
              + ("; ..." if len(skipped) > 3 else "") + ")" + ("" if args.partial else "; --partial includes them"))
    out_dir = args.out or args.results_dir / "tables"
    valid = {(d, p): valid_realism_metrics(out_dir, d, p) for d, p in df[["dataset", "preset"]].drop_duplicates()
             .itertuples(index=False)}
    usum = utility_summary(load_utility(args.results_dir))
    table = attach_utility(summary(df, {k: v for k, v in valid.items() if v is not None}), usum)
    paths = write_tables(table, out_dir, records=df) + write_utility(usum, out_dir, headline(table))
    print(formatted(table).to_markdown(index=False))
    print("written: " + ", ".join(map(str, paths)))
    return 0


def cmd_regress(args) -> int:
    from benchmark.config import parse_set
    from benchmark.regress import main as regress_main

    return regress_main(update=args.update, repeat=args.repeat, methods=args.method, overrides=parse_set(args.set),
                        results_dir=args.results_dir, frd=not args.no_frd, jobs=args.jobs, also=tuple(args.also))


def cmd_archive(args) -> int:
    from benchmark.archive import archive_runs

    runs = archive_runs(args.results_dir, args.out, all_samples=args.all_samples)
    print(f"archived {len(runs)} finished run(s) under {args.out or args.results_dir / 'records'}")
    return 0


def cmd_figures(args) -> int:
    from benchmark.figures import write_figures

    for p in write_figures(args.results_dir, args.out or args.results_dir / "figures"):
        print(f"written: {p}")
    return 0


def cmd_validity(args) -> int:
    """Degrade real images in controlled steps; report which realism metrics grow with every degradation."""
    import torch

    from benchmark.config import RunSpec
    from benchmark.run import RunContext, load_data
    from benchmark.scorer import Scorer
    from benchmark.validity import metric_validity, write_report

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(os.cpu_count() or 1, 16))))
    _check_writable(args.results_dir)
    scorer = Scorer(weights_dir=args.weights_dir, cache_dir=args.results_dir / "cache", frd=not args.no_frd)
    ctx = RunContext(args.results_dir, scorer, quiet=True)
    dataset = load_data(RunSpec("identity", dataset=args.dataset, preset=args.preset, data_root=args.data_root,
                                dataset_config=args.dataset_config), ctx)
    result = metric_validity(dataset, scorer, args.domain, native_frd=not args.no_frd)
    for p in write_report(result, f"{args.dataset}/{args.preset}", args.results_dir / "tables"):
        print(f"written: {p}")
    for m, ok in result["passed"].items():
        print(f"{m}: {'passes' if ok else 'fails'}")
    return 0


def cmd_sweep(args) -> int:
    """Expand the request into fits and run the missing ones here or through submitit (`benchmark.sweep`)."""
    from benchmark import sweep as S
    from benchmark.config import parse_set
    from benchmark.run import RunContext, load_data
    from benchmark.scorer import Scorer
    from datasets import dataset_domains
    from methods import METHODS

    for m in args.method:
        if m != "all" and m not in METHODS:
            raise KeyError(f"unknown method {m!r}; available: {', '.join(METHODS)}, all")
    domains, _ = dataset_domains(args.dataset, preset=args.preset, seed=args.data_seed, data_root=args.data_root,
                                 config=args.dataset_config)
    specs = S.expand(args.method, args.seeds, args.task, domains, args.vary, parse_set(args.set),
                     dataset=args.dataset, preset=args.preset, data_seed=args.data_seed, max_steps=args.max_steps,
                     budget=args.budget, curve=args.curve, accelerator=args.accelerator, precision=args.precision,
                     dataset_config=args.dataset_config, data_root=args.data_root, devices=args.devices,
                     strategy=_strategy(args), speedups=tuple(args.speedup), accumulate=args.accumulate,
                     num_nodes=args.num_nodes)
    states = {s: S.status(s, args.results_dir) for s in specs}
    for spec, state in states.items():
        print(f"{state:<11} {spec.method} seed {spec.seed} {'+'.join(spec.tasks)} {spec.folder(args.results_dir)}")
    todo = [s for s in specs if states[s] != "done"]
    print(f"{len(specs)} fit(s): {len(specs) - len(todo)} done, {len(todo)} to run")
    if args.dry_run or not todo:
        return 0
    _check_writable(args.results_dir)
    ctx = RunContext(args.results_dir, Scorer(cache_dir=args.results_dir / "cache", frd=False), quiet=True)
    load_data(todo[0], ctx)  # generate the data once, before any job reads it
    threads = S.default_threads(args.jobs) if args.executor == "local" else None
    params = S.slurm_parameters(args.slurm_config, slurm_partition=args.partition, slurm_account=args.account,
                                timeout_min=args.time_min, gpus_per_node=args.gpus, cpus_per_task=args.cpus,
                                mem_gb=args.mem_gb, slurm_array_parallelism=args.array_parallelism)
    params = S.launch_parameters(todo, args.executor, params)
    results, previous = [], None
    for wave in S.waves(todo):  # --vary sampling variants after the fits they re-use
        jobs = [S.FitJob(spec, str(args.results_dir), frd=not args.no_frd, threads=threads,
                         weights_dir=str(args.weights_dir) if args.weights_dir else None) for spec in wave]
        if args.executor == "local":
            results += S.run_local(jobs, args.jobs)
            continue
        out = S.submit(jobs, args.executor, args.log_dir or args.results_dir / "sweeps", params,
                       wait=not args.no_wait, after=previous)
        if args.no_wait:
            previous = out
        else:
            results += out
    if args.no_wait:
        return 0
    failed = [r for r in results if "error" in r]
    print(f"{len(results) - len(failed)} fit(s) finished, {len(failed)} failed; `make collect` merges the records")
    return 1 if failed else 0


def cmd_utility(args) -> int:
    """Downstream utility of finished runs: translated training images train a segmenter tested on real images."""
    import torch

    from benchmark.utility import run_utility
    from methods import METHODS

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(os.cpu_count() or 1, 16))))
    methods = list(METHODS) if args.method == ["all"] else args.method
    for m in methods:
        if m not in METHODS:
            raise KeyError(f"unknown method {m!r}; available: {', '.join(METHODS)}, all")
    _check_writable(args.results_dir)
    run_utility(args.results_dir, methods, args.dataset, args.preset, args.seeds, args.task, args.data_root)
    return 0


def cmd_perf(args) -> int:
    from benchmark.perf import main as perf_main

    return perf_main(args)


def cmd_weights(args) -> int:
    from benchmark.weights import WEIGHTS, download

    for key in WEIGHTS:
        print(f"{key}: {download(key, args.weights_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_sweep(sub)
    r = sub.add_parser("rescore", help="add newly computable metrics to finished runs (translate again, no training)")
    r.add_argument("--method", nargs="+", default=None, help="only these methods' runs")
    r.add_argument("--results-dir", type=Path, default=Path("results"))
    r.add_argument("--weights-dir", type=Path, default=None)
    r.add_argument("--clip-dir", type=Path, default=None)
    c = sub.add_parser("collect", help="records -> results/tables/summary.{csv,md,tex}")
    c.add_argument("--results-dir", type=Path, default=Path("results"))
    c.add_argument("--out", type=Path, default=None)
    c.add_argument("--partial", action="store_true",
                   help="also the records of runs not yet done (a table mid-sweep; rows may rest on part of a run)")
    g = sub.add_parser("regress", help="every method on micro vs results/reference/regress.json, plus invariants")
    g.add_argument("--update", action="store_true", help="rewrite the reference (and print what changed)")
    g.add_argument("--repeat", type=int, default=1, help="runs of REPEATS (seed, threads); --update: tolerances")
    g.add_argument("--method", nargs="+", default=None, help="only these methods")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (drills)")
    g.add_argument("--results-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    g.add_argument("--no-frd", action="store_true")
    g.add_argument("--jobs", type=int, default=2, help="processes, each single-threaded (default 2)")
    g.add_argument("--also", nargs="+", type=Path, default=[], metavar="REGRESS_JSON",
                   help="--update: references of this code from other machines, counted as repeats for tolerances")
    a = sub.add_parser("archive", help="copy finished runs' records, config and samples to results/records (committed)")
    a.add_argument("--results-dir", type=Path, default=Path("results"))
    a.add_argument("--out", type=Path, default=None)
    a.add_argument("--all-samples", action="store_true", help="keep every seed's sample images (default: lowest)")
    f = sub.add_parser("figures", help="summary -> results/figures/*.png")
    f.add_argument("--results-dir", type=Path, default=Path("results"))
    f.add_argument("--out", type=Path, default=None)
    v = sub.add_parser("validity", help="which realism metrics grow with controlled degradations of real images")
    v.add_argument("--dataset", default="skull-sim")
    v.add_argument("--preset", default="tiny")
    v.add_argument("--domain", default="real_normal")
    v.add_argument("--results-dir", type=Path, default=Path("results"))
    v.add_argument("--weights-dir", type=Path, default=None)
    v.add_argument("--data-root", default=None)
    v.add_argument("--dataset-config", default=None)
    v.add_argument("--no-frd", action="store_true")
    u = sub.add_parser("utility", help="does translated synthetic data train a segmenter that works on real images")
    u.add_argument("--method", nargs="+", default=["all"], help="method name(s) with finished runs, or 'all'")
    u.add_argument("--dataset", default="skull-sim")
    u.add_argument("--preset", default="tiny")
    u.add_argument("--task", nargs="+", default=["sim2real", "dose"])
    u.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    u.add_argument("--results-dir", type=Path, default=Path("results"))
    u.add_argument("--data-root", default=None)
    pf = sub.add_parser("perf", help="throughput of the scorer and of each method's translate")
    pf.add_argument("--methods", nargs="+", default=None,
                    help="default: identity histmatch (translation); every learned method (--train)")
    pf.add_argument("--n-images", type=int, default=256)
    pf.add_argument("--size", type=int, default=64)
    pf.add_argument("--train", action="store_true", help="time training iterations per precision instead")
    pf.add_argument("--preset", default="tiny", help="--train: the preset whose configs (batch, model size) to time")
    pf.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    pf.add_argument("--iterations", type=int, default=5)
    pf.add_argument("--repeats", type=int, default=3)
    w = sub.add_parser("weights", help="download Inception + AlexNet weights (needs internet)")
    w.add_argument("--weights-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    from benchmark.records import RunError, WeightsUnavailable
    from benchmark.stopping import Stopped, install

    install()  # SIGTERM stops with one line and exit 143, as Ctrl-C does with 130

    try:
        if args.command in ("run", "sweep"):
            from benchmark.precheck import check_fit_args

            check_fit_args(args)  # before torch and Lightning load: a bad argument answers at once
        return {"run": cmd_run, "rescore": cmd_rescore, "collect": cmd_collect, "figures": cmd_figures,
                "perf": cmd_perf, "weights": cmd_weights, "validity": cmd_validity,
                "archive": cmd_archive, "regress": cmd_regress, "utility": cmd_utility,
                "sweep": cmd_sweep}[args.command](args)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError, RunError, WeightsUnavailable) as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"error: {exc.filename}: permission denied ({exc.strerror}); make it writable or pass --results-dir "
              "/ --out elsewhere", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: every finished record is on disk; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Stopped as exc:
        print(exc.message(), file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
