"""The runner: fit -> translate the test split over the knob grid -> score -> one record per point.

A `RunSpec` (method, dataset, preset, seed, tasks, overrides, ...) names one fit. Its folder
`results/runs/<method>/<dataset>-<preset>/seed<k>-<hash>/` holds, written *before* training,
`config.json` (resolved config, seed, split hash, git sha, package versions); then
`checkpoints/last.ckpt` (resume point), `records.jsonl` (rewritten atomically after every
evaluation, each line carrying `_sha` of its own content) and finally `done`. Re-running skips a run
with `done`, resumes one with a checkpoint and re-does only the evaluations that have no record.

Tasks whose training domains are the same for a method share one fit: MedShift trains on every
domain, so `--task sim2real dose` translates both pairs with one model.

Settings a method declares in `sampling_settings` (MedShift's guidance, solver and step size; the
diffusion baselines' sampler and step count) do not change what is trained, and neither do the tasks
as long as the method's training domains stay the same. A run that differs from a finished run only
in those (and in `--curve`) starts from that run's checkpoint instead of training again (`fit_key`):
`--task dose` after `--task sim2real` re-uses MedShift's model, `--set guidance=3` re-uses any
MedShift fit. Its records keep the original `train_sec`; config.json names the donor run. Records
carry `setting`, the run's `--set` overrides, so that variants stay apart in the tables.

Re-scoring (`python -m benchmark rescore`): when the scorer gains a metric (new weights in
`--weights-dir`, FRD's packages installed, a metric added to the suite), finished runs are translated
again from their checkpoints and the missing metrics are added to their records; nothing is trained and
the values already recorded are kept. Each such record carries `rescored` (git sha, the metrics added
and the largest change of a metric recomputed alongside, which is 0 for deterministic methods).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DATA_ARGS = ("domains", "sources", "target", "image_size")
RECORD_KEYS = ("method", "setting", "dataset", "preset", "task", "seed", "source", "target", "knob", "knob_value",
               "n_images",
               "ssim_src", "psnr_src", "lpips_src", "ssim_gt", "psnr_gt", "lpips_gt", "fid", "kid", "precision",
               "recall", "density", "coverage", "cmmd", "nps_dist", "hist_w1", "frd", "nfe", "sec_per_image",
               "train_sec", "n_params", "peak_rss_mb")
# Lightning messages that are expected for analytic methods or on CPU-only machines.
QUIET_WARNINGS = (".*configure_optimizers.*returned .None.*", ".*training_step.*returned .None.*",
                  ".*LeafSpec.*", ".*does not have many workers.*", ".*litlogger.*", ".*module\\(s\\) in eval mode.*",
                  ".*dirpath has changed.*")


def stale_metrics(record: dict, unavailable: dict) -> list[str]:
    """Metrics a scorer (its `unavailable`) can compute that `record` lacks; fidelity only where gt existed."""
    from .metrics import METRICS

    has_gt = record.get("ssim_gt") is not None
    return [m for m, s in METRICS.items()
            if record.get(m) is None and m not in unavailable and (has_gt or s.axis != "fidelity")]


def merge_rescored(old: dict, new: dict, added: list[str], sha: str) -> dict:
    """`old` with the `added` metrics (and their intervals) from `new`; the other values stay as recorded."""
    from .metrics import METRICS

    out = dict(old)
    for m in added:
        for k in (m, f"{m}_lo", f"{m}_hi"):
            if k in new:
                out[k] = new[k]
    unavailable = {k: v for k, v in (old.get("unavailable") or {}).items() if k not in added}
    unavailable.update({k: v for k, v in (new.get("unavailable") or {}).items() if k in added})
    out["unavailable"] = unavailable
    both = [m for m in METRICS if m not in added and isinstance(old.get(m), float) and isinstance(new.get(m), float)]
    diff = max((abs(old[m] - new[m]) for m in both), default=0.0)
    out["rescored"] = dict(git_sha=sha, metrics=added, max_abs_diff=diff)
    out.pop("_sha", None)
    out["_sha"] = record_sha(out)
    return out


class RunError(RuntimeError):
    """A problem with the user's request or files; the message is one line with the fix."""


