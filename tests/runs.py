"""Helpers the run tests share: a `micro` run spec and context, the CLI command of a small fit, record views."""
import os
import subprocess
import sys
from pathlib import Path

from benchmark.protocol.config import RunSpec
from benchmark.run.context import RunContext
from benchmark.scoring.scorer import Scorer

ROOT = Path(__file__).resolve().parents[1]
SMALL = (("base_channels", 8), ("channel_mults", [1, 2]))
ONE_THREAD = dict(os.environ, OMP_NUM_THREADS="1")  # every compared run alike: thread count changes float sums


def micro_ctx(results):
    return RunContext(results, Scorer(weights_dir=results / "w", cache_dir=results / "cache", frd=False), quiet=True)


def micro_spec(micro, method="medshift", **kw):
    return RunSpec(method, preset="micro", data_root=str(micro.root.parent.parent), max_steps=kw.pop("max_steps", 30),
                   overrides=kw.pop("overrides", SMALL if method != "cyclegan" else ()), **kw)


def metrics_of(records):
    keys = ("ssim_src", "ssim_gt", "psnr_gt", "nps_dist", "hist_w1")
    return {(r["split"], r["step"], r["task"], r["source"], r["knob_value"]): tuple(r[k] for k in keys)
            for r in records}


def records_of_test_split(records):
    return [r for r in records if r["split"] == "test"]


def fit_cli(results, micro, *extra, method="medshift"):
    """`python -m benchmark run` of a small 60-step fit of `method` (medshift or cyclegan) on `micro`."""
    settings = (["--set", "base_channels=8", "--set", "channel_mults=[1, 2]"] if method == "medshift" else
                ["--set", "ngf=8", "--set", "ndf=8", "--set", "n_blocks=1"])
    return [sys.executable, "-m", "benchmark", "run", "--method", method, "--preset", "micro", "--quiet",
            "--results-dir", str(results), "--data-root", str(micro.root.parent.parent), "--max-steps", "60",
            *settings, "--no-frd", *extra]


def run_cmd(cmd) -> int:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, env=ONE_THREAD).returncode
