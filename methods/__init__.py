"""Registry of translation methods: name -> `TranslationMethod` subclass (keys equal file names, `-` for `_`), plus
the methods installed packages declare under the `xraybench.methods` entry-point group (`load_plugins`)."""
from __future__ import annotations

from .base import FitData, TranslationMethod
from .cdm import CDM
from .contourdiff import ContourDiff
from .cyclegan import CycleGAN
from .histmatch import HistMatch
from .identity import Identity
from .medshift import MedShift
from .medshift_fewstep import MedShiftFewStep
from .medshift_onestep import MedShiftOneStep
from .pix2pix import Pix2Pix
from .sdedit import SDEdit
from .unet_regression import UNetRegression

METHODS: dict[str, type[TranslationMethod]] = {
    "identity": Identity,
    "histmatch": HistMatch,
    "medshift": MedShift,
    "medshift-fewstep": MedShiftFewStep,  # distils a finished medshift fit (its teacher): run after it
    "medshift-onestep": MedShiftOneStep,  # regresses a finished medshift fit's translations (its teacher)
    "cyclegan": CycleGAN,
    "sdedit": SDEdit,
    "contourdiff": ContourDiff,
    # paired upper bounds (train on aligned pairs; tables list them in their own group)
    "unet-regression": UNetRegression,
    "pix2pix": Pix2Pix,
    "cdm": CDM,
}


#: The entry-point group through which another package adds methods: in its pyproject.toml,
#: `[project.entry-points."xraybench.methods"]` `mymethod = "mypackage.module:MyMethod"` (a `TranslationMethod`).
ENTRY_POINT_GROUP = "xraybench.methods"
#: {name: why it was left out} of the entry points that could not be added (each warned about once)
PLUGIN_PROBLEMS: dict[str, str] = {}
#: The methods of this repository (the CI regression's reference covers these, not installed plugins)
BUILTIN_METHODS = tuple(METHODS)
#: {name: entry-point value} of the plugins added
PLUGINS: dict[str, str] = {}


def load_plugins() -> list[str]:
    """Add the methods that installed packages declare under `ENTRY_POINT_GROUP` to `METHODS` (once each); returns
    their names. A name already taken, an entry point that does not import or is not a `TranslationMethod` is left
    out with a warning naming its package, so that one broken plugin does not stop the suite."""
    import warnings
    from importlib.metadata import entry_points

    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if PLUGINS.get(ep.name) == ep.value:
            continue
        where = f"{ep.name} = {ep.value}" + (f" (package {ep.dist.name})" if ep.dist is not None else "")
        if ep.name in METHODS or ep.name in PLUGIN_PROBLEMS:
            why = PLUGIN_PROBLEMS.get(ep.name) or f"the name of a method already registered ({METHODS[ep.name]})"
        else:
            try:
                cls = ep.load()
                why = None if isinstance(cls, type) and issubclass(cls, TranslationMethod) else \
                    f"{cls!r} is not a TranslationMethod subclass"
            except Exception as exc:  # noqa: BLE001  (any import error of someone else's package)
                why = f"it does not import ({type(exc).__name__}: {exc})"
        if why is None:
            METHODS[ep.name], PLUGINS[ep.name] = cls, ep.value
            added.append(ep.name)
        elif ep.name not in PLUGIN_PROBLEMS:
            PLUGIN_PROBLEMS[ep.name] = why
            warnings.warn(f"{ENTRY_POINT_GROUP} entry point {where} left out: {why}", stacklevel=2)
    return added


def get_method(name: str) -> type[TranslationMethod]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


load_plugins()

__all__ = ["BUILTIN_METHODS", "ENTRY_POINT_GROUP", "METHODS", "FitData", "TranslationMethod", "get_method",
           "load_plugins"]
