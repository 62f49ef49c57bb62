"""Exact cone-beam line integrals through a painter-ordered list of convex primitives.

For every detector ray the chord through each primitive is one interval (the primitives are
convex). Sorting all interval end points splits the ray into segments; each segment belongs to
the last-painted primitive that contains its midpoint, and its length is added to that
primitive's material. Path lengths are therefore exact (up to float rounding) and never
negative, and they sum to the length of the ray inside the union of the primitives.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .phantom import MATERIALS, Primitive, rot_x, rot_z


@dataclass(frozen=True)
class View:
    """A C-arm pose. Base pose is PA (source posterior, detector anterior, image up = superior).

    Attributes:
        name: View name.
        primary_deg: Rotation about the patient's z axis (LAO positive).
        secondary_deg: Cranial (+) / caudal (-) tilt about the patient's x axis.
    """

    name: str
    primary_deg: float
    secondary_deg: float


#: Standard neuro views (PA, lateral, obliques, Towne-like and Caldwell-like tilts).
VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        View("pa", 0.0, 0.0),
        View("lateral", 90.0, 0.0),
        View("lao30", 30.0, 0.0),
        View("rao30", -30.0, 0.0),
        View("towne", 0.0, 30.0),
        View("caldwell", 0.0, -15.0),
    )
}


@dataclass(frozen=True)
class Geometry:
    """C-arm cone-beam geometry (Azurion-like numbers).

    Attributes:
        sid: Source-to-image (detector) distance, mm.
        sod: Source-to-isocentre distance, mm.
        detector_mm: Side of the square detector area that is imaged, mm.
    """

    sid: float = 1195.0
    sod: float = 810.0
    detector_mm: float = 340.0

    @property
    def magnification(self) -> float:
        return self.sid / self.sod

    def pixel_mm_at_iso(self, size: int) -> float:
        return self.detector_mm / size / self.magnification


def ray_bundle(view: View, geom: Geometry, size: int, supersample: int = 1,
               pose: np.ndarray | None = None, shift_mm: np.ndarray | None = None):
    """Source position and unit ray directions for a square detector.

    Args:
        view: C-arm pose.
        geom: Geometry.
        size: Output pixels per side.
        supersample: Rays per pixel per axis (averaged later).
        pose: Optional extra (3, 3) rotation applied to the C-arm (patient pose jitter).
        shift_mm: Optional (3,) translation of the isocentre (pose jitter).

    Returns:
        (source (3,), directions (n, n, 3), max_length float) with n = size * supersample,
        row 0 at the top (superior side of a PA view).
    """
    rot = rot_z(view.primary_deg) @ rot_x(view.secondary_deg)
    if pose is not None:
        rot = pose @ rot
    iso = np.zeros(3) if shift_mm is None else np.asarray(shift_mm, float)
    beam = rot @ np.array([0.0, 1.0, 0.0])  # PA: posterior -> anterior
    u_axis = rot @ np.array([1.0, 0.0, 0.0])
    v_axis = rot @ np.array([0.0, 0.0, 1.0])
    source = iso - geom.sod * beam
    det_center = source + geom.sid * beam
    n = size * supersample
    coords = (np.arange(n) + 0.5) / n * geom.detector_mm - geom.detector_mm / 2
    uu, vv = np.meshgrid(coords, -coords)  # row 0 = +v (superior)
    pixels = det_center + uu[..., None] * u_axis + vv[..., None] * v_axis
    dirs = pixels - source
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return source, dirs, float(geom.sid * 1.2)


def chord_intervals(source: np.ndarray, dirs: np.ndarray, prim: Primitive) -> tuple[np.ndarray, np.ndarray]:
    """Entry/exit distance (mm) of rays through one clipped ellipsoid; empty rays give t0 = t1 = 0.

    Args:
        source: (3,) ray origin, mm.
        dirs: (R, 3) unit directions.
        prim: The primitive.

    Returns:
        t0, t1: (R,) each, with t1 >= t0 >= 0.
    """
    s_loc = (source - prim.center) @ prim.rotation / prim.half_axes
    d_loc = dirs @ prim.rotation / prim.half_axes
    a = np.einsum("ij,ij->i", d_loc, d_loc)
    b = 2.0 * d_loc @ s_loc
    c = s_loc @ s_loc - 1.0
    disc = b * b - 4 * a * c
    hit = disc > 0
    sq = np.sqrt(np.where(hit, disc, 0.0))
    t0 = np.where(hit, (-b - sq) / (2 * a), 0.0)
    t1 = np.where(hit, (-b + sq) / (2 * a), 0.0)
    for normal, offset in prim.clips:
        nd = dirs @ normal
        ns = source @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            t_plane = (offset - ns) / nd
        t1 = np.where(nd > 0, np.minimum(t1, t_plane), t1)
        t0 = np.where(nd < 0, np.maximum(t0, t_plane), t0)
        t1 = np.where((nd == 0) & (ns > offset), t0, t1)
    t0 = np.maximum(t0, 0.0)
    if prim.host is not None:  # the intersection of two convex sets: one interval
        h0, h1 = chord_intervals(source, dirs, prim.host)
        t0, t1 = np.maximum(t0, h0), np.minimum(t1, h1)
    empty = t1 <= t0
    return np.where(empty, 0.0, t0), np.where(empty, 0.0, t1)


def bounding_spheres(prims: list[Primitive]) -> tuple[np.ndarray, np.ndarray]:
    """(centres (K, 3), radii (K,)) of a sphere around each primitive: its ellipsoid's, or its host's where smaller
    (the primitive lies inside both)."""
    def sphere(p: Primitive) -> tuple[np.ndarray, float]:
        own = (p.center, float(np.max(p.half_axes)))
        if p.host is None:
            return own
        host = sphere(p.host)
        return own if own[1] <= host[1] else host

    spheres = [sphere(p) for p in prims]
    return np.array([c for c, _ in spheres], float).reshape(-1, 3), np.array([r for _, r in spheres], float)


def path_lengths(source: np.ndarray, dirs: np.ndarray, prims: list[Primitive],
                 chunk: int = 512, channels: np.ndarray | None = None, n_channels: int | None = None) -> np.ndarray:
    """Per-material path lengths (mm) along each ray with painter semantics.

    Args:
        source: (3,) mm.
        dirs: (..., 3) unit directions.
        prims: Primitives in painting order (later wins).
        chunk: Rays per vectorised block (bounds memory at chunk * 2K * K booleans).
        channels: Optional (K,) output channel of each primitive instead of its material (for example an
            anatomical structure, `datasets.labels`); a segment owned by no primitive goes to channel 0.
        n_channels: Number of output channels with `channels`.

    Returns:
        (len(MATERIALS), ...) float64 path lengths, all >= 0; index 0 is air inside the head (sinuses).
        With `channels`: (n_channels, ...).
    """
    shape = dirs.shape[:-1]
    flat = dirs.reshape(-1, 3)
    n_rays = flat.shape[0]
    material_of = np.array([p.material for p in prims]) if channels is None else np.asarray(channels)
    n_out = len(MATERIALS) if channels is None else int(n_channels)
    out = np.zeros((n_out, n_rays))
    centre, radius = bounding_spheres(prims)
    to_centre = centre - source  # (K, 3)
    for lo in range(0, n_rays, chunk):
        d = flat[lo:lo + chunk]
        # a primitive whose bounding sphere no ray of the block meets is left out before its chords are computed
        # (the result is the same: such a primitive has an empty chord on every ray of the block)
        along = d @ to_centre.T  # (r, K)
        near = ((np.sum(to_centre**2, axis=1) - along**2 <= radius**2) & (along + radius >= 0)).any(axis=0)
        candidates = np.flatnonzero(near)
        if len(candidates) == 0:
            continue
        t0, t1 = zip(*(chord_intervals(source, d, prims[k]) for k in candidates), strict=True)
        t0, t1 = np.stack(t0, 1), np.stack(t1, 1)  # (r, K')
        hit = (t1 > t0).any(axis=0)  # cull primitives no ray of this block meets (painting order kept)
        t0, t1, block_material = t0[:, hit], t1[:, hit], material_of[candidates][hit]
        n_hit = int(hit.sum())
        if n_hit == 0:
            continue
        ends = np.sort(np.concatenate([t0, t1], axis=1), axis=1)  # (r, 2K)
        seg_len = np.diff(ends, axis=1)  # (r, 2K-1)
        mid = 0.5 * (ends[:, 1:] + ends[:, :-1])
        inside = (t0[:, None, :] <= mid[..., None]) & (mid[..., None] < t1[:, None, :])  # (r, 2K-1, K)
        # owner = last painted primitive containing the midpoint (K if none)
        rev_first = np.argmax(inside[..., ::-1], axis=-1)
        any_inside = inside.any(axis=-1)
        owner = n_hit - 1 - rev_first
        mats = np.where(any_inside, block_material[owner], 0)
        r = d.shape[0]
        flat_index = (mats * r + np.arange(r)[:, None]).ravel()
        weights = np.where(any_inside, seg_len, 0.0).ravel()
        out[:, lo:lo + r] = np.bincount(flat_index, weights, minlength=n_out * r).reshape(-1, r)
    return out.reshape((n_out,) + shape)


def project(prims: list[Primitive], view: View, size: int, geom: Geometry = Geometry(),
            supersample: int = 2, pose: np.ndarray | None = None,
            shift_mm: np.ndarray | None = None, channels: np.ndarray | None = None,
            n_channels: int | None = None) -> np.ndarray:
    """Material path-length maps of one view, box-averaged over `supersample`^2 rays per pixel.

    Args:
        channels, n_channels: Group the primitives into other channels than materials (`path_lengths`).

    Returns:
        (len(MATERIALS), size, size) float32, mm (with `channels`: (n_channels, size, size)).
    """
    source, dirs, _ = ray_bundle(view, geom, size, supersample, pose, shift_mm)
    lengths = path_lengths(source, dirs, prims, channels=channels, n_channels=n_channels)
    m = lengths.shape[0]
    lengths = lengths.reshape(m, size, supersample, size, supersample).mean(axis=(2, 4))
    return lengths.astype(np.float32)
