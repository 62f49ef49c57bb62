"""Analytic 3-D head phantom in millimetres, built from clipped ellipsoids with painter semantics.

Coordinates: x = patient left, y = anterior, z = superior, origin near the centre of the cranium.
Every primitive is an ellipsoid intersected with up to a few half-spaces, hence convex, so a ray
meets it in one interval. Overlaps resolve with *painter* semantics (a later primitive owns the
points it covers), which makes every per-material path length non-negative by construction (see
`datasets.projector`). Sizes and materials follow ../shared/reference/simulation.md §2.2-§2.4;
per-subject variation scales the head by ±5 %, vault layers by ±25 % and sinuses by ±20 %.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Material names; index = material id used in path-length maps. 0 (air) is never painted.
MATERIALS: tuple[str, ...] = ("air", "soft", "brain", "fat", "water", "bone", "diploe", "enamel")
MATERIAL_ID = {name: i for i, name in enumerate(MATERIALS)}
BONE_MATERIALS = ("bone", "diploe", "enamel")


@dataclass(frozen=True)
class Primitive:
    """A clipped ellipsoid.

    Attributes:
        name: Anatomical name (for masks and debugging).
        material: Index into `MATERIALS`.
        center: (3,) mm.
        half_axes: (3,) mm, along the local axes.
        rotation: (3, 3) world-from-local rotation matrix.
        clips: Half-spaces (normal (3,), offset) keeping points with normal . x <= offset (world, mm).
        host: Optional primitive that this one is intersected with (still convex): fine structure that must lie
            inside a layer of the anatomy, a vein inside the diploe (`datasets.detail`).
    """

    name: str
    material: int
    center: np.ndarray
    half_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    clips: tuple[tuple[np.ndarray, float], ...] = ()
    host: "Primitive | None" = None

    def contains(self, points: np.ndarray) -> np.ndarray:
        """Boolean (N,) for world points (N, 3): inside the ellipsoid, every clip half-space and the host."""
        local = (points - self.center) @ self.rotation / self.half_axes
        inside = np.sum(local**2, axis=1) <= 1.0
        for normal, offset in self.clips:
            inside &= points @ normal <= offset
        if self.host is not None:
            inside &= self.host.contains(points)
        return inside


def rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def rot_x(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])


def _z_at_least(z: float) -> tuple[np.ndarray, float]:
    return (np.array([0.0, 0.0, -1.0]), -z)


def _z_at_most(z: float) -> tuple[np.ndarray, float]:
    return (np.array([0.0, 0.0, 1.0]), z)


@dataclass(frozen=True)
class SubjectParams:
    """Per-subject anatomical variation (all multiplicative factors around 1)."""

    scale: np.ndarray  # (3,) overall head scale per axis
    t_outer: float  # outer table thickness, mm
    t_diploe: float
    t_inner: float
    scalp: float
    sinus: float  # sinus size factor
    ventricle: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "SubjectParams":
        return cls(
            scale=rng.uniform(0.95, 1.05, size=3) * rng.uniform(0.97, 1.03),
            t_outer=1.8 * rng.uniform(0.75, 1.25),
            t_diploe=3.0 * rng.uniform(0.75, 1.25),
            t_inner=1.3 * rng.uniform(0.75, 1.25),
            scalp=6.0 * rng.uniform(0.85, 1.15),
            sinus=rng.uniform(0.8, 1.2),
            ventricle=rng.uniform(0.8, 1.25),
        )

    @classmethod
    def mean(cls) -> "SubjectParams":
        return cls(np.ones(3), 1.8, 3.0, 1.3, 6.0, 1.0, 1.0)


def _ell(name, material, center, half_axes, rotation=None, clips=(), scale=None) -> Primitive:
    c = np.asarray(center, float)
    a = np.asarray(half_axes, float)
    if scale is not None:
        c, a = c * scale, a * scale
    return Primitive(name, MATERIAL_ID[material], c, a, np.eye(3) if rotation is None else rotation, tuple(clips))


def build_head(params: SubjectParams, rng: np.random.Generator | None = None) -> list[Primitive]:
    """The head as an ordered list of primitives (later ones are painted over earlier ones).

    Args:
        params: Subject variation.
        rng: Optional generator for small per-structure jitter (teeth, vertebrae); None = none.

    Returns:
        Primitives in painting order.
    """
    s = params.scale
    jit = (lambda k: rng.uniform(-k, k)) if rng is not None else (lambda k: 0.0)
    prims: list[Primitive] = []
    add = prims.append
    # 1. soft-tissue envelope: cranium, face, neck
    skin = np.array([78.0, 100.0, 82.0])
    add(_ell("scalp", "soft", (0, 0, 0), skin, scale=s))
    add(_ell("face", "soft", (0, 45, -70), (62, 52, 60), scale=s))
    add(_ell("neck", "soft", (0, -8, -135), (50, 55, 75), scale=s))
    # 2. calvarium: nested shells, clipped above the skull base (outer table, diploe, inner table, brain)
    outer = skin - params.scalp
    vault_clip = [_z_at_least(-35.0 * s[2])]
    add(_ell("outer_table", "bone", (0, 0, 0), outer, clips=vault_clip, scale=s))
    a = outer - params.t_outer
    add(_ell("diploe", "diploe", (0, 0, 0), a, clips=vault_clip, scale=s))
    a = a - params.t_diploe
    add(_ell("inner_table", "bone", (0, 0, 0), a, clips=vault_clip, scale=s))
    a = a - params.t_inner
    add(_ell("brain", "brain", (0, 0, 0), a, clips=[_z_at_least(-30.0 * s[2])], scale=s))
    # 3. skull base, petrous ridges, mastoids, posterior fossa
    # anterior fossa sits higher than the posterior one: tilt the base plate about x
    add(_ell("skull_base", "bone", (0, -5, -33), (outer[0] - 6, outer[1] - 10, 2.5), rot_x(12), scale=s))
    add(_ell("posterior_fossa", "brain", (0, -40, -30), (45, 35, 12), scale=s))
    for side in (-1, 1):
        add(_ell(f"petrous_{side}", "bone", (side * 30, -12, -30), (32, 8, 9), rot_z(-side * 40), scale=s))
        add(_ell(f"mastoid_{side}", "diploe", (side * 52, -30, -40), (9, 12, 12), scale=s))
    add(_ell("sella", "bone", (0, 10, -24), (8, 7, 4), scale=s))
    # 4. ventricles (CSF)
    v = params.ventricle
    for side in (-1, 1):
        add(_ell(f"ventricle_{side}", "water", (side * 12, 5, 12), (6 * v, 28, 9 * v), rot_z(side * 8), scale=s))
    # 5. face: orbits, globes, sinuses, nasal cavity, palate, zygomatic arches
    for side in (-1, 1):
        add(_ell(f"orbit_rim_{side}", "bone", (side * 32, 72, -8), (20, 22, 19), rot_z(-side * 15), scale=s))
        add(_ell(f"orbit_{side}", "fat", (side * 32, 78, -8), (17, 25, 16), rot_z(-side * 15), scale=s))
        add(_ell(f"globe_{side}", "water", (side * 32, 86, -8), (12, 12, 12), scale=s))
    f = params.sinus
    add(_ell("frontal_sinus", "air", (0, outer[1] - 9, 22), (14 * f, 4.5, 10 * f), scale=s))
    add(_ell("sphenoid_sinus", "air", (0, 25, -28), (14 * f, 12 * f, 10 * f), scale=s))
    for side in (-1, 1):
        add(_ell(f"maxillary_wall_{side}", "bone", (side * 28, 55, -48), (18 * f, 20 * f, 18 * f), scale=s))
        add(_ell(f"maxillary_sinus_{side}", "air", (side * 28, 55, -48), (16 * f, 18 * f, 16 * f), scale=s))
    add(_ell("nasal_cavity", "air", (0, 70, -38), (7, 25, 24), scale=s))
    add(_ell("nasal_septum", "bone", (0, 72, -38), (1.2, 22, 20), scale=s))
    add(_ell("hard_palate", "bone", (0, 50, -63), (26, 34, 3), scale=s))
    for side in (-1, 1):
        add(_ell(f"zygoma_{side}", "bone", (side * 62, 35, -35), (5, 30, 6), rot_z(side * 6), scale=s))
    # 6. mandible: elliptic-cylinder shell (bone) with a soft core, plus rami
    jaw_clip = [_z_at_least(-108 * s[2]), _z_at_most(-72 * s[2]), (np.array([0.0, -1.0, 0.0]), -5.0 * s[1])]
    add(_ell("mandible", "bone", (0, 0, -90), (50, 68, 400), clips=jaw_clip, scale=s))
    add(_ell("mandible_core", "soft", (0, 0, -90), (42, 60, 400), clips=jaw_clip, scale=s))
    for side in (-1, 1):
        add(_ell(f"ramus_{side}", "bone", (side * 46, 8, -75), (5, 14, 34), scale=s))
    # 7. teeth: two arches of 16 small enamel ellipsoids along the dental arch
    for z, ry in ((-68.0, 1.0), (-80.0, 0.97)):
        for k in range(16):
            theta = np.deg2rad(12 + k * (156 / 15))
            cx, cy = 36 * np.cos(theta), 12 + 50 * ry * np.sin(theta)
            centre = (cx + jit(0.5), cy + jit(0.5), z + jit(0.8))
            add(_ell(f"tooth_{z:.0f}_{k}", "enamel", centre, (3.5, 4, 6), scale=s))
    # 8. upper cervical spine (C1-C3) with the dens
    for i, z in enumerate((-100.0, -118.0, -136.0)):
        add(_ell(f"C{i + 1}", "bone", (jit(1.0), -18 + jit(1.0), z), (14, 12, 7), scale=s))
    add(_ell("dens", "bone", (0, -14, -90), (5, 5, 8), scale=s))
    return prims
