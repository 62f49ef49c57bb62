"""Real-domain anatomy that the simulator lacks (skull-sim v3): fine structure of one subject, drawn from its own seed.

X-DigiSkull's real images are radiographs of a physical skull phantom; its synthetic images come from a simulator's
coarse model. The real skull carries fine anatomy that no synthetic image shows and that cannot be inferred from
one: vascular markings, sutures, granulation pits, fat in the scalp. v3 adds that anatomy to the phantom of the
*real* domains only, as primitives in millimetres painted into the layer where it lies (each is intersected with
its host layer, `datasets.phantom.Primitive.host`), so it is projected through the scene's own geometry, is
physical (attenuation over a path length, never a texture on pixels) and shows consistently in every view of a
subject. The synthetic domains keep the coarse model with its sharp, uniform layers.

The statistics were fixed from the literature before any method was trained on v3; `docs/data.md#skull-sim-v3` lists
each structure with its source (values marked [recall] there are textbook ranges this project could not check):
diploic venous channels and lakes, trabecular texture of the diploe, middle meningeal grooves in the inner table,
serrated sutures, arachnoid granulation pits, the vault's regional thickness, and fat lobules in the scalp.

Not modelled: sub-millimetre trabecular voids of the diploe (Pelt et al., J Synchrotron Rad 2022 give a foam recipe):
they lie below the pixel of every preset but `paper`, and the projector's cost grows with the square of the number
of primitives a ray block meets.

`draw` selects an independent realisation of the detail for the same subject: two draws of one scene differ in the
detail alone, which gives the ceiling on fidelity (`datasets.ceiling`).
"""
from __future__ import annotations

import numpy as np

from .phantom import MATERIAL_ID, Primitive, SubjectParams, _z_at_least

#: Seed stream of the detail (independent of the coarse phantom's and of the noise's streams).
DETAIL_STREAM = 31337
#: Primitive-name prefix of every detail primitive (labels and masks ignore them).
PREFIX = "detail_"


def _unit(v) -> np.ndarray:
    v = np.asarray(v, float)
    return v / np.linalg.norm(v)


def _radius(u: np.ndarray, half_axes: np.ndarray) -> float:
    """Distance from the centre to an ellipsoid (centred at the origin) along the unit direction `u`."""
    return float(1.0 / np.sqrt(np.sum((u / half_axes) ** 2)))


def _segment(name: str, material: str, a: np.ndarray, b: np.ndarray, radius: float, normal: np.ndarray,
             host: Primitive, flat: float | None = None, overlap: float = 0.5) -> Primitive:
    """An elongated ellipsoid from `a` to `b`, `overlap` * `radius` longer at each end (so a chain has no gaps), of
    half-width `radius` and half-thickness along `normal` `flat` (default: `radius`)."""
    axis = b - a
    length = float(np.linalg.norm(axis))
    e1 = axis / length
    e2 = _unit(normal - (normal @ e1) * e1)
    e3 = np.cross(e1, e2)
    half = np.array([length / 2 + overlap * radius, radius if flat is None else flat, radius])
    return Primitive(f"{PREFIX}{name}", MATERIAL_ID[material], (a + b) / 2, half, np.stack([e1, e2, e3], 1), (), host)


class _Shell:
    """A layer of the vault between two origin-centred ellipsoids: points at a relative depth along a direction."""

    def __init__(self, outer: np.ndarray, inner: np.ndarray):
        self.outer, self.inner = outer, inner

    def point(self, u: np.ndarray, depth: float) -> np.ndarray:
        """depth 0 = on the outer surface, 1 = on the inner surface."""
        r_out, r_in = _radius(u, self.outer), _radius(u, self.inner)
        return u * (r_out + depth * (r_in - r_out))


def _walk(rng: np.random.Generator, shell: _Shell, start: np.ndarray, heading: np.ndarray, n: int,
          step: tuple[float, float], depth: float, turn_deg: float = 30.0) -> list[np.ndarray]:
    """Points of a random walk over the shell: `n` steps of a length drawn from `step`, turning up to `turn_deg`."""
    u, h = _unit(start), _unit(heading)
    points = [shell.point(u, depth)]
    for _ in range(n):
        h = _unit(h - (h @ u) * u)
        angle = np.deg2rad(rng.uniform(-turn_deg, turn_deg))
        h = _unit(np.cos(angle) * h + np.sin(angle) * np.cross(u, h))
        p = points[-1] + rng.uniform(*step) * h
        u = _unit(p)
        points.append(shell.point(u, depth))
    return points


