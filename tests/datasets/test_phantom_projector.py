"""Projector against closed forms and an independent point-sampling (ray-marching) reference."""
import numpy as np
import pytest

from datasets.phantom import MATERIAL_ID, MATERIALS, Primitive, SubjectParams, build_head
from datasets.projector import VIEWS, Geometry, chord_intervals, path_lengths, project, ray_bundle


def _sphere(name, material, r, center=(0, 0, 0), clips=()):
    return Primitive(name, MATERIAL_ID[material], np.array(center, float), np.full(3, float(r)), np.eye(3), clips)


def _rays_through(offsets):
    source = np.array([0.0, -500.0, 0.0])
    targets = np.stack([np.array([d, 0.0, 0.0]) for d in offsets])
    dirs = targets - source
    return source, dirs / np.linalg.norm(dirs, axis=1, keepdims=True)


def test_sphere_chord_matches_closed_form():
    r = 50.0
    source, dirs = _rays_through([0.0, 10.0, 30.0, 49.0, 60.0])
    t0, t1 = chord_intervals(source, dirs, _sphere("s", "soft", r))
    # distance of each ray from the centre: |source x dir|
    dist = np.linalg.norm(np.cross(-source, dirs), axis=1)
    expected = 2 * np.sqrt(np.clip(r**2 - dist**2, 0, None))
    np.testing.assert_allclose(t1 - t0, expected, atol=1e-9)


def test_painter_nested_spheres_and_clip():
    outer, inner = _sphere("o", "soft", 50), _sphere("i", "bone", 20)
    source, dirs = _rays_through([0.0, 10.0, 30.0])
    dist = np.linalg.norm(np.cross(-source, dirs), axis=1)
    chord = lambda r: 2 * np.sqrt(np.clip(r**2 - dist**2, 0, None))  # noqa: E731
    lengths = path_lengths(source, dirs, [outer, inner])
    np.testing.assert_allclose(lengths[MATERIAL_ID["bone"]], chord(20), atol=1e-9)
    np.testing.assert_allclose(lengths[MATERIAL_ID["soft"]], chord(50) - chord(20), atol=1e-9)
    # painting order matters: the big sphere painted last owns everything
    lengths_rev = path_lengths(source, dirs, [inner, outer])
    np.testing.assert_allclose(lengths_rev[MATERIAL_ID["soft"]], chord(50), atol=1e-9)
    assert np.all(lengths_rev[MATERIAL_ID["bone"]] == 0)
    # a clip plane x <= 0 halves the chord of the central ray... along y: clip y <= 0 instead
    half = _sphere("h", "soft", 50, clips=((np.array([0.0, 1.0, 0.0]), 0.0),))
    l_half = path_lengths(source, dirs[:1], [half])
    np.testing.assert_allclose(l_half[MATERIAL_ID["soft"]], [50.0], atol=1e-9)


def _point_sampled(source, direction, prims, step=0.02, t_max=1400.0):
    """Independent reference: classify points along the ray by painter order via Primitive.contains."""
    t = np.arange(step / 2, t_max, step)
    pts = source + t[:, None] * direction
    owner = np.full(len(t), -1)
    for k, p in enumerate(prims):
        owner[p.contains(pts)] = k
    mats = np.array([p.material for p in prims])
    out = np.zeros(len(MATERIALS))
    for m in range(len(MATERIALS)):
        out[m] = step * np.sum((owner >= 0) & (mats[np.maximum(owner, 0)] == m))
    return out


@pytest.mark.parametrize("view", ["pa", "lateral", "towne"])
def test_head_path_lengths_nonnegative_and_match_reference(view):
    rng = np.random.default_rng(3)
    prims = build_head(SubjectParams.sample(rng), rng)
    source, dirs, _ = ray_bundle(VIEWS[view], Geometry(), 16)
    lengths = path_lengths(source, dirs, prims)
    assert lengths.min() >= 0.0
    assert lengths[MATERIAL_ID["bone"]].max() > 10.0  # the skull is there
    # a few rays through the head against point sampling
    for (i, j) in [(8, 8), (5, 8), (11, 6), (8, 3)]:
        ref = _point_sampled(source, dirs[i, j], prims)
        np.testing.assert_allclose(lengths[:, i, j], ref, atol=0.15)


def test_project_shapes_and_total_path_is_union_chord():
    prims = build_head(SubjectParams.mean())
    lengths = project(prims, VIEWS["pa"], 32, supersample=1)
    assert lengths.shape == (len(MATERIALS), 32, 32)
    assert (lengths >= 0).all()
    total = lengths.sum(axis=0)
    assert total[0, 0] == 0.0  # corner ray misses the head
    assert 150 < total[16, 16] < 230  # through the cranium, PA: about the head length
