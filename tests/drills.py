"""Drills at controlled points: a process that signals itself from inside a training step, so that a test of a
stop or a kill never races the run, however busy the machine is."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Runs `python -m benchmark ...` and sends XRAYBENCH_TEST_SIGNAL once, from inside the training step of iteration
#: XRAYBENCH_TEST_AT of method XRAYBENCH_TEST_METHOD (to the whole process group with XRAYBENCH_TEST_GROUP: every
#: rank of a fit over several processes), with Python's own SIGINT handler installed (a shell's background job
#: inherits SIGINT ignored).
SIGNAL_IN_TRAINING = """
import os, signal, sys
import methods
signal.signal(signal.SIGINT, signal.default_int_handler)
cls = methods.get_method(os.environ["XRAYBENCH_TEST_METHOD"])
step, sent = cls.training_step, []
def signalled(self, batch, batch_idx):
    if self.trainer.global_step // cls.optimizer_steps_per_iteration == int(os.environ["XRAYBENCH_TEST_AT"]) \\
            and not sent:
        sent.append(1)
        sig = getattr(signal, os.environ["XRAYBENCH_TEST_SIGNAL"])
        os.killpg(os.getpgid(0), sig) if os.environ.get("XRAYBENCH_TEST_GROUP") else os.kill(os.getpid(), sig)
    return step(self, batch, batch_idx)
cls.training_step = signalled
from benchmark.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def signalled_in_training(cmd: list[str], name: str, env: dict, method: str = "medshift", at: int = 30,
                          group: bool = False, **popen) -> subprocess.CompletedProcess:
    """Run `cmd` (`[python, -m, benchmark, ...]`) so that it sends itself signal `name` (e.g. "SIGTERM") in training
    iteration `at`; with `group`, to its whole process group (start it in a session of its own)."""
    env = dict(env, XRAYBENCH_TEST_SIGNAL=name, XRAYBENCH_TEST_METHOD=method, XRAYBENCH_TEST_AT=str(at),
               XRAYBENCH_TEST_GROUP="1" if group else "")
    return subprocess.run([sys.executable, "-c", SIGNAL_IN_TRAINING, *cmd[3:]], cwd=ROOT, capture_output=True,
                          text=True, env=env, start_new_session=group, **popen)


#: Runs `python -m benchmark ...` and sends XRAYBENCH_TEST_SIGNAL once, right after the run has written its first test
#: record (evaluation has begun; the records on disk are whole), with Python's own SIGINT handler installed.
SIGNAL_IN_EVALUATION = """
import os, signal, sys
import benchmark.run.evaluate as run
signal.signal(signal.SIGINT, signal.default_int_handler)
write, sent = run.write_records, []
def then_signal(path, records):
    write(path, records)
    if any(r.get("split") == "test" for r in records) and not sent:
        sent.append(1)
        os.kill(os.getpid(), getattr(signal, os.environ["XRAYBENCH_TEST_SIGNAL"]))
run.write_records = then_signal
from benchmark.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def signalled_in_evaluation(cmd: list[str], name: str, env: dict) -> subprocess.CompletedProcess:
    """Run `cmd` (`[python, -m, benchmark, ...]`) so that it sends itself signal `name` after its first test record."""
    return subprocess.run([sys.executable, "-c", SIGNAL_IN_EVALUATION, *cmd[3:]], cwd=ROOT, capture_output=True,
                          text=True, env=dict(env, XRAYBENCH_TEST_SIGNAL=name))
