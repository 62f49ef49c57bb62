"""What a run is: its spec, the resolved method config (three layers), and the identity of its fit.

Config layers: the method's typed constructor defaults <- `configs/<method>.yaml` deltas (`<dataset>`, then
`<dataset>/<preset>`) <- `--set key=value` (parsed as YAML, checked against the constructor's types before
any work). `fit_key` names what determines the trained weights, so that runs differing only in what they
evaluate share one fit.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

from benchmark.errors import RunError
from benchmark.protocol.records import verify_done

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DATA_ARGS = ("domains", "sources", "target", "image_size")


@dataclass(frozen=True)
class RunSpec:
    """One fit of one method (frozen; its hash names the run folder).

    `curve` (also evaluate the dense knob sweep) and `knobs` (also evaluate these knob values) do not change any
    number, so they are not part of the run's identity: `--curve` or `--knobs` on a finished run adds the missing
    points to the same folder. The data enter it through
    `datasets.dataset_identity` (skull-sim's generator version, wherever its data root is; a folder dataset's
    config content and data root); the files' fingerprint is recorded in config.json and checked on reuse.

    The tasks stay in the run id: the checkpoint is selected on the learning curves of the tasks requested, so a
    MedShift fit for `sim2real` and one for `sim2real dose` can hold other selected weights. What is the same in
    both, the trained model, is shared through `fit_key`; for a reader, `collect` takes a live run's records in
    place of an archived run's records of the same points (`benchmark.reporting.load.load_records`).
    """

    method: str
    dataset: str = "skull-sim"
    preset: str = "tiny"
    tasks: tuple[str, ...] = ("sim2real",)
    seed: int = 0
    data_seed: int = 0
    max_steps: int | None = None
    budget: float | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    curve: bool = False
    knobs: tuple[float, ...] = ()
    accelerator: str = "cpu"
    precision: str = "32-true"
    dataset_config: str | None = None
    data_root: str | None = None
    devices: int = 1
    strategy: str = "auto"
    speedups: tuple[str, ...] = ()
    accumulate: int = 1
    num_nodes: int = 1
    misregister: float = 0.0

    @property
    def data_identity(self) -> dict:
        from datasets import dataset_identity

        return dataset_identity(self.dataset, config=self.dataset_config, data_root=self.data_root)

    @property
    def run_id(self) -> str:
        d = identity_fields(asdict(self))
        for k in ("data_root", "curve", "knobs"):
            d.pop(k, None)
        d["dataset"] = config_scope(d["dataset"])  # skull-sim-v2 is skull-sim's version 2: the version says it
        d["data"] = self.data_identity
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]

    @property
    def world(self) -> int:
        """Processes (devices) the fit trains on: devices per node x nodes."""
        return self.devices * self.num_nodes

    @property
    def launched_outside(self) -> bool:
        """The fit's processes are started by a launcher (srun, torchrun), one per device on every node, each running
        this whole command (`--strategy ddp`); otherwise Lightning forks them at `trainer.fit` (`ddp_fork`)."""
        return self.strategy == "ddp"

    def folder(self, results_dir: Path) -> Path:
        run = f"seed{self.seed}-{self.run_id}"
        return Path(results_dir) / "runs" / self.method / f"{self.dataset}-{self.preset}" / run


#: The spec fields of the first run ids: always hashed, so that runs made before any later field keep their ids. Every
#: other field (one added since, or one added in future) enters a run id and fit key only when it is not at its
#: default (`identity_fields`): adding an option never renames a run.
HASHED_FIELDS = ("method", "dataset", "preset", "tasks", "seed", "data_seed", "max_steps", "budget", "overrides",
                 "curve", "accelerator", "precision", "dataset_config", "data_root")
#: Opt-in speed-ups (`benchmark.run.stages.speedups`): channels-last memory format, torch.compile of the networks, TF32
#: matmuls and convolutions on NVIDIA GPUs.
SPEEDUPS = ("channels_last", "compile", "tf32")
#: Strategies for a fit over several devices (Lightning's): `ddp_fork`, one machine, processes forked at
#: `trainer.fit` so that nothing but the fit runs in them; `ddp`, one process per device on one or several nodes,
#: started by srun or torchrun, each running the whole command (`benchmark.run.stages.follow`: the ranks after the first
#: only train). In both only the first rank scores and writes.
MULTI_DEVICE_STRATEGIES = ("ddp_fork", "ddp")


def identity_fields(spec: dict) -> dict:
    """`asdict(RunSpec)` without the fields outside `HASHED_FIELDS` that are at their defaults (or absent: a spec
    stored before the field existed)."""
    defaults = {f.name: f.default for f in fields(RunSpec)}

    def at_default(k, v) -> bool:  # a JSON round trip turns tuples into lists
        return k not in HASHED_FIELDS and k in defaults and (tuple(v) if isinstance(v, list) else v) == defaults[k]

    return {k: v for k, v in spec.items() if not at_default(k, v)}


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


def setting_types(cls) -> dict:
    """{setting: the type its constructor annotation names without None} (a setting whose default is None still has
    a type: `n_blocks: int | None = None` takes an int)."""
    import types
    import typing

    try:
        hints = typing.get_type_hints(cls.__init__)
    except (NameError, TypeError):  # an annotation that does not evaluate: types from the defaults only
        return {}
    out = {}
    for key, hint in hints.items():
        args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        kinds = [typing.get_origin(a) or a for a in args if a is not type(None)]
        if len(kinds) == 1 and isinstance(kinds[0], type):
            out[key] = kinds[0]
    return out


def _typed(method: str, key: str, value, default, want: type | None = None):
    """`value` converted to the type of the constructor default (or, for a default of None, of its annotation `want`),
    or a RunError naming the key and the fix. None (YAML `null`) only where the default is None."""
    example = json.dumps(list(default) if isinstance(default, tuple) else default)
    if value is None:
        if default is None:
            return value
        raise RunError(f"--set {key}=null: {method}'s {key} has no 'none' value; give a value (default {example})")
    want = type(default) if default is not None else want
    if want is None:
        return value
    if want is bool:
        ok = isinstance(value, bool)
    elif want is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif want in (tuple, list):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, type(default[0])) and not isinstance(v, bool)
                                                      for v in value) if default \
            else isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, want)
    if not ok:
        raise RunError(f"--set {key}={value!r}: {method}'s {key} takes a{'n' if want.__name__[0] in 'aeiou' else ''} "
                       f"{'finite ' if isinstance(value, float) and not math.isfinite(value) else ''}{want.__name__} "
                       f"(default {example})")
    return value


#: Datasets that are another's under another generator version (same sizes): they use its configs and FLOP budgets,
#: and their run ids hash its name with their own data identity (the version), so a `skull-sim-v2` run has the id
#: that a `skull-sim` run had before v3 (the archive's).
CONFIG_OF = {"skull-sim-v2": "skull-sim"}


def config_scope(dataset: str) -> str:
    """The dataset name under which `configs/*.yaml` and `budgets.yaml` list `dataset`'s settings (and run ids)."""
    return CONFIG_OF.get(dataset, dataset)