@dataclass(frozen=True)
class RunSpec:
    """One fit of one method (frozen; its hash names the run folder)."""

    method: str
    dataset: str = "skull-sim"
    preset: str = "tiny"
    tasks: tuple[str, ...] = ("sim2real",)
    seed: int = 0
    data_seed: int = 0
    max_steps: int | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    curve: bool = False
    accelerator: str = "cpu"
    precision: str = "32-true"
    dataset_config: str | None = None
    data_root: str | None = None

    @property
    def run_id(self) -> str:
        d = asdict(self)
        d.pop("data_root")  # where the data lives does not change the result
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def folder(self, results_dir: Path) -> Path:
        run = f"seed{self.seed}-{self.run_id}"
        return Path(results_dir) / "runs" / self.method / f"{self.dataset}-{self.preset}" / run


# --------------------------------------------------------------------------------------------- config
def method_defaults(cls) -> dict:
    sig = inspect.signature(cls.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self" and k not in DATA_ARGS}


def parse_set(items: list[str]) -> tuple[tuple[str, object], ...]:
    out = []
    for item in items or []:
        if "=" not in item:
            raise RunError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(value)))
    return tuple(out)


def resolve_config(spec: RunSpec) -> dict:
    """Constructor defaults <- configs/<method>.yaml deltas (<dataset>, then <dataset>/<preset>) <- --set."""
    from methods import get_method

    cls = get_method(spec.method)
    cfg = method_defaults(cls)
    deltas_path = CONFIG_DIR / f"{spec.method}.yaml"
    if deltas_path.is_file():
        deltas = yaml.safe_load(deltas_path.read_text()) or {}
        for scope in (spec.dataset, f"{spec.dataset}/{spec.preset}"):
            cfg.update(deltas.get(scope) or {})
    for key, value in spec.overrides:
        if key not in cfg:
            raise RunError(f"--set {key}: {spec.method} has no such setting; valid keys: {', '.join(sorted(cfg))}")
        cfg[key] = value
    if spec.max_steps is not None and "max_steps" in cfg:
        cfg["max_steps"] = spec.max_steps
    return cfg


def setting(spec: RunSpec) -> str:
    """The run's departures from the method's configs (`--set`, `--max-steps`), e.g. "guidance=3.0"."""
    items = [f"{k}={json.dumps(v)}" for k, v in spec.overrides]
    return ",".join(items + ([f"max_steps={spec.max_steps}"] if spec.max_steps is not None else []))


def fit_key(spec: dict, method_config: dict, domains: tuple[str, ...]) -> str:
    """What determines the trained weights: the spec without what-to-evaluate fields, the method's
    training domains (instead of the tasks) and the resolved config without its `sampling_settings`.

    Args:
        spec: `asdict(RunSpec)` (as stored in config.json).
        method_config: The resolved config (as stored in config.json).
        domains: The dataset's domains (to resolve the tasks).
    """
    from datasets import get_task
    from methods import get_method

    cls = get_method(spec["method"])
    task = get_task(spec["tasks"][0], tuple(domains))
    sampling = set(cls.sampling_settings)
    d = {k: v for k, v in spec.items() if k not in ("data_root", "curve", "overrides", "tasks")}
    d["training_domains"] = list(cls.training_domains(tuple(domains), task.sources, task.target))
    d["config"] = {k: v for k, v in method_config.items() if k not in sampling}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def find_donor(folder: Path, key: str, domains: tuple[str, ...]) -> Path | None:
    """A finished sibling run (same method, dataset, seed) whose fit has the same `fit_key`, or None.

    A setting missing from an older run's config.json did not exist when it ran: it takes today's constructor
    default, which by this suite's convention reproduces the behaviour from before the setting was added.
    """
    from methods import get_method

    for other in sorted(folder.parent.glob(folder.name.split("-")[0] + "-*")):
        cfg_path, ckpt = other / "config.json", other / "checkpoints" / "last.ckpt"
        if other == folder or not ((other / "done").is_file() and ckpt.is_file() and cfg_path.is_file()):
            continue
        try:
            cfg = json.loads(cfg_path.read_text())
            config = {**method_defaults(get_method(cfg["spec"]["method"])), **cfg["method_config"]}
            if fit_key(cfg["spec"], config, domains) == key:
                return other
        except (KeyError, ValueError, TypeError, IndexError):  # a hand-edited config.json: not a donor
            continue
    return None


