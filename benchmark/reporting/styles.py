"""How a method looks in figures: its declared `style` (colour, marker, label), read from its runs (`load.method_info`)
without torch."""
from __future__ import annotations

from benchmark.reporting.load import base_method, method_info

#: (colour, marker) of a method's variants, in order: none is MedShift's or CycleGAN's look, and no colour repeats
#: within the first 10 (with 5 colours the sixth variant took the first's colour, and in the variants figure, which
#: keeps the method's marker, its whole look).
VARIANT_STYLES = (("tab:orange", "s"), ("tab:brown", "D"), ("tab:pink", "P"), ("tab:olive", "X"),
                  ("tab:cyan", "v"), ("tab:purple", "*"), ("tab:gray", "h"), ("gold", "p"), ("black", "<"),
                  ("tab:green", ">"))


def method_style(method: str, n_variant: int = 0) -> dict:
    """A method's look (its declared `style`); a variant "medshift (guidance=3.0)" keeps its method's marker in its
    own colour."""
    info = method_info(method)
    base = {"marker": "o", "label": method, **(info.get("style") or {})}
    if info.get("group") == "external":  # translated outside the suite (`python -m benchmark score`)
        base["label"] += " (external)"
    if info and method == base_method(method):
        return base
    return dict(base, color=VARIANT_STYLES[n_variant % len(VARIANT_STYLES)][0], label=method)