def resolve_config(spec: RunSpec) -> dict:
    """Constructor defaults <- configs/<method>.yaml deltas (<dataset>, then <dataset>/<preset>) <- --set."""
    from methods import get_method

    cls = get_method(spec.method)
    cfg = method_defaults(cls)
    deltas_path = CONFIG_DIR / f"{spec.method}.yaml"
    if deltas_path.is_file():
        deltas = yaml.safe_load(deltas_path.read_text()) or {}
        name = config_scope(spec.dataset)
        for scope in (name, f"{name}/{spec.preset}"):
            cfg.update(deltas.get(scope) or {})
    defaults = method_defaults(cls)
    if spec.max_steps is not None and spec.max_steps < 1:
        raise RunError(f"--max-steps {spec.max_steps}: a training budget is at least 1 step")
    if spec.budget is not None and not (spec.budget > 0 and math.isfinite(spec.budget)):
        raise RunError(f"--budget {spec.budget}: a FLOP budget is a positive, finite number (e.g. 2.1e13)")
    unknown = [x for x in spec.speedups if x not in SPEEDUPS]
    if unknown:
        raise RunError(f"--speedup {unknown[0]}: unknown; valid: {', '.join(SPEEDUPS)}")
    if spec.devices < 1:
        raise RunError(f"--devices {spec.devices}: at least 1")
    if spec.accumulate < 1:
        raise RunError(f"--accumulate {spec.accumulate}: at least 1 (1: no gradient accumulation)")
    if spec.num_nodes < 1:
        raise RunError(f"--num-nodes {spec.num_nodes}: at least 1")
    if spec.world > 1 and spec.strategy not in MULTI_DEVICE_STRATEGIES:
        raise RunError(f"--devices {spec.devices} --strategy {spec.strategy}: a fit over several devices runs with "
                       f"--strategy {' or '.join(MULTI_DEVICE_STRATEGIES)}")
    if spec.num_nodes > 1 and spec.strategy != "ddp":
        raise RunError(f"--num-nodes {spec.num_nodes} --strategy {spec.strategy}: a fit over several nodes runs with "
                       "--strategy ddp, one process per device started by srun or torchrun on every node")
    types = setting_types(cls)
    for key, value in spec.overrides:
        if key not in cfg:
            raise RunError(f"--set {key}: {spec.method} has no such setting; valid keys: {', '.join(sorted(cfg))}")
        cfg[key] = _typed(spec.method, key, value, defaults[key], types.get(key))
    if spec.max_steps is not None and "max_steps" in cfg:
        cfg["max_steps"] = spec.max_steps
    if "max_steps" in cfg and cfg["max_steps"] < 1:
        raise RunError(f"max_steps={cfg['max_steps']}: {spec.method} needs at least 1 training step")
    for key, rule in getattr(cls, "allowed", {}).items():
        if key in cfg:
            check_allowed(spec.method, key, cfg[key], rule, defaults[key])
    check_split(spec, cls, cfg)
    return cfg


