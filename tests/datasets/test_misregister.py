"""`--misregister MM`: paired scenes whose synthetic pose is shifted by MM mm against the real one.

Checked against the imaging geometry (a shift of the isocentre moves the projected head by the magnification times
the shift's in-plane part, measured here by sub-pixel registration with scipy), not against the generator's own code.
"""
import json

import numpy as np
import pytest
from scipy import ndimage, optimize

from datasets import skull_sim
from datasets.physics import DOMAIN_STYLES
from datasets.projector import VIEWS, Geometry, rot_x, rot_z

SYNTHETIC = [d for d in skull_sim.DOMAINS if DOMAIN_STYLES[d].kind == "synthetic"]
REAL = [d for d in skull_sim.DOMAINS if DOMAIN_STYLES[d].kind == "real"]


def test_the_shift_has_the_requested_length_and_its_own_direction_per_scene():
    shifts = [skull_sim.misregistration(0, s, v, 2.5) for s in range(6) for v in range(3)]
    assert np.allclose([np.linalg.norm(s) for s in shifts], 2.5)
    assert np.array_equal(shifts[0], skull_sim.misregistration(0, 0, 0, 2.5))  # deterministic
    directions = np.array(shifts) / 2.5
    assert np.abs(directions.mean(axis=0)).max() < 0.6 and len({tuple(np.round(d, 6)) for d in directions}) == 18


def _registered_shift(moved: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """(rows, cols) that `fixed` must be shifted by to match `moved` (least squares, cubic interpolation)."""
    def loss(d):
        return float(np.mean((ndimage.shift(fixed, d, order=3, mode="nearest") - moved)[8:-8, 8:-8] ** 2))

    return optimize.minimize(loss, np.zeros(2), method="Nelder-Mead", options=dict(xatol=1e-3, fatol=1e-12)).x


def test_the_synthetic_image_moves_as_the_geometry_says_and_the_real_one_stays():
    mm, seed, subject, view_index = 10.0, 0, 3, 0  # a PA view of tiny: about 2 pixels
    aligned = skull_sim.render_scene(seed, subject, "tiny", view_index)
    moved = skull_sim.render_scene(seed, subject, "tiny", view_index, misregister=mm)
    for d in REAL:
        assert np.array_equal(moved[d], aligned[d]), d  # the acquired images are the same images
    assert np.array_equal(moved["lengths"], aligned["lengths"])  # and so are the labels' path lengths

    geom, size = Geometry(), skull_sim.PRESETS["tiny"].size
    view = VIEWS[skull_sim.PRESETS["tiny"].views[view_index]]
    _, pose, _ = skull_sim.scene_pose(seed, subject, view_index)
    rot = pose @ rot_z(view.primary_deg) @ rot_x(view.secondary_deg)
    u_axis, v_axis = rot @ np.array([1.0, 0, 0]), rot @ np.array([0, 0, 1.0])
    s = skull_sim.misregistration(seed, subject, view_index, mm)
    # the source and detector move with the isocentre: the head moves by -s relative to them, magnified onto the
    # detector; rows grow downwards (against v), columns along u
    pixel = geom.detector_mm / size
    expected = np.array([geom.sid / geom.sod * (s @ v_axis) / pixel, -geom.sid / geom.sod * (s @ u_axis) / pixel])
    assert np.abs(expected).max() > 1.0  # the test measures a visible shift
    for d in SYNTHETIC:
        got = _registered_shift(moved[d].astype(float), aligned[d].astype(float))
        assert np.allclose(got, expected, atol=0.3), (d, got, expected)


def test_the_variant_has_its_own_folder_identity_and_refuses_bad_values(tmp_path):
    plain = skull_sim.dataset_folder(tmp_path, "micro")
    moved = skull_sim.dataset_folder(tmp_path, "micro", misregister=2)
    assert plain.name == "micro-seed0-v3" and moved.name == "micro-seed0-misreg2mm-v3"
    assert "misregister_mm" not in skull_sim._identity("micro", 0, 0, False, False, "3")  # old copies still match
    with pytest.raises(ValueError, match="--misregister -1: must lie in"):
        skull_sim.dataset_folder(tmp_path, "micro", misregister=-1)
    with pytest.raises(ValueError, match="alternatives"):
        skull_sim.dataset_folder(tmp_path, "micro", jitter=True, misregister=2)


def test_a_cached_copy_of_other_misregistration_is_refused_in_one_line(tmp_path):
    out = tmp_path / "set"
    skull_sim.generate(out, "micro", workers=1, misregister=3)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["misregister_mm"] == 3
    assert skull_sim.generate(out, "micro", workers=1, misregister=3) == out  # reused
    with pytest.raises(FileExistsError, match="misregister_mm=3.0, not the requested None"):
        skull_sim.generate(out, "micro", workers=1)


def test_the_runner_keeps_aligned_run_ids_and_names_misregistered_runs_apart():
    from benchmark.protocol.config import RunSpec, setting

    plain, moved = RunSpec("pix2pix"), RunSpec("pix2pix", misregister=2.0)
    assert plain.run_id == RunSpec("pix2pix", misregister=0.0).run_id and moved.run_id != plain.run_id
    assert setting(moved) == "misregister=2mm" and setting(plain) == ""


def test_a_folder_dataset_refuses_misregistration_in_one_line():
    from datasets import load_dataset

    with pytest.raises(ValueError, match="misregistration is a skull-sim generator option"):
        load_dataset("folder", config="nowhere.yaml", misregister=2)


def test_a_misregistered_run_is_never_taken_for_the_headline_fit(tmp_path, monkeypatch):
    """The utility and a student's teacher lookup (`find_run`) read the fit on the dataset as generated: a
    misregistered fit of the same method and seed beside it is neither found nor counted as a second one."""
    import benchmark.protocol.records as records
    from benchmark.errors import RunError
    from benchmark.run.finished import find_run

    monkeypatch.setattr(records, "verify_done", lambda folder: None)
    for name, extra in (("seed0-aligned", {}), ("seed0-moved", {"misregister": 2.0})):
        folder = tmp_path / "runs" / "pix2pix" / "skull-sim-tiny" / name
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "selected.ckpt").write_bytes(b"")
        spec = dict(tasks=["sim2real"], overrides=[], max_steps=None, budget=None, **extra)
        (folder / "config.json").write_text(json.dumps(dict(spec=spec)))
    assert find_run(tmp_path, "pix2pix", "skull-sim", "tiny", 0, "sim2real").name == "seed0-aligned"
    (tmp_path / "runs" / "pix2pix" / "skull-sim-tiny" / "seed0-aligned" / "config.json").unlink()
    with pytest.raises(RunError, match="no finished pix2pix run"):
        find_run(tmp_path, "pix2pix", "skull-sim", "tiny", 0, "sim2real")