def _vault_direction(rng: np.random.Generator, region: str) -> np.ndarray:
    """A random direction from the centre towards a region of the vault."""
    side = rng.choice([-1.0, 1.0])
    centre = {"frontal": (0.3 * side, 0.8, 0.5), "parietal": (0.6 * side, -0.1, 0.8),
              "occipital": (0.3 * side, -0.85, 0.35)}[region]
    return _unit(np.asarray(centre) + rng.normal(0.0, 0.15, 3))


def _suture(rng: np.random.Generator, name: str, ends: tuple, n: int, shell: _Shell, host: Primitive,
            p_open: float) -> list[Primitive]:
    """A serrated suture: `n` thin plates through the vault's thickness along the path between two directions."""
    width = rng.uniform(0.3, 0.8)
    amplitude = rng.uniform(1.0, 2.5)
    a, b = (_unit(e) for e in ends)
    points = []
    for k in range(n + 1):
        u = _unit((1 - k / n) * a + (k / n) * b)
        p = shell.point(u, 0.5)
        along = _unit(b - a)
        lateral = _unit(np.cross(u, along))
        points.append(p + (amplitude * (1 if k % 2 else -1) if 0 < k < n else 0.0) * lateral)
    prims = []
    for k in range(n):
        if rng.uniform() > p_open:  # an obliterated stretch
            continue
        p, q = points[k], points[k + 1]
        radial = _unit((p + q) / 2)
        prims.append(_segment(f"suture_{name}_{k}", "soft", p, q, 12.0, np.cross(radial, _unit(q - p)), host,
                              flat=width / 2, overlap=0.02))
    return prims