def check_split(spec: RunSpec, cls, cfg: dict) -> None:
    """A fit over several devices and/or with gradient accumulation splits the method's batch evenly over the
    devices, then over the micro-batches (the same global batch, iterations and FLOPs as one device without
    accumulation). A batch that does not split, or accumulation for a method that optimises manually (Lightning
    accumulates only automatic optimisation), is refused with the config, before any work."""
    if "max_steps" not in cfg or "batch_size" not in cfg:
        if spec.launched_outside and spec.world > 1:
            raise RunError(f"--strategy ddp: {spec.method} trains nothing to share over {spec.world} processes; run it "
                           "in one process")
        return  # one pass over the data (histmatch) or nothing trained: nothing to split
    if spec.accumulate > 1 and cls.manual_optimization:
        raise RunError(f"--accumulate {spec.accumulate}: {spec.method} steps its optimisers itself (manual "
                       "optimisation), which Lightning does not accumulate; train it with --accumulate 1")
    parts = spec.world * spec.accumulate
    if parts > 1 and cfg["batch_size"] % parts:
        how = " x ".join(f"{n} {what}" for n, what in ((spec.world, "devices"), (spec.accumulate, "micro-batches"))
                         if n > 1)
        raise RunError(f"--devices {spec.devices} --num-nodes {spec.num_nodes} --accumulate {spec.accumulate}: "
                       f"{spec.method} trains at a batch of {cfg['batch_size']}, which does not split over {how}; use "
                       "divisors of it, or --set batch_size=N")


def check_allowed(method: str, key: str, value, rule, default) -> None:
    """`value` within the declared `rule` (an interval "[lo, hi)" or a tuple of choices), else a RunError."""
    if value is None:
        return
    shown = json.dumps(list(default) if isinstance(default, tuple) else default)
    if isinstance(rule, tuple):
        if value not in rule:
            raise RunError(f"--set {key}={value!r}: {method}'s {key} is one of {', '.join(map(str, rule))} "
                           f"(default {shown})")
        return
    lo_s, hi_s = (part.strip() for part in rule[1:-1].split(","))
    lo, hi = float(lo_s), float(hi_s)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    inside = bool(values) and all((v >= lo if rule[0] == "[" else v > lo) and (v <= hi if rule[-1] == "]" else v < hi)
                                  for v in values)
    if not inside:
        what = "every element of " if isinstance(value, (list, tuple)) else ""
        raise RunError(f"--set {key}={value!r}: {what}{method}'s {key} must lie in {rule} (default {shown})")


def budget_setting(budget: float | None) -> str:
    """How a setting names a fit at `budget` FLOPs, e.g. "budget=3e+15"; "" for the preset's budget (None)."""
    return "" if budget is None else f"budget={budget:g}"


