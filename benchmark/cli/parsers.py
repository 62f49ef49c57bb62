"""The command line's parsers, declared once. Flags several sub-commands share come from small parent parsers
(`results`, `scoring`, `data`), so a flag, its default and its help are written in one place."""
from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = ("`python -m benchmark {run,sweep,rescore,collect,figures,archive,regress,validity,ceiling,utility,perf,"
               "weights,export,score}`:\na thin CLI over importable functions.")


def _parent(*adders) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(p)
    return p


def _results(p) -> None:
    p.add_argument("--results-dir", type=Path, default=Path("results"))


def _weights(p) -> None:
    p.add_argument("--weights-dir", type=Path, default=None)


def _clip(p, help: str | None = None) -> None:
    p.add_argument("--clip-dir", type=Path, default=None, help=help)


def _no_frd(p, help: str | None = None) -> None:
    p.add_argument("--no-frd", action="store_true", help=help)


def _data(p) -> None:
    p.add_argument("--dataset", default="skull-sim")
    p.add_argument("--preset", default="tiny")


def _data_root(p) -> None:
    p.add_argument("--data-root", default=None)


def _dataset_config(p, help: str | None = None) -> None:
    p.add_argument("--dataset-config", default=None, help=help)


def _method(p, default, help: str) -> None:
    p.add_argument("--method", nargs="+", default=default, help=help)


def _fit(p) -> None:
    """What names one or more fits and how they train (`run` and `sweep`)."""
    _method(p, ["medshift"], "method name(s) or 'all'")
    _data(p)
    p.add_argument("--task", nargs="+", default=["sim2real"], help="task name(s), or 'src1+src2->tgt'")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--max-steps", type=int, default=None, help="training iterations (bypasses the FLOP budget)")
    p.add_argument("--budget", type=float, default=None,
                   help="training FLOPs per learned method (default: benchmark/configs/budgets.yaml for the preset)")
    p.add_argument("--budgets", nargs="+", default=None, metavar="B",
                   help="one fit per budget: multiples of the preset's (1x 3x 9x) or FLOPs; 1x is the headline fit "
                        "(collect: results/tables/compute.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method config override")
    p.add_argument("--curve", action="store_true", help="also sweep the dense knob grid (for figures)")
    p.add_argument("--knobs", nargs="+", type=float, default=[], metavar="V",
                   help="also score these knob values on the test split (not part of the run's identity: on a "
                        "finished run it adds the points; none is a choice)")
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
    _results(p)
    _weights(p)
    _clip(p, "local CLIP folder for CMMD (optional)")
    _no_frd(p, "skip FRD (radiomics, ~0.2 s per 64 px image on 1 core)")
    _data_root(p)
    _dataset_config(p, "YAML for folder datasets")
    p.add_argument("--misregister", type=float, default=0.0, metavar="MM",
                   help="skull-sim with every scene's synthetic pose shifted by MM mm against its real pose (paired "
                        "but misregistered, as a simulator against a physical phantom); 0 = aligned")


def _sweep(p) -> None:
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
    p.add_argument("--archive", type=Path, default=None, metavar="DIR",
                   help="after each fit, copy every finished run's records, config and samples to DIR (as `archive "
                        "--out DIR`): a folder you commit keeps what a lost machine would take with results/runs")