def add_detail(prims: list[Primitive], params: SubjectParams, seed: int, subject: int,
               draw: int = 0) -> list[Primitive]:
    """The real-domain phantom: `prims` (the coarse head of `build_head`) with the subject's fine anatomy painted into
    its layers. `draw` picks an independent realisation of the detail (0 is the dataset's)."""
    rng = np.random.default_rng([seed, subject, DETAIL_STREAM, draw])
    by_name = {p.name: p for p in prims}
    s = params.scale
    outer_t, diploe, inner_t, scalp = (by_name[n] for n in ("outer_table", "diploe", "inner_table", "scalp"))
    vault_clip = (_z_at_least(-35.0 * s[2]),)
    brain_axes = inner_t.half_axes - params.t_inner * s

    def host_of(p: Primitive) -> Primitive:  # the layer as a solid ellipsoid clipped like the vault
        return Primitive(f"{PREFIX}host", p.material, p.center, p.half_axes, p.rotation, vault_clip)

    diploe_shell = _Shell(diploe.half_axes, inner_t.half_axes)
    inner_shell = _Shell(inner_t.half_axes, brain_axes)
    vault_shell = _Shell(outer_t.half_axes, brain_axes)
    in_diploe, in_inner, in_vault = host_of(diploe), host_of(inner_t), host_of(outer_t)

    after_scalp: list[Primitive] = []
    after_diploe: list[Primitive] = []
    after_inner: list[Primitive] = []
    # diploic venous channels (stellate chains) and lakes
    for c in range(int(rng.integers(4, 9))):
        region = rng.choice(["frontal", "parietal", "parietal", "occipital"])
        u = _vault_direction(rng, region)
        heading = rng.normal(size=3)
        points = _walk(rng, diploe_shell, u, heading, int(rng.integers(3, 7)), (6.0, 12.0), 0.5)
        radius = rng.uniform(0.75, 1.5)
        normal = _unit(points[0])
        after_diploe += [_segment(f"vein_{c}_{k}", "soft", p, q, radius, normal, in_diploe)
                         for k, (p, q) in enumerate(zip(points[:-1], points[1:], strict=True))]
    for k in range(int(rng.integers(1, 5))):
        p = diploe_shell.point(_vault_direction(rng, "parietal"), 0.5)
        after_diploe.append(Primitive(f"{PREFIX}lake_{k}", MATERIAL_ID["soft"], p, np.full(3, rng.uniform(2.0, 4.0)),
                                      np.eye(3), (), in_diploe))
    # trabecular texture of the diploe: denser (sclerotic) and marrow-rich patches of its bone fraction
    for k in range(40):
        u = _unit(rng.normal(size=3) * [1.0, 1.0, 0.5] + [0.0, 0.0, 0.5])
        r = rng.uniform(3.0, 8.0)
        material = "bone" if rng.uniform() < 0.5 else "soft"
        after_diploe.append(Primitive(f"{PREFIX}trabecular_{k}", MATERIAL_ID[material], diploe_shell.point(u, 0.5),
                                      np.array([r, r, r]), np.eye(3), (), in_diploe))
    # middle meningeal grooves in the inner table: anterior and posterior branch from each pterion
    for side in (-1.0, 1.0):
        pterion = _unit([side * 0.9, 0.3, -0.05] + rng.normal(0.0, 0.05, 3))
        for branch, heading in (("ant", [0.0, -0.2, 1.0]), ("post", [0.0, -1.0, 0.6])):
            points = _walk(rng, inner_shell, pterion, heading, 6, (10.0, 14.0), 0.85, turn_deg=20.0)
            for k, (p, q) in enumerate(zip(points[:-1], points[1:], strict=True)):
                after_inner.append(_segment(f"groove_{side:+.0f}{branch}_{k}", "soft", p, q, 1.0 - 0.08 * k,
                                            _unit(p), in_inner))
    # sutures through the whole vault (painted over the tables and the diploe)
    bregma, lambda_ = _unit([0.0, 0.3, 1.0]), _unit([0.0, -0.65, 0.75])
    p_open = rng.uniform(0.8, 1.0)
    after_inner += _suture(rng, "sagittal", (bregma, lambda_), 12, vault_shell, in_vault, p_open)
    for side in (-1.0, 1.0):
        after_inner += _suture(rng, f"coronal{side:+.0f}", (bregma, [side * 0.9, 0.35, 0.0]), 8, vault_shell,
                               in_vault, p_open)
        after_inner += _suture(rng, f"lambdoid{side:+.0f}", (lambda_, [side * 0.7, -0.65, -0.15]), 8, vault_shell,
                               in_vault, p_open)
    # arachnoid granulation pits on the inner surface near the midline
    for k in range(int(rng.poisson(3.0))):
        u = _unit([rng.uniform(-0.25, 0.25), rng.uniform(-0.3, 0.4), 1.0])
        p = inner_shell.point(u, 1.0)
        r = rng.uniform(2.0, 5.0)
        after_inner.append(Primitive(f"{PREFIX}pit_{k}", MATERIAL_ID["soft"], p, np.full(3, r), np.eye(3), (),
                                     in_inner))
    # subcutaneous fat lobules of the scalp
    in_scalp = Primitive(f"{PREFIX}host", scalp.material, scalp.center, scalp.half_axes, scalp.rotation, vault_clip)
    for k in range(30):
        u = _unit(rng.normal(size=3) * [1.0, 1.0, 0.6] + [0.0, 0.0, 0.45])
        thickness = rng.uniform(1.0, 2.0)
        depth_mm = rng.uniform(2.0, 4.0)
        r_out = _radius(u, scalp.half_axes)
        p = u * (r_out - depth_mm)
        half = rng.uniform(2.0, 4.0)
        tangent = _unit(np.cross(u, rng.normal(size=3)))
        after_scalp.append(_segment(f"fat_{k}", "fat", p - half * tangent / 2, p + half * tangent / 2, half, u,
                                    in_scalp, flat=thickness / 2))
    # regional thickness of the vault: endocranial lenses that thicken it (bone into the brain's side) or thin it
    # (brain's side into the tables and the diploe), relative change N(0, 0.2) of the local total thickness
    after_brain: list[Primitive] = []
    total = params.t_outer + params.t_diploe + params.t_inner
    in_brain = host_of(by_name["brain"])
    for k in range(12):
        u = _unit(rng.normal(size=3) * [1.0, 1.0, 0.5] + [0.0, 0.0, 0.5])
        change = float(np.clip(rng.normal(0.0, 0.2), -0.4, 0.4)) * total
        radius = rng.uniform(20.0, 40.0)
        p = inner_shell.point(u, 1.0)
        tangent = _unit(np.cross(u, rng.normal(size=3)))
        material, host = ("bone", in_brain) if change > 0 else ("brain", in_diploe)
        after_brain.append(_segment(f"thickness_{k}", material, p - 0.01 * tangent, p + 0.01 * tangent, radius, u,
                                    host, flat=abs(change), overlap=1.0))
    out: list[Primitive] = []
    for p in prims:
        out.append(p)
        out += {"scalp": after_scalp, "diploe": after_diploe, "inner_table": after_inner,
                "brain": after_brain}.get(p.name, [])
    return out
