"""What several command functions share: the thread count and the writable-results check."""
from __future__ import annotations

import os
from pathlib import Path

from benchmark.errors import RunError


def use_cores() -> None:
    """Every core (at most 16) unless the user pinned a count (OMP_NUM_THREADS), e.g. to run two benchmarks side by
    side; imports torch."""
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(os.cpu_count() or 1, 16))))


def check_writable(results_dir: Path) -> None:
    try:
        (results_dir / "runs").mkdir(parents=True, exist_ok=True)
        probe = results_dir / "runs" / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunError(f"results folder {results_dir} is not writable ({exc.strerror}); pass --results-dir") from exc
