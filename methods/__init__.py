"""Registry of translation methods: name -> `TranslationMethod` subclass (keys equal file names)."""
from __future__ import annotations

from .base import FitData, TranslationMethod
from .contourdiff import ContourDiff
from .cyclegan import CycleGAN
from .histmatch import HistMatch
from .identity import Identity
from .medshift import MedShift
from .sdedit import SDEdit

METHODS: dict[str, type[TranslationMethod]] = {
    "identity": Identity,
    "histmatch": HistMatch,
    "medshift": MedShift,
    "cyclegan": CycleGAN,
    "sdedit": SDEdit,
    "contourdiff": ContourDiff,
}


def get_method(name: str) -> type[TranslationMethod]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "FitData", "TranslationMethod", "get_method"]
