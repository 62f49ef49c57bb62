"""`python -m datasets {generate,labels,preview}`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _progress_bar(description: str):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn(description), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TimeElapsedColumn(), transient=False)
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def main(argv: list[str] | None = None) -> int:
    from . import DATASETS, load_dataset

    parser = argparse.ArgumentParser(prog="python -m datasets", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a procedural dataset (skull-sim)")
    gen.add_argument("--dataset", default="skull-sim", choices=["skull-sim", "skull-sim-v2"],
                     help="skull-sim (v3: real domains with fine anatomy) or skull-sim-v2 (physics-only gap)")
    gen.add_argument("--preset", default="tiny")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split-seed", type=int, default=0)
    gen.add_argument("--out", type=Path, help="output folder (default: $XRAYBENCH_DATA or ./data)")
    gen.add_argument("--jitter", action="store_true", help="small pose jitter between synthetic and real")
    gen.add_argument("--misregister", type=float, default=0.0, metavar="MM",
                     help="shift every scene's synthetic pose by MM mm against its real pose (paired, misregistered; "
                          "as between a simulator and a physical phantom); 0 = none")
    gen.add_argument("--dicom", action="store_true", help="also write DX DICOM files")
    gen.add_argument("--workers", type=int, default=None)
    gen.add_argument("--force", action="store_true", help="regenerate even if a complete copy exists")
    lab = sub.add_parser("labels", help="per-structure label maps of a generated skull-sim set (cached beside it)")
    lab.add_argument("--dataset", default="skull-sim", choices=["skull-sim", "skull-sim-v2"])
    lab.add_argument("--preset", default="tiny")
    lab.add_argument("--seed", type=int, default=0)
    lab.add_argument("--data-root", type=Path)
    lab.add_argument("--workers", type=int, default=None)
    pre = sub.add_parser("preview", help="montage PNG (domains x views) of one subject")
    pre.add_argument("--dataset", default="skull-sim", choices=sorted(DATASETS))
    pre.add_argument("--preset", default="tiny")
    pre.add_argument("--seed", type=int, default=0)
    pre.add_argument("--data-root", type=Path)
    pre.add_argument("--dataset-config", type=Path)
    pre.add_argument("--subject")
    pre.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            from . import default_data_root
            from .skull_sim import GENERATOR_VERSION, dataset_folder, generate, get_preset

            get_preset(args.preset)
            version = "2" if args.dataset == "skull-sim-v2" else GENERATOR_VERSION
            out = args.out or dataset_folder(default_data_root(), args.preset, args.seed, args.split_seed, args.jitter,
                                             version, args.misregister)
            progress, update = _progress_bar(f"{args.dataset} {args.preset}: subjects")
            with progress:
                generate(out, args.preset, args.seed, args.split_seed, args.jitter, args.dicom, args.workers,
                         args.force, progress=update, version=version, misregister=args.misregister)
            print(f"dataset ready: {out}")
        elif args.command == "labels":
            from .labels import ensure_labels

            ds = load_dataset(args.dataset, preset=args.preset, data_root=args.data_root, seed=args.seed)
            print(f"labels ready: {ensure_labels(ds, args.workers)}")
        else:
            from .preview import montage

            ds = load_dataset(args.dataset, preset=args.preset, data_root=args.data_root, seed=args.seed,
                              config=args.dataset_config)
            montage(ds, args.subject, args.out)
            print(f"preview written: {args.out}")
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
