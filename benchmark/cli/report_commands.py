"""The sub-commands that read finished runs or probe the suite: `collect`, `figures`, `archive`, `regress`,
`validity`, `utility`, `perf` and `weights`."""
from __future__ import annotations

from benchmark.cli.common import check_writable, use_cores
from benchmark.errors import UnknownName


def cmd_collect(args) -> int:
    from benchmark.reporting.report import build_report
    from benchmark.reporting.tables import formatted, markdown

    report = build_report(args.results_dir, args.out, partial=args.partial)
    for note in report.notes:
        print(note)
    print(markdown(formatted(report.table), index=False))
    print("written: " + ", ".join(map(str, report.paths)))
    return 0


def cmd_figures(args) -> int:
    from benchmark.reporting.figures import write_figures

    for p in write_figures(args.results_dir, args.out or args.results_dir / "figures"):
        print(f"written: {p}")
    return 0


def cmd_archive(args) -> int:
    from benchmark.reporting.archive import archive_runs

    runs = archive_runs(args.results_dir, args.out, all_samples=args.all_samples)
    print(f"archived {len(runs)} finished run(s) under {args.out or args.results_dir / 'records'}")
    return 0


def cmd_regress(args) -> int:
    from benchmark.orchestration.regress import main as regress_main
    from benchmark.protocol.config import parse_set

    return regress_main(update=args.update, repeat=args.repeat, methods=args.method, overrides=parse_set(args.set),
                        results_dir=args.results_dir, frd=not args.no_frd, jobs=args.jobs, also=tuple(args.also))


def cmd_validity(args) -> int:
    """Degrade real images in controlled steps; report which realism metrics grow with every degradation."""
    from benchmark.protocol.config import RunSpec
    from benchmark.run.context import RunContext, load_data
    from benchmark.scoring.scorer import Scorer
    from benchmark.scoring.validity import metric_validity, write_report

    use_cores()
    check_writable(args.results_dir)
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


def cmd_ceiling(args) -> int:
    """The ceiling on fidelity of a dataset whose real images hold anatomy its synthetic ones lack (skull-sim v3)."""
    from benchmark.errors import user_input
    from benchmark.scoring.ceiling import fidelity_ceiling, write_ceiling
    from datasets import load_dataset

    use_cores()
    check_writable(args.results_dir)
    with user_input():  # an unknown dataset or preset, a dataset without fine anatomy: one line naming it
        dataset = load_dataset(args.dataset, preset=args.preset, data_root=args.data_root)
        result = fidelity_ceiling(dataset, workers=args.workers)
    for p in write_ceiling(result, f"{args.dataset}/{args.preset}", args.results_dir / "tables"):
        print(f"written: {p}")
    for d, e in result.items():
        if isinstance(e, dict):
            print(f"{d}: SSIM (gt) ceiling {e['ssim_gt'][0]:.4f}, PSNR (gt) {e['psnr_gt'][0]:.1f} dB")
    return 0


def cmd_utility(args) -> int:
    """Downstream utility of finished runs: translated training images train a segmenter tested on real images."""
    from benchmark.orchestration.external import external_names
    from benchmark.orchestration.utility import run_utility
    from methods import METHODS

    use_cores()
    external = external_names(args.results_dir, args.dataset, args.preset)
    methods = list(METHODS) + external if args.method == ["all"] else args.method
    for m in methods:
        if m not in METHODS and m not in external:
            raise UnknownName(f"unknown method {m!r}; available: {', '.join([*METHODS, *external])}, all")
    check_writable(args.results_dir)
    from benchmark.protocol.budget import budget_values

    run_utility(args.results_dir, methods, args.dataset, args.preset, args.seeds, args.task, args.data_root,
                budgets=budget_values(args.budgets, args.dataset, args.preset))
    return 0


def cmd_perf(args) -> int:
    from benchmark.orchestration.perf import main as perf_main

    return perf_main(args)


def cmd_weights(args) -> int:
    from benchmark.scoring.weights import WEIGHTS, download

    for key in WEIGHTS:
        print(f"{key}: {download(key, args.weights_dir)}")
    return 0