def _regress(p) -> None:
    p.add_argument("--update", action="store_true", help="rewrite the reference (and print what changed)")
    p.add_argument("--repeat", type=int, default=1, help="runs of REPEATS (seed, threads); --update: tolerances")
    _method(p, None, "only these methods")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (drills)")
    p.add_argument("--results-dir", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    _no_frd(p)
    p.add_argument("--jobs", type=int, default=2, help="processes, each single-threaded (default 2)")
    p.add_argument("--also", nargs="+", type=Path, default=[], metavar="REGRESS_JSON",
                   help="--update: references of this code from other machines, counted as repeats for tolerances")


def _perf(p) -> None:
    p.add_argument("--methods", nargs="+", default=None,
                   help="default: identity histmatch (translation); every learned method (--train)")
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", action="store_true", help="time training iterations per precision instead")
    p.add_argument("--preset", default="tiny", help="--train: the preset whose configs (batch, model size) to time")
    p.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    p.add_argument("--iterations", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="--train: where to time it")
    p.add_argument("--unet-sizes", nargs="+", type=int, default=[], metavar="PX",
                   help="--train: time MedShift's U-Net on random images of these sizes instead of each method")


def _export(p) -> None:
    _data(p)
    p.add_argument("--task", nargs="+", default=["sim2real"], help="task name(s), or 'src1+src2->tgt'")
    p.add_argument("--split", nargs="+", default=["test", "val", "train"], choices=["test", "val", "train"],
                   help="test: what the tables score; val: the knob choice; train (with val): the downstream utility")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    p.add_argument("--out", type=Path, default=None, help="default: export/<dataset>-<preset> beside the results")
    _results(p)
    _data_root(p)
    _dataset_config(p, "YAML for folder datasets")


def _score(p) -> None:
    p.add_argument("--name", required=True, help="the label of the method in the tables (not a built-in name)")
    p.add_argument("--translations", type=Path, required=True,
                   help="folder with <split>/<id>.png translations of an export (test required; val, train optional)")
    _data(p)
    p.add_argument("--task", default="sim2real", help="the task the export was made for")
    p.add_argument("--knob", default=None, metavar="NAME=VALUE",
                   help="this folder's knob value (several values: several folders, one score call each)")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="recorded with the records, e.g. nfe=4, sec_per_image=0.02, n_params=1.3e9, train_sec=3600")
    p.add_argument("--seed", type=int, default=0, help="the seed of the translator that made them (one run per seed)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated dataset")
    _results(p)
    _weights(p)
    _clip(p, "local CLIP folder for CMMD (optional)")
    _no_frd(p)
    _data_root(p)
    _dataset_config(p, "YAML for folder datasets")


def _out(p) -> None:
    p.add_argument("--out", type=Path, default=None)


#: sub-command -> (help, the parents and adders that declare its flags, in order)
COMMANDS = {
    "run": ("fit, translate and score methods; append records under results/runs",
            [_fit, lambda p: p.add_argument("--dry-run", action="store_true", help="print the resolved plan and exit"),
             lambda p: p.add_argument("--quiet", action="store_true")]),
    "sweep": ("methods x seeds x tasks x --vary settings as independent jobs, here or on SLURM", [_fit, _sweep]),
    "rescore": ("add newly computable metrics to finished runs (translate again, no training)",
                [lambda p: _method(p, None, "only these methods' runs"), _results, _weights, _clip]),
    "collect": ("records -> results/tables/summary.{csv,md,tex}",
                [_results, _out, lambda p: p.add_argument(
                    "--partial", action="store_true",
                    help="also the records of runs not yet done (a table mid-sweep; rows may rest on part of a run)")]),
    "regress": ("every method on micro vs results/reference/regress.json, plus invariants", [_regress]),
    "archive": ("copy finished runs' records, config and samples to results/records (committed)",
                [_results, _out, lambda p: p.add_argument("--all-samples", action="store_true",
                                                          help="keep every seed's sample images (default: lowest)")]),
    "figures": ("summary -> results/figures/*.png", [_results, _out]),
    "validity": ("which realism metrics grow with controlled degradations of real images",
                 [_data, lambda p: p.add_argument("--domain", default="real_normal"), _results, _weights, _data_root,
                  _dataset_config, _no_frd]),
    "ceiling": ("the best SSIM/PSNR (gt) any translator can reach where the real images hold anatomy the synthetic "
                "ones lack (skull-sim v3)",
                [_data, _results, _data_root, lambda p: p.add_argument("--workers", type=int, default=1)]),
    "utility": ("does translated synthetic data train a segmenter that works on real images",
                [lambda p: _method(p, ["all"], "method name(s) with finished runs, or 'all'"), _data,
                 lambda p: p.add_argument("--task", nargs="+", default=["sim2real", "dose"]),
                 lambda p: p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2]), _results, _data_root,
                 lambda p: p.add_argument("--budgets", nargs="+", default=None, metavar="B",
                                          help="the fits at these budgets (as run --budgets: 1x 3x 9x or FLOPs); "
                                               "default: the headline fit")]),
    "perf": ("throughput of the scorer and of each method's translate", [_perf]),
    "weights": ("download Inception + AlexNet weights (needs internet)", [_weights]),
    "export": ("write a task's source images (and the target's training images) for a translator outside the suite",
               [_export]),
    "score": ("score translations made outside the suite like a trained method's (group 'external')", [_score]),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help, adders) in COMMANDS.items():
        sub.add_parser(name, help=help, parents=[_parent(*adders)])
    return parser