def setting(spec: RunSpec) -> str:
    """The run's departures from the method's configs and the default data (`--set`, `--max-steps`, `--budget`,
    `--misregister`), e.g. "guidance=3.0"; its records' rows are labelled "method (setting)"."""
    items = [f"{k}={json.dumps(v)}" for k, v in spec.overrides]
    items += [f"max_steps={spec.max_steps}"] if spec.max_steps is not None else []
    items += [f"misregister={spec.misregister:g}mm"] if spec.misregister else []
    return ",".join(items + [b for b in [budget_setting(spec.budget)] if b])


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
    outside = ("data_root", "curve", "knobs", "overrides", "tasks")
    d = {k: v for k, v in identity_fields(spec).items() if k not in outside}
    d["training_domains"] = list(cls.training_domains(tuple(domains), task.sources, task.target, method_config))
    d["config"] = {k: v for k, v in method_config.items() if k not in sampling}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def find_donor(folder: Path, key: str, domains: tuple[str, ...], fingerprint: str | None = None,
               content: str | None = None) -> Path | None:
    """A finished, verified sibling run (same method, dataset, seed) with the same `fit_key`, the same data
    fingerprint (`XrayDataset.fingerprint`) and final weights.

    A setting missing from an older run's config.json did not exist when it ran: it takes today's constructor
    default, which by this suite's convention reproduces the behaviour from before the setting was added.
    """
    from methods import get_method

    for other in sorted(folder.parent.glob(folder.name.split("-")[0] + "-*")):
        if other == folder or verify_done(other) or not (other / "checkpoints" / "final.ckpt").is_file():
            continue
        try:
            cfg = json.loads((other / "config.json").read_text())
            if cfg.get("data_fingerprint") != fingerprint or cfg.get("data_content", content) != content:
                continue  # other files, or files edited in place (a run from before contents were hashed: names only)
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
        d["speedups"] = tuple(d.get("speedups", ()))
        spec = RunSpec(**d)
        if spec.folder(results_dir) != cfg_path.parent:
            raise RunError(f"{cfg_path}: its spec hashes to {spec.run_id}, not to its folder; was it edited?")
        if not methods or spec.method in methods:
            specs.append(spec)
    return specs


def check_knobs(name: str, cls, knobs) -> None:
    """`--knobs` values a method can be scored at: it has a knob, and each value lies within its `knob_bounds`."""
    if not knobs:
        return
    if cls.knob_name is None:
        raise RunError(f"--knobs: {name} has no knob to set (it is scored at one point); drop --knobs for it")
    lo, hi = cls.knob_bounds if cls.knob_bounds is not None else (-float("inf"), float("inf"))
    for value in knobs:
        if not lo <= float(value) <= hi:
            raise RunError(f"--knobs {value:g}: {name}'s {cls.knob_name} must lie in [{lo:g}, {hi:g}]")


def plan(methods: list[str], seeds: list[int], tasks: list[str], domains: tuple[str, ...], **common) -> list[RunSpec]:
    """Run specs: one per (method, seed, group of tasks that share training domains)."""
    from datasets import get_task
    from methods import METHODS, get_method

    names = list(METHODS) if methods == ["all"] else methods
    overrides = common.pop("overrides", ())
    has = {name: set(method_defaults(get_method(name))) for name in names}
    for key, _ in overrides:
        if not any(key in keys for keys in has.values()):
            valid = sorted(set().union(*has.values()))
            raise RunError(f"--set {key}: no selected method ({', '.join(names)}) has such a setting; valid keys: "
                           f"{', '.join(valid)}")
    specs = []
    for name in names:
        cls = get_method(name)
        check_knobs(name, cls, common.get("knobs", ()))
        # a --set key applies to the selected methods that have the setting (`--method all --set lr=...`)
        mine = tuple((k, v) for k, v in overrides if k in has[name])
        config = resolve_config(RunSpec(method=name, overrides=mine, **common))
        groups: dict[tuple, list[str]] = {}
        for t in dict.fromkeys(tasks):  # a task named twice is one task (one run folder, not two)
            task = get_task(t, domains)
            if not task.sources or task.target in task.sources:
                raise RunError(f"task {t!r} translates {'+'.join(task.sources) or 'nothing'} to {task.target}: a "
                               "task needs at least one source domain other than its target")
            groups.setdefault(cls.training_domains(domains, task.sources, task.target, config), []).append(t)
        for seed in seeds:
            specs += [RunSpec(method=name, seed=seed, tasks=tuple(g), overrides=mine, **common)
                      for g in groups.values()]
    return specs
