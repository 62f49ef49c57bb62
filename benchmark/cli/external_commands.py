"""The sub-commands for translations made elsewhere: `export` (the sources a translator needs) and `score` (its
translations scored like a trained method's; `benchmark.orchestration.external`)."""
from __future__ import annotations

from benchmark.cli.common import check_writable, use_cores


def _dataset(args):
    from benchmark.protocol.config import RunSpec
    from benchmark.run.context import RunContext, load_data

    spec = RunSpec("identity", dataset=args.dataset, preset=args.preset, data_seed=args.data_seed,
                   data_root=args.data_root, dataset_config=args.dataset_config)
    return load_data(spec, RunContext(args.results_dir, None, quiet=True))


def cmd_export(args) -> int:
    from benchmark.errors import user_input
    from benchmark.orchestration.external import export_task

    out = args.out or args.results_dir.parent / "export" / f"{args.dataset}-{args.preset}"
    with user_input():  # an unknown dataset, preset or task: one line naming it
        dataset = _dataset(args)
        for task in args.task:
            folder = export_task(dataset, task, out, tuple(args.split))
            print(f"written: {folder} (sources/, target/, manifest.csv, README.md)")
    return 0


def cmd_score(args) -> int:
    from benchmark.errors import user_input
    from benchmark.orchestration.external import check_name, parse_knob, parse_meta, score_external
    from benchmark.scoring.scorer import Scorer

    check_name(args.name)  # before the data load: a bad label answers at once
    knob, meta = parse_knob(args.knob), parse_meta(args.meta)
    use_cores()
    check_writable(args.results_dir)
    with user_input():
        dataset = _dataset(args)
    scorer = Scorer(weights_dir=args.weights_dir, cache_dir=args.results_dir / "cache", clip_dir=args.clip_dir,
                    frd=not args.no_frd)
    fields = dict(dataset=args.dataset, preset=args.preset, seed=args.seed, data_seed=args.data_seed,
                  dataset_config=args.dataset_config, data_root=args.data_root)
    score_external(args.results_dir, args.name, args.translations, args.task, dataset, fields, scorer, knob=knob,
                   meta=meta)
    by_reason: dict[str, list[str]] = {}
    for metric, reason in scorer.unavailable.items():
        by_reason.setdefault(reason, []).append(metric)
    for reason, names in by_reason.items():
        print(f"unavailable {', '.join(names)}: {reason}")
    return 0
