"""The sub-commands that fit: `run` (fits here, one after another), `sweep` (independent fits, here or through
submitit) and `rescore` (finished runs translated again for newly computable metrics)."""
from __future__ import annotations

import json
import sys

from benchmark.cli.common import check_writable, use_cores
from benchmark.errors import NotFound, RunError, UnknownName, user_input


def cmd_run(args) -> int:
    from benchmark.protocol.budget import budget_values
    from benchmark.protocol.config import parse_set, plan, resolve_config
    from benchmark.run.context import RunContext, data_key
    from datasets import dataset_domains
    from methods import METHODS

    use_cores()
    for m in args.method:
        if m != "all" and m not in METHODS:
            raise UnknownName(f"unknown method {m!r}; available: {', '.join(METHODS)}, all")
    with user_input():  # an unknown dataset, preset or task, a bad dataset config: one line naming it
        domains, loaded = dataset_domains(args.dataset, preset=args.preset, seed=args.data_seed,
                                          data_root=args.data_root, config=args.dataset_config,
                                          misregister=args.misregister)
        specs = [spec for budget in budget_values(args.budgets, args.dataset, args.preset, args.budget)
                 for spec in plan(args.method, args.seeds, args.task, domains, dataset=args.dataset,
                                  preset=args.preset, data_seed=args.data_seed, max_steps=args.max_steps,
                                  budget=budget, overrides=parse_set(args.set), curve=args.curve,
                                  knobs=tuple(args.knobs),
                                  accelerator=args.accelerator, precision=args.precision,
                                  dataset_config=args.dataset_config, data_root=args.data_root, devices=args.devices,
                                  strategy=_strategy(args), speedups=tuple(args.speedup),
                                  accumulate=args.accumulate, num_nodes=args.num_nodes,
                                  misregister=args.misregister)]
    resolved = [dict(run=str(s.folder(args.results_dir)), done=(s.folder(args.results_dir) / "done").is_file(),
                     method=s.method, seed=s.seed, tasks=list(s.tasks), config=resolve_config(s)) for s in specs]
    if args.dry_run:
        print(json.dumps(resolved, indent=2, default=str))
        return 0
    check_writable(args.results_dir)
    if specs[0].launched_outside and specs[0].world > 1:
        return _run_launched(specs, args)
    from rich.console import Console
    from rich.progress import Progress

    console = Console(width=None if sys.stdout.isatty() else 160)
    if sys.stdout.isatty():
        bars = Progress(console=console, disable=args.quiet)
    else:  # a log file or a pipe, where rich draws nothing: plain lines (`benchmark.run.progress`)
        from benchmark.run.progress import PlainProgress

        bars = PlainProgress(disable=args.quiet)
    with bars as progress:
        ctx = RunContext(args.results_dir, _run_scorer(args), progress=progress, quiet=args.quiet)
        if loaded is not None:  # a folder dataset was scanned to learn its domains: not again
            ctx.datasets[data_key(specs[0])] = loaded
        _prepare_data(specs[0], ctx, progress)
        specs = _applicable(specs, args.method, ctx, console)
        overall = progress.add_task("runs", total=len(specs))
        records = []
        from benchmark.run.stages import run_one

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
    from benchmark.scoring.scorer import Scorer

    return Scorer(weights_dir=args.weights_dir, cache_dir=args.results_dir / "cache", clip_dir=args.clip_dir,
                  frd=not args.no_frd)


def _run_launched(specs: list, args) -> int:
    """One fit whose processes a launcher started (`--strategy ddp`): every process runs it, the first rank alone
    writes and prints. One fit per launch: the other ranks would otherwise wait, idle and against the process group's
    timeout, while the first evaluates."""
    from benchmark.run.context import RunContext
    from benchmark.run.devices import launch_rank
    from benchmark.run.stages import run_one

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
    from benchmark.run.checks import check_data
    from benchmark.run.context import load_data

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


def _prepare_data(spec, ctx, progress) -> None:
    """Load (generate on first use) the dataset with a progress bar."""
    from benchmark.run.context import load_data

    bar = progress.add_task(f"data {spec.dataset}/{spec.preset}", total=None)

    def update(done, total):
        progress.update(bar, completed=done, total=total)

    load_data(spec, ctx, progress=update)
    progress.update(bar, completed=1, total=1)


def _print_table(records: list[dict], console) -> None:
    from rich.table import Table

    from benchmark.scoring.declarations import METRICS

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


def cmd_sweep(args) -> int:
    """Expand the request into fits and run the missing ones here or through submitit
    (`benchmark.orchestration.sweep`)."""
    import benchmark.orchestration.sweep as S
    from benchmark.protocol.budget import budget_values
    from benchmark.protocol.config import parse_set
    from benchmark.run.context import RunContext, load_data
    from benchmark.scoring.scorer import Scorer
    from datasets import dataset_domains
    from methods import METHODS

    for m in args.method:
        if m != "all" and m not in METHODS:
            raise UnknownName(f"unknown method {m!r}; available: {', '.join(METHODS)}, all")
    with user_input():  # as in `run`
        domains, _ = dataset_domains(args.dataset, preset=args.preset, seed=args.data_seed, data_root=args.data_root,
                                     config=args.dataset_config, misregister=args.misregister)
        specs = [spec for budget in budget_values(args.budgets, args.dataset, args.preset, args.budget)
                 for spec in S.expand(args.method, args.seeds, args.task, domains, args.vary, parse_set(args.set),
                                      dataset=args.dataset, preset=args.preset, data_seed=args.data_seed,
                                      max_steps=args.max_steps, budget=budget, curve=args.curve,
                                      knobs=tuple(args.knobs),
                                      accelerator=args.accelerator, precision=args.precision,
                                      dataset_config=args.dataset_config, data_root=args.data_root,
                                      devices=args.devices, strategy=_strategy(args), speedups=tuple(args.speedup),
                                      accumulate=args.accumulate, num_nodes=args.num_nodes,
                                  misregister=args.misregister)]
    states = {s: S.status(s, args.results_dir) for s in specs}
    for spec, state in states.items():
        print(f"{state:<11} {spec.method} seed {spec.seed} {'+'.join(spec.tasks)} {spec.folder(args.results_dir)}")
    todo = [s for s in specs if states[s] != "done"]
    print(f"{len(specs)} fit(s): {len(specs) - len(todo)} done, {len(todo)} to run")
    if args.dry_run or not todo:
        return 0
    check_writable(args.results_dir)
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
                         weights_dir=str(args.weights_dir) if args.weights_dir else None,
                         archive=str(args.archive) if args.archive else None) for spec in wave]
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


def cmd_rescore(args) -> int:
    """Add the metrics the scorer can compute now to every finished run's records (no training)."""
    from benchmark.protocol.config import finished_specs
    from benchmark.protocol.records import of_split, read_records
    from benchmark.run.context import RunContext
    from benchmark.run.rescore import stale_metrics
    from benchmark.run.stages import run_one
    from benchmark.scoring.scorer import Scorer

    use_cores()
    specs = finished_specs(args.results_dir, args.method)
    if not specs:
        raise NotFound(f"no finished runs under {args.results_dir / 'runs'}"
                                + (f" for {', '.join(args.method)}" if args.method else ""))
    check_writable(args.results_dir)
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