def finished_specs(results_dir: Path, methods: list[str] | None = None) -> list[RunSpec]:
    """The specs of the finished runs under `results_dir/runs` (from their config.json), optionally of some methods."""
    specs = []
    for cfg_path in sorted(Path(results_dir).glob("runs/*/*/*/config.json")):
        if not (cfg_path.parent / "done").is_file():
            continue
        d = json.loads(cfg_path.read_text())["spec"]
        d["tasks"] = tuple(d["tasks"])
        d["overrides"] = tuple(tuple(kv) for kv in d["overrides"])
        spec = RunSpec(**d)
        if spec.folder(results_dir) != cfg_path.parent:
            raise RunError(f"{cfg_path}: its spec hashes to {spec.run_id}, not to its folder; was it edited?")
        if not methods or spec.method in methods:
            specs.append(spec)
    return specs


def plan(methods: list[str], seeds: list[int], tasks: list[str], domains: tuple[str, ...], **common) -> list[RunSpec]:
    """Run specs: one per (method, seed, group of tasks that share training domains)."""
    from datasets import get_task
    from methods import METHODS, get_method

    names = list(METHODS) if methods == ["all"] else methods
    specs = []
    for name in names:
        cls = get_method(name)
        groups: dict[tuple, list[str]] = {}
        for t in tasks:
            task = get_task(t, domains)
            groups.setdefault(cls.training_domains(domains, task.sources, task.target), []).append(t)
        for seed in seeds:
            specs += [RunSpec(method=name, seed=seed, tasks=tuple(g), **common) for g in groups.values()]
    return specs


