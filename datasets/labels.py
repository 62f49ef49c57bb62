"""Per-structure label maps of skull-sim scenes: the anatomy a downstream segmentation model must find.

Each label is the projection of one group of the phantom's own primitives (`datasets.phantom.build_head`) through
the scene's own geometry (`datasets.skull_sim.scene_pose`): the painter-resolved path length through the group's
primitives (`datasets.projector.path_lengths` with one channel per structure), box-averaged over the generator's
rays per pixel, and thresholded at what makes the structure stand out in a radiograph. A pixel may carry several
labels (the mandible behind the teeth, the orbits inside the calvarium's outline): the maps are multi-label.

The six structures, chosen because each is a distinct, bounded shape of several pixels at 64 px in most views,
and because together they ask for bone edges, air cavities and small dense objects (the old air/soft/bone mask
calls almost the whole cranium bone in projection, which a threshold solves):

| structure | primitives | threshold | what it marks |
|---|---|---|---|
| calvarium | outer table, diploe, inner table | 35 mm | where the beam runs tangentially through the vault: its rim |
| orbits | orbital rims, orbital fat, globes | 15 mm | the two orbits (superimposed in the lateral view) |
| maxillary_sinuses | maxillary walls and sinus air | 10 mm | the two air-filled cavities below the orbits |
| mandible | mandible shell and core, rami | 10 mm | the lower jaw |
| teeth | the 32 enamel crowns | 4 mm | the two dental arches |
| cervical_spine | C1-C3, dens | 8 mm | the upper cervical vertebrae |

The calvarium's threshold keeps the bright rim of the skull, not its whole outline (about 20 mm of shell lie on
every ray through the cranium in a PA view).

Labels of a scene belong to its real-domain pose (with `jitter`, the synthetic images are drawn under a slightly
different pose, like the air/soft/bone masks). They are computed once per generated dataset and cached beside it:
`<root>/labels-v<LABELS_VERSION>/<scene>.png` (8-bit, bit k set where structure k is present) and `labels.json`
(structures, thresholds, version), written atomically. The images and their identity are untouched, so runs made
before the labels existed stay valid. `python -m datasets labels --preset tiny` computes them ahead of use.
"""
from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LABELS_VERSION = "1"


@dataclass(frozen=True)
class Structure:
    """One label: the primitives (by name, or name prefix ending in '_') and the path length that marks it."""

    name: str
    parts: tuple[str, ...]
    min_mm: float

    def owns(self, primitive_name: str) -> bool:
        return any(primitive_name == p or (p.endswith("_") and primitive_name.startswith(p)) for p in self.parts)


STRUCTURES: tuple[Structure, ...] = (
    Structure("calvarium", ("outer_table", "diploe", "inner_table"), 35.0),
    Structure("orbits", ("orbit_rim_", "orbit_", "globe_"), 15.0),
    Structure("maxillary_sinuses", ("maxillary_wall_", "maxillary_sinus_"), 10.0),
    Structure("mandible", ("mandible", "mandible_core", "ramus_"), 10.0),
    Structure("teeth", ("tooth_",), 4.0),
    Structure("cervical_spine", ("C1", "C2", "C3", "dens"), 8.0),
)
STRUCTURE_NAMES: tuple[str, ...] = tuple(s.name for s in STRUCTURES)


def structure_channels(prims: list) -> np.ndarray:
    """(K,) output channel of each primitive: 1 + the index of its structure, 0 for the rest of the head."""
    out = np.zeros(len(prims), dtype=np.int64)
    for i, prim in enumerate(prims):
        for k, structure in enumerate(STRUCTURES):
            if structure.owns(prim.name):
                out[i] = k + 1
                break
    return out


def structure_lengths(seed: int, subject: int, view_index: int, view_name: str, size: int,
                      supersample: int) -> np.ndarray:
    """(len(STRUCTURES), size, size) float32: mm of each structure along each pixel's rays (box-averaged)."""
    from .projector import VIEWS, Geometry, project
    from .skull_sim import scene_pose, subject_head

    prims = subject_head(seed, subject)
    _, pose, shift = scene_pose(seed, subject, view_index)
    lengths = project(prims, VIEWS[view_name], size, Geometry(), supersample, pose, shift,
                      channels=structure_channels(prims), n_channels=len(STRUCTURES) + 1)
    return lengths[1:]


def label_maps(lengths: np.ndarray) -> np.ndarray:
    """(S, H, W) structure path lengths -> (S, H, W) bool labels (each structure's threshold)."""
    thresholds = np.array([s.min_mm for s in STRUCTURES], dtype=np.float32)[:, None, None]
    return lengths >= thresholds


def pack(labels: np.ndarray) -> np.ndarray:
    """(S, H, W) bool -> (H, W) uint8 with bit k set where structure k is present."""
    return sum((labels[k].astype(np.uint8) << k) for k in range(len(labels))).astype(np.uint8)


def unpack(packed: np.ndarray, n: int = len(STRUCTURES)) -> np.ndarray:
    """(H, W) uint8 -> (n, H, W) bool."""
    return np.stack([(packed >> k) & 1 for k in range(n)]).astype(bool)


def labels_folder(root: Path) -> Path:
    return Path(root) / f"labels-v{LABELS_VERSION}"


def _scene_job(args: tuple) -> tuple[str, np.ndarray]:
    scene, seed, subject, view_index, view_name, size, supersample = args
    return scene, pack(label_maps(structure_lengths(seed, subject, view_index, view_name, size, supersample)))


def _jobs(dataset) -> list[tuple]:
    from .skull_sim import get_preset

    cfg = dataset.config
    preset = get_preset(cfg["preset"])
    scenes = dataset.manifest[["scene", "subject", "view"]].drop_duplicates().sort_values("scene")
    return [(r.scene, int(cfg["seed"]), int(r.subject.lstrip("s")), preset.views.index(r.view), r.view, preset.size,
             preset.supersample) for r in scenes.itertuples()]


def ensure_labels(dataset, workers: int | None = None) -> Path:
    """Compute the label maps of every scene of a skull-sim dataset once (atomic; reused when complete).

    Raises:
        ValueError: The dataset is not skull-sim (other data has no phantom to label from).
    """
    from .io import write_png16

    if not dataset.name.startswith("skull-sim"):
        raise ValueError(f"{dataset.name}: per-structure labels exist only for skull-sim (from its phantom); "
                         "a folder dataset would need its own label maps")
    out = labels_folder(dataset.root)
    want = dict(version=LABELS_VERSION, structures=[dict(name=s.name, parts=list(s.parts), min_mm=s.min_mm)
                                                    for s in STRUCTURES])
    if (out / "labels.json").is_file() and json.loads((out / "labels.json").read_text()) == want:
        return out
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = _jobs(dataset)
    workers = workers or min(os.cpu_count() or 1, 8)
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                done = list(pool.map(_scene_job, jobs, chunksize=4))
        else:
            done = [_scene_job(j) for j in jobs]
        for scene, packed in done:
            write_png16(tmp / f"{scene}.png", packed, bits=8)
        (tmp / "labels.json").write_text(json.dumps(want, indent=1))  # written last: marks completeness
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_labels(dataset, scenes) -> np.ndarray:
    """(N, S, H, W) bool label maps of `scenes` (computed on first use, `ensure_labels`)."""
    from PIL import Image

    folder = ensure_labels(dataset)
    return np.stack([unpack(np.array(Image.open(folder / f"{scene}.png"))) for scene in scenes])
