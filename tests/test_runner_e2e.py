"""End to end, as a user runs it: `make benchmark METHOD=identity` on skull-sim tiny, then figures."""
import json
import os
import subprocess
from pathlib import Path

import pandas as pd

from benchmark.figures import tradeoff_curves, write_figures

ROOT = Path(__file__).resolve().parents[1]


def test_make_benchmark_identity(tmp_path, data_root):
    env = dict(os.environ, XRAYBENCH_DATA=str(data_root))
    proc = subprocess.run(["make", "benchmark", "METHOD=identity", "SEEDS=0", f"RESULTS={tmp_path}", "ARGS=--quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for f in tmp_path.glob("runs/identity/*/*/records.jsonl") for line in f.open()]
    assert len(records) == 2 and all(r["ssim_src"] == 1.0 for r in records)
    assert (tmp_path / "runs/identity").exists() and list(tmp_path.glob("runs/identity/*/*/done"))
    table = pd.read_csv(tmp_path / "tables/summary.csv")
    assert list(table["method"]) == ["identity"]
    assert "| sim2real | identity" in (tmp_path / "tables/summary.md").read_text()
    assert "results (this invocation" in proc.stdout  # the rich table at the end
    # a second invocation finds the run done and trains nothing
    again = subprocess.run(["make", "benchmark", "METHOD=identity", "SEEDS=0", f"RESULTS={tmp_path}", "ARGS=--quiet"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "Trainer" not in again.stderr
    paths = write_figures(tmp_path, tmp_path / "figures")
    assert paths and paths[0].stat().st_size > 10_000


def test_tradeoff_curve_draws_knob_methods_as_lines():
    import matplotlib

    matplotlib.use("Agg")
    from benchmark.collect import load_records

    df = load_records(ROOT / "tests/data/records")
    fig = tradeoff_curves(df, "sim2real")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("SSIM (src)") and ax.get_ylabel().startswith("FID")
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert len(lines["MedShift (τ)"].get_xdata()) == 2  # two tau values on one curve
    assert len(lines["CycleGAN"].get_xdata()) == 1  # a single point