# --------------------------------------------------------------------------------------------- provenance
def git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for pkg in ("torch", "lightning", "diffusers", "torchmetrics", "torch-fidelity", "lpips", "numpy", "scipy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def record_sha(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "_sha"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_records(path: Path) -> list[dict]:
    """Records of one run; a line that fails its own checksum (edited by hand) is an error."""
    records = []
    if not path.is_file():
        return records
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunError(f"{path}:{i}: not valid JSON ({exc.msg}); restore the file or delete the run "
                           "folder") from exc
        if rec.get("_sha") != record_sha(rec):
            raise RunError(f"{path}:{i}: record checksum mismatch (edited by hand?); restore the file or delete the "
                           "run folder to recompute it")
        records.append(rec)
    return records


# --------------------------------------------------------------------------------------------- one run
@dataclass
class RunContext:
    """What one invocation shares across runs: the scorer, loaded datasets, progress display."""

    results_dir: Path
    scorer: object
    datasets: dict = field(default_factory=dict)
    progress: object | None = None
    quiet: bool = False
    rescore: bool = False


def load_data(spec: RunSpec, ctx: RunContext, progress=None):
    """The spec's dataset, loaded (and for skull-sim generated) once per invocation.

    Args:
        progress: Optional callable(done, total) for generation progress.
    """
    from datasets import load_dataset

    key = (spec.dataset, spec.preset, spec.data_seed, spec.dataset_config, spec.data_root)
    if key not in ctx.datasets:
        ctx.datasets[key] = load_dataset(spec.dataset, preset=spec.preset, seed=spec.data_seed,
                                         config=spec.dataset_config, data_root=spec.data_root, progress=progress)
    return ctx.datasets[key]


def _build(spec: RunSpec, dataset, config: dict):
    from datasets import get_task
    from methods import get_method

    task = get_task(spec.tasks[0], dataset.domains)
    return get_method(spec.method)(domains=dataset.domains, sources=task.sources, target=task.target,
                                   image_size=dataset.size, **config)


def _fit(spec: RunSpec, method, dataset, folder: Path, ctx: RunContext) -> float:
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from datasets import get_task
    from datasets.datamodule import TranslationDataModule

    for name in ("lightning.pytorch", "lightning.fabric"):  # after the import: Lightning sets INFO when imported
        logging.getLogger(name).setLevel(logging.WARNING)  # device/tip banners; warnings still reach the user
    task = get_task(spec.tasks[0], dataset.domains)
    domains = type(method).training_domains(dataset.domains, task.sources, task.target)
    dm = TranslationDataModule(dataset, domains, batch_size=int(method.hparams.get("batch_size", 16)), seed=spec.seed,
                               pairing=type(method).pairing, target=task.target, cache_dir=ctx.results_dir / "cache",
                               drop_last=type(method).drop_last)
    settings = method.trainer_settings(spec.max_steps)
    steps = settings.get("max_steps", -1)
    ckpt_dir = folder / "checkpoints"
    callbacks = [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0,
                                 every_n_train_steps=max(25, steps // 10) if steps and steps > 0 else None)]
    interactive = sys.stdout.isatty() and not ctx.quiet
    if interactive:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    trainer = L.Trainer(accelerator=spec.accelerator, devices=1, precision=spec.precision, callbacks=callbacks,
                        logger=CSVLogger(folder, name="logs"), enable_progress_bar=interactive,
                        enable_model_summary=False, num_sanity_val_steps=0, deterministic=False,
                        log_every_n_steps=10, **settings)
    last = ckpt_dir / "last.ckpt"
    if last.is_file():
        try:  # validate before Lightning touches it: a clear error, and the file is left as it is
            torch.load(last, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors here
            raise RunError(f"checkpoint {last} cannot be loaded ({type(exc).__name__}: {str(exc)[:100]}); delete it "
                           "to train this run from scratch") from exc
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(method, datamodule=dm, ckpt_path=last if last.is_file() else None, weights_only=True)
    return time.perf_counter() - t0


@torch.no_grad()
def _translate(method, x: torch.Tensor, source: str, target: str, knob,
               batch_size: int = 64) -> tuple[torch.Tensor, float]:
    device = method.device
    t0 = time.perf_counter()
    out = [method.translate(x[i:i + batch_size].to(device), source, target, knob).float().cpu()
           for i in range(0, len(x), batch_size)]
    if device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), (time.perf_counter() - t0) / max(len(x), 1)


def evaluations(spec: RunSpec, method, dataset) -> list[tuple[str, str, str, object]]:
    """(task, source, target, knob value) points to evaluate."""
    from datasets import get_task

    grid = tuple(method.knob_grid)
    if spec.curve and method.knob_curve:
        grid = tuple(dict.fromkeys(grid + tuple(method.knob_curve)))
    points = []
    for t in spec.tasks:
        task = get_task(t, dataset.domains)
        points += [(t, src, task.target, k) for src in task.sources for k in grid]
    return points


def run_one(spec: RunSpec, ctx: RunContext) -> list[dict]:
    """Fit, translate, score and record one spec; returns its records (existing ones if already done).

    With `ctx.rescore`, a finished run whose records lack metrics the scorer can now compute is
    translated again from its checkpoint and those metrics are added (see the module docstring).
    """
    folder = spec.folder(ctx.results_dir)
    records_path = folder / "records.jsonl"
    finished = (folder / "done").is_file()
    records = read_records(records_path)
    stale = {(r["task"], r["source"], r["knob_value"]): stale_metrics(r, ctx.scorer.unavailable)
             for r in records} if ctx.rescore else {}
    stale = {k: v for k, v in stale.items() if v}
    if finished and not stale:
        return records
    last = folder / "checkpoints" / "last.ckpt"
    dataset = load_data(spec, ctx)
    config = resolve_config(spec)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(spec.seed)
    import lightning as L

    L.seed_everything(spec.seed, verbose=False)
    method = _build(spec, dataset, config)
    if finished and not last.is_file() and method.trainer_settings(spec.max_steps) != {"max_steps": 0}:
        raise RunError(f"cannot re-score {folder}: checkpoints/last.ckpt is missing, and training again would not "
                       "reproduce the recorded values; delete the run folder and run it again instead")
    key = fit_key(asdict(spec), config, dataset.domains)
    donor = None if last.is_file() or finished else find_donor(folder, key, dataset.domains)
    if not finished:  # a re-scored run keeps the config.json of its fit
        atomic_write(folder / "config.json", json.dumps(dict(
        spec=asdict(spec), run_id=spec.run_id, method_config=config, seed=spec.seed, split_hash=dataset.split_hash,
        dataset_config=dataset.config, git_sha=git_sha(), packages=package_versions(), n_params=method.n_params,
        knob=method.knob_name, knob_grid=list(method.knob_grid), fit_key=key,
        fit_from=donor.name if donor else None), indent=2, default=str))
    done_keys = {(r["task"], r["source"], r["knob_value"]) for r in records} - set(stale)
    if donor is not None:  # same weights as a finished run: start from its checkpoint (copied, then renamed)
        last.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(donor / "checkpoints" / "last.ckpt", last.with_suffix(".tmp"))
        last.with_suffix(".tmp").replace(last)
    train_sec = _fit(spec, method, dataset, folder, ctx)
    if records:
        train_sec = records[0]["train_sec"]  # resumed: keep the time of the original fit
    elif donor is not None:
        train_sec = read_records(donor / "records.jsonl")[0]["train_sec"]
    method.eval()
    points = [p for p in evaluations(spec, method, dataset) if (p[0], p[1], p[3]) not in done_keys]
    task_bar = (ctx.progress.add_task(f"{spec.method} seed {spec.seed}: evaluate", total=len(points))
                if ctx.progress else None)
    sha, variant = git_sha(), setting(spec)
    inputs, references = {}, {}  # loaded once per (source, target) / target, shared by every knob value
    for task_name, source, target, knob in points:
        if (source, target) not in inputs:
            x_src, rows = dataset.images(source, "test")
            inputs[(source, target)] = (x_src, *dataset.counterparts(rows, target))
        if target not in references:
            references[target] = ctx.scorer.reference(dataset.images(target, "test")[0], dict(
                dataset=dataset.name, config=dataset.config, split=dataset.split_hash, part="test", domain=target))
        x_src, x_gt, gt_reason = inputs[(source, target)]
        ref = references[target]
        x_hat, sec = _translate(method, x_src, source, target, knob)
        scores = ctx.scorer.score(x_hat, x_src, x_gt, ref, gt_reason)
        rec = {k: None for k in RECORD_KEYS}
        rec.update({k: v for k, v in scores.items() if k != "unavailable"})
        rec.update(method=spec.method, setting=variant, dataset=spec.dataset, preset=spec.preset,
                   task=task_name, seed=spec.seed, source=source, target=target, knob=method.knob_name,
                   knob_value=knob, nfe=method.nfe(knob),
                   sec_per_image=sec, train_sec=train_sec, n_params=method.n_params,
                   peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                   unavailable=scores["unavailable"], run_id=spec.run_id, split_hash=dataset.split_hash,
                   git_sha=sha)
        rec["_sha"] = record_sha(rec)
        point = (task_name, source, knob)
        if point in stale:
            i = next(j for j, r in enumerate(records) if (r["task"], r["source"], r["knob_value"]) == point)
            records[i] = rec = merge_rescored(records[i], rec, stale[point], sha)
            if rec["rescored"]["max_abs_diff"] > 1e-6:
                warnings.warn(f"re-scoring {folder.name} {point}: translating again changed recorded metrics by up "
                              f"to {rec['rescored']['max_abs_diff']:.3g}; the recorded values are kept", stacklevel=1)
        else:
            records.append(rec)
        atomic_write(records_path, "".join(json.dumps(r, default=str) + "\n" for r in records))
        if task_bar is not None:
            ctx.progress.advance(task_bar)
    atomic_write(folder / "done", json.dumps({"n_records": len(records), "finished": time.time()}))
    return records
