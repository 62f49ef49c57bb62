"""What `run` and `sweep` can refuse before importing torch and Lightning (which take seconds to load): names, numbers
and the form of `--set`. Every check here is repeated where the value is used
(`benchmark.protocol.config.resolve_config`); this module only makes a bad argument answer at once, in one line.
"""
from __future__ import annotations

import ast
import math
from pathlib import Path

from benchmark.errors import RunError

METHODS_INIT = Path(__file__).resolve().parents[2] / "methods" / "__init__.py"
#: The largest seed numpy and torch take (seeds are unsigned 32-bit integers).
MAX_SEED = 2**32 - 1


def method_names() -> list[str]:
    """The keys of `methods.METHODS`, read from its source (importing it would load torch), and the names installed
    packages declare under the `xraybench.methods` entry-point group (`methods.load_plugins` checks them on import)."""
    from importlib.metadata import entry_points

    plugins = [ep.name for ep in entry_points(group="xraybench.methods")]
    tree = ast.parse(METHODS_INIT.read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                       else None)
        if isinstance(target, ast.Name) and target.id == "METHODS" and isinstance(node.value, ast.Dict):
            names = [k.value for k in node.value.keys if isinstance(k, ast.Constant)]
            return names + [p for p in plugins if p not in names]
    raise RuntimeError(f"{METHODS_INIT}: no METHODS dict literal")  # a refactoring broke this module: see its test


def check_fit_args(args) -> None:
    """The arguments `run` and `sweep` share (`benchmark.cli.main._add_fit_args`), checked without torch."""
    names = method_names()
    for m in args.method:
        if m != "all" and m not in names:
            raise RunError(f"unknown method {m!r}; available: {', '.join(names)}, all")
    for seed in args.seeds:
        if not 0 <= seed <= MAX_SEED:
            raise RunError(f"--seeds {seed}: a seed is a whole number from 0 to {MAX_SEED}")
    if not 0 <= args.data_seed <= MAX_SEED:
        raise RunError(f"--data-seed {args.data_seed}: a seed is a whole number from 0 to {MAX_SEED}")
    if args.max_steps is not None and args.max_steps < 1:
        raise RunError(f"--max-steps {args.max_steps}: a training budget is at least 1 step")
    if args.budget is not None and not (args.budget > 0 and math.isfinite(args.budget)):
        raise RunError(f"--budget {args.budget}: a FLOP budget is a positive, finite number (e.g. 2.1e13)")
    if args.budgets and (args.budget is not None or args.max_steps is not None):
        raise RunError("--budgets gives each fit its budget: drop --budget / --max-steps")
    for flag in ("devices", "num_nodes", "accumulate"):
        if getattr(args, flag) < 1:
            raise RunError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: at least 1")
    for item in args.set:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise RunError(f"--set {item!r}: expected key=value")
