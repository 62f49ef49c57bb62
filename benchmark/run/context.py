"""What one invocation shares across runs (`RunContext`: scorer, loaded data, progress), a run prepared for its
stages (`PreparedRun`), and the exclusive hold of a run folder (`RunLock`)."""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchmark.errors import RunError, user_input
from benchmark.protocol.config import RunSpec
from benchmark.protocol.records import pid_alive

# Lightning messages that are expected for analytic methods or on CPU-only machines.
QUIET_WARNINGS = (".*configure_optimizers.*returned .None.*", ".*training_step.*returned .None.*",
                  ".*LeafSpec.*", ".*does not have many workers.*", ".*litlogger.*", ".*module\\(s\\) in eval mode.*")


@dataclass
class RunContext:
    """What one invocation shares across runs: the scorer, loaded datasets, progress display."""

    results_dir: Path
    scorer: object
    datasets: dict = field(default_factory=dict)
    progress: object | None = None
    quiet: bool = False
    rescore: bool = False
    _val_scorer: object | None = None

    @property
    def val_scorer(self):
        """The validation scorer: the same metrics without FRD (its radiomics would dominate the curves' cost)."""
        if self._val_scorer is None:
            from benchmark.scoring.scorer import Scorer

            sc = self.scorer
            self._val_scorer = Scorer(weights_dir=sc.weights_dir, cache_dir=sc.cache_dir, frd=False, n_boot=50,
                                      feature_extractor=sc.feature_extractor, lpips_model=sc.lpips_model,
                                      clip_model=sc.clip_model, clip_dir=sc.clip_dir)
        return self._val_scorer


@dataclass
class PreparedRun:
    """One run ready for its stages: the spec and the invocation's context, the run folder, the checked data, the
    resolved method config and budget plan, and the method built from them (`benchmark.run.checks.prepared_run`)."""

    spec: RunSpec
    ctx: RunContext
    folder: Path
    dataset: object
    config: dict
    plan: dict
    method: object

    @property
    def cache_dir(self) -> Path:
        """Where a method caches what it derives from the training data (`TranslationMethod.prepare_fit`)."""
        return self.ctx.results_dir / "cache"

    @property
    def records_path(self) -> Path:
        return self.folder / "records.jsonl"


def data_key(spec: RunSpec) -> tuple:
    """What identifies a spec's loaded dataset within one invocation."""
    return (spec.dataset, spec.preset, spec.data_seed, spec.dataset_config, spec.data_root, spec.misregister)


def load_data(spec: RunSpec, ctx: RunContext, progress=None):
    """The spec's dataset, loaded (and for skull-sim generated) once per invocation.

    Args:
        progress: Optional callable(done, total) for generation progress.
    """
    from datasets import load_dataset

    key = data_key(spec)
    if key not in ctx.datasets:
        with user_input():  # an unknown dataset or preset, a bad dataset config: one line naming it
            ctx.datasets[key] = load_dataset(spec.dataset, preset=spec.preset, seed=spec.data_seed,
                                             config=spec.dataset_config, data_root=spec.data_root,
                                             misregister=spec.misregister, progress=progress)
    return ctx.datasets[key]


class RunLock:
    """Exclusive hold of a run folder: `.lock` holding {pid, host, since}, written in full to a temporary and linked
    into place (an atomic create-if-absent: a lock is never seen half-written).

    A lock left by a process that no longer exists on this host is stale and is taken over, and so is one that cannot
    be read (a full disk while an older version took it); a lock held by a live process (or one on another host, which
    cannot be checked) stops the invocation with its owner named. A lock that cannot be written (a full disk) is a
    one-line error naming the folder, and leaves nothing behind.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
        tmp = self.path.with_name(f".lock.tmp-{os.getpid()}")
        try:
            tmp.write_text(me)
            for _ in range(2):
                try:
                    self._create(tmp, me)
                    return self
                except FileExistsError:
                    owner = self._owner()
                    if owner is None or (owner.get("host") == socket.gethostname()
                                         and not pid_alive(int(owner.get("pid", 0) or 0))):
                        self.path.unlink(missing_ok=True)  # stale: its process is gone, or it was never written
                        continue
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("since", 0)))
                    raise RunError(f"{self.path.parent} is being run by pid {owner.get('pid')} on {owner.get('host')} "
                                   f"(since {since}); wait for it, or delete {self.path} if that process is gone") \
                        from None
        except OSError as exc:
            raise disk_error(exc, self.path.parent) from None
        finally:
            tmp.unlink(missing_ok=True)
        raise RunError(f"could not take the lock {self.path}; delete it if no process is running this run")

    def _create(self, tmp: Path, me: str) -> None:
        """Put the lock in place if absent (FileExistsError otherwise): a hard link of the written temporary; on a file
        system without hard links, an exclusive create and write (a write that fails removes the lock again)."""
        import errno

        try:
            os.link(tmp, self.path)
            return
        except OSError as exc:
            if isinstance(exc, FileExistsError) or exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(me)
        except OSError:
            self.path.unlink(missing_ok=True)
            raise

    def _owner(self) -> dict | None:
        """The holder {pid, host, since}, or None where the lock cannot be read (empty, not JSON, gone)."""
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return owner if isinstance(owner, dict) and owner.get("pid") and owner.get("host") else None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def disk_error(exc: OSError, folder: Path) -> Exception:
    """A full disk (or quota) as one line naming the folder; any other OSError as it is."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunError(f"{folder}: no space left on the device ({exc.strerror}); nothing half-written was kept and "
                        "every finished record is on disk: free space (or pass --results-dir on another disk) and run "
                        "the same command again to resume")
    return exc
