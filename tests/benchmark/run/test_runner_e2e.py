"""End to end, as a user runs it: `make benchmark METHOD=identity` on skull-sim tiny, then figures."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from benchmark.reporting.figures import tradeoff_curves, write_figures

ROOT = Path(__file__).resolve().parents[3]


def make(*args: str) -> list[str]:
    """`make ARGS` run with this interpreter and without the install step (`-o`: the venv's stamp counts as up to
    date, whether or not the checkout has one), so the test reads the Makefile and installs nothing."""
    venv = Path(sys.executable).parent.parent
    return ["make", "-o", f"{venv}/.installed", f"VENV={venv}", f"PY={sys.executable}", *args]


def test_make_benchmark_identity(tmp_path, data_root):
    env = dict(os.environ, XRAYBENCH_DATA=str(data_root))
    proc = subprocess.run(make("benchmark", "METHOD=identity", "SEEDS=0", f"RESULTS={tmp_path}", "ARGS=--quiet"),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    records = [json.loads(line) for f in tmp_path.glob("runs/identity/*/*/records.jsonl") for line in f.open()]
    records = [r for r in records if r["split"] == "test"]
    assert len(records) == 2 and all(r["ssim_src"] == 1.0 for r in records)
    assert (tmp_path / "runs/identity").exists() and list(tmp_path.glob("runs/identity/*/*/done"))
    table = pd.read_csv(tmp_path / "tables/summary.csv")
    assert list(table["method"]) == ["identity"]
    assert "| sim2real | reference | identity" in (tmp_path / "tables/summary.md").read_text()
    assert "results (this invocation" in proc.stdout  # the rich table at the end
    # a second invocation finds the run done and trains nothing
    again = subprocess.run(make("benchmark", "METHOD=identity", "SEEDS=0", f"RESULTS={tmp_path}", "ARGS=--quiet"),
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0 and "Trainer" not in again.stderr
    paths = write_figures(tmp_path, tmp_path / "figures")
    from matplotlib.image import imread

    png = imread(next(p for p in paths if p.name == "tradeoff-sim2real.png"))
    assert png.shape[0] > 300 and png.shape[1] > 300 and png[..., :3].std() > 0.05  # a drawn figure, not a blank page


def test_make_benchmark_runs_one_seed_unless_seeds_is_given():
    """A newcomer's `make benchmark` is seed 0 (three MedShift seeds take ~40 min on 2 cores); SEEDS given on the
    command line or in the environment is obeyed, and `make sweep` keeps its three seeds (make's `origin`)."""
    def seeds(*args: str, env: dict) -> str:
        out = subprocess.run(make("-n", "--no-print-directory", *args), cwd=ROOT, env=env,
                             capture_output=True, text=True, check=True).stdout
        line = next(x for x in out.splitlines() if "-m benchmark" in x)
        return line.split("--seeds ")[1].split(" --")[0].strip()

    # neither SEEDS nor a parent make's variables (`make test SEEDS=1` passes SEEDS on through MAKEFLAGS)
    base = {k: v for k, v in os.environ.items() if k not in ("SEEDS", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    assert seeds("benchmark", env=base) == "0"
    assert seeds("benchmark", "SEEDS=0 1 2", env=base) == "0 1 2"
    assert seeds("benchmark", env=dict(base, SEEDS="1 2")) == "1 2"
    assert seeds("sweep", env=base) == "0 1 2"
    assert seeds("utility", env=base) == "0 1 2"


def test_the_readme_lists_every_make_target_as_make_help_does():
    # run by `make test`, make is a sub-make and would print "Entering directory" around the list
    help_text = subprocess.run(make("--no-print-directory", "help"), cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    assert len(help_text.splitlines()) > 10 and help_text in (ROOT / "README.md").read_text()


def test_tradeoff_curve_draws_knob_methods_as_lines():
    import matplotlib

    matplotlib.use("Agg")
    from benchmark.reporting.load import load_records

    df = load_records(ROOT / "tests/data/records")
    fig = tradeoff_curves(df, "sim2real")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("SSIM (src)") and ax.get_ylabel().startswith("FID")
    lines = {line.get_label().split(",")[0]: line for line in ax.get_lines()}
    assert len(lines["MedShift (τ)"].get_xdata()) == 2  # two tau values on one curve
    assert len(lines["CycleGAN"].get_xdata()) == 1  # a single point
    ideal = df[df["method"] == "identity"]["ssim_gt"].mean()  # a perfect translation's SSIM (src), marked
    assert lines["ideal SSIM (src) 0.630: a perfect translation (no translation's SSIM (gt))"].get_xdata()[0] == ideal
    # without FID the tables' next realism metric: FRD where every record has it, else the NPS distance
    no_fid = df.assign(fid=None, frd=df["fid"] / 20)
    assert tradeoff_curves(no_fid, "sim2real").axes[0].get_ylabel().startswith("FRD")
    no_fid.loc[no_fid.index[0], "frd"] = None
    assert tradeoff_curves(no_fid, "sim2real").axes[0].get_ylabel().startswith("Spectrum dist")


def test_curves_use_the_same_seeds_at_every_point_and_variants_get_their_own_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from benchmark.reporting.figures import common_seeds

    rows = [dict(method="medshift", task="sim2real", seed=s, knob="tau", knob_value=k, ssim_src=0.5 + 0.1 * s,
                 nps_dist=0.3, ssim_gt=0.7, setting="")
            for s in (0, 1, 2) for k in ((0.6, 0.3, 0.9) if s == 0 else (0.6, 0.3))]
    rows += [dict(r, method="cyclegan", knob="", knob_value="") for r in rows if r["knob_value"] == 0.6]
    df = pd.DataFrame(rows)
    kept = common_seeds(df)
    # seed 0's extra value (validation went beyond the grid's edge) is left out: every seed at the shared values
    assert set(kept[kept["method"] == "medshift"]["seed"]) == {0, 1, 2}
    assert set(kept[kept["method"] == "medshift"]["knob_value"]) == {0.6, 0.3}
    assert set(kept[kept["method"] == "cyclegan"]["seed"]) == {0, 1, 2}
    fig = tradeoff_curves(df.assign(dataset="skull-sim", preset="tiny"), "sim2real")
    labels = [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
    assert labels == ["MedShift (τ), 3 seeds", "CycleGAN, 3 seeds"]
    # a dense 1-seed `--curve` on seed 0 keeps the whole curve of that seed rather than 3 seeds' two points
    dense = [dict(rows[0], knob_value=k) for k in (0.1, 0.2, 0.4, 0.5)]
    kept = common_seeds(pd.DataFrame(rows + dense))
    medshift = kept[kept["method"] == "medshift"]
    assert set(medshift["seed"]) == {0} and medshift["knob_value"].nunique() == 7
    records = df.assign(dataset="skull-sim", preset="tiny")
    variant = records[records["method"] == "medshift"].assign(setting="guidance=3.0")
    from benchmark.protocol.records import record_sha

    lines = [dict(r, _sha=record_sha(r)) for r in pd.concat([records, variant]).to_dict("records")]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    paths = write_figures(tmp_path, tmp_path / "figures")
    assert [p.name for p in paths if p.suffix == ".png"] == ["tradeoff-sim2real.png", "tradeoff-sim2real-variants.png",
                                                            "medshift-ablation-sim2real.png"]  # a variant: ablation
    assert all(p.with_suffix(".pdf") in paths for p in paths)  # every figure also as PDF, for the paper


def _make(target_args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(make("--no-print-directory", *target_args), cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)


def test_a_newcomers_make_benchmark_succeeds_beside_an_archive_of_the_same_fits(tmp_path, data_root):
    """What a fresh clone does: the archive holds MedShift's fit made for `sim2real dose` (another run id), the
    newcomer runs `make benchmark` for `sim2real` alone, then `collect` (inside the target) must succeed: the live
    run stands in for the archived run's sim2real records, its dose records stay, and nothing asks to delete files."""
    env = dict(os.environ, XRAYBENCH_DATA=str(data_root), OMP_NUM_THREADS="1")
    common = ["METHOD=medshift", "PRESET=micro", "SEEDS=0", f"RESULTS={tmp_path}",
              "ARGS=--quiet --no-frd --max-steps 20 --set base_channels=8 --set channel_mults=[1,2]"]
    first = _make(["benchmark", "TASK=sim2real dose", *common], env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert _make(["archive", f"RESULTS={tmp_path}"], env).returncode == 0
    shutil.rmtree(tmp_path / "runs")  # what a fresh clone has: the archive only
    fresh = _make(["benchmark", "TASK=sim2real", *common], env)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    stands_in = [line for line in fresh.stdout.splitlines() if "stands in for the archived" in line]
    assert len(stands_in) == 1 and "agree" in stands_in[0], fresh.stdout[-3000:]
    table = pd.read_csv(tmp_path / "tables/summary.csv")
    assert set(table["task"]) == {"sim2real", "dose"}  # the archived fit's other task is still read
    live = list(tmp_path.glob("runs/medshift/*/*"))
    archived = list(tmp_path.glob("records/medshift/*/*"))
    assert len(live) == 1 and len(archived) == 1 and live[0].name != archived[0].name
