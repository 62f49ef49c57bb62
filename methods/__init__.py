"""Registry of translation methods: name -> `TranslationMethod` subclass (keys equal file names, `-` for `_`)."""
from __future__ import annotations

from .base import FitData, TranslationMethod
from .cdm import CDM
from .contourdiff import ContourDiff
from .cyclegan import CycleGAN
from .histmatch import HistMatch
from .identity import Identity
from .medshift import MedShift
from .pix2pix import Pix2Pix
from .sdedit import SDEdit
from .unet_regression import UNetRegression

METHODS: dict[str, type[TranslationMethod]] = {
    "identity": Identity,
    "histmatch": HistMatch,
    "medshift": MedShift,
    "cyclegan": CycleGAN,
    "sdedit": SDEdit,
    "contourdiff": ContourDiff,
    # paired upper bounds (train on aligned pairs; tables list them in their own group)
    "unet-regression": UNetRegression,
    "pix2pix": Pix2Pix,
    "cdm": CDM,
}


def get_method(name: str) -> type[TranslationMethod]:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


__all__ = ["METHODS", "FitData", "TranslationMethod", "get_method"]
