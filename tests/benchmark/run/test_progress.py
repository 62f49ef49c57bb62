"""Progress where no terminal draws bars (a SLURM log, `| tee`): plain lines with step of total, elapsed time and an
estimate of the time left; the bars stay in a terminal."""
import io
import subprocess

import pytest
from runs import ONE_THREAD, ROOT, fit_cli

from benchmark.run.progress import PlainProgress, progress_line


def test_a_line_says_the_step_the_share_the_time_and_the_time_left():
    assert progress_line("fit", 12, 40, 65.0) == "fit: 12/40 (30%), 1m05s elapsed, ~2m32s left"  # 65 * 28 / 12 s
    assert progress_line("fit", 40, 40, 3725.0) == "fit: 40/40 (100%), 1h02m05s elapsed"
    assert progress_line("data", 3, None, 9.6) == "data: 3, 10s elapsed"
    # a resumed stage: the rate is that of this process's steps (30 -> 35 in 10 s: 5 more steps take 10 s)
    assert progress_line("fit", 35, 40, 10.0, since=30) == "fit: 35/40 (88%), 10s elapsed, ~10s left"


def test_lines_come_at_the_interval_and_once_at_the_end():
    now = [0.0]
    out = io.StringIO()
    bars = PlainProgress(stream=out, interval=30, clock=lambda: now[0])
    task = bars.add_task("evaluate", total=4)
    bars.advance(task)  # the first update prints
    now[0] = 10.0
    bars.advance(task)  # within the interval: nothing
    now[0] = 45.0
    bars.advance(task)
    now[0] = 50.0
    bars.advance(task)  # the end is always printed, once
    bars.update(task, completed=4)
    assert out.getvalue().splitlines() == ["evaluate: 1/4 (25%), 0s elapsed, ~0s left",
                                           "evaluate: 3/4 (75%), 45s elapsed, ~15s left",
                                           "evaluate: 4/4 (100%), 50s elapsed"]
    quiet = io.StringIO()
    q = PlainProgress(stream=quiet, disable=True)
    q.advance(q.add_task("x", total=1))
    assert quiet.getvalue() == ""


@pytest.mark.parametrize("method", ["medshift", "cyclegan"])
def test_a_run_whose_output_is_a_pipe_prints_its_progress(micro, tmp_path, method):
    """Iterations, not optimizer steps: CycleGAN's two optimizers make Lightning's `global_step` count 120 for its 60
    iterations, and the line must still say 60/60."""
    cmd = [c for c in fit_cli(tmp_path / "r", micro, method=method) if c != "--quiet"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ONE_THREAD)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert f"{method} seed 0: training: 0/60 (0%), 0s elapsed" in lines
    assert any(line.startswith(f"{method} seed 0: training: 60/60 (100%)") for line in lines)
    assert any(line.startswith(f"{method} seed 0: evaluate: ") and "(100%)" in line for line in lines)
    # the validation choices before the test points show their progress too (minutes for MedShift on `tiny`)
    assert any(line.startswith(f"{method} seed 0: knob choice (validation): ") and "(100%)" in line
               for line in lines)
