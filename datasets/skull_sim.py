"""`skull-sim`: a seeded generator of aligned skull radiographs in the five X-DigiSkull domains.

Every (subject, view) scene is projected (exact line integrals through the analytic head of
`datasets.phantom`) and rendered in every domain of `datasets.physics.DOMAIN_STYLES`, so the
domains of one scene are pixel-exact pairs of the same pose. Version 3 (the default) projects the
real domains through the subject's head *with* its fine anatomy (`datasets.detail`: vascular
grooves, diploic veins, sutures, granulation pits, regional vault thickness, scalp fat), the
synthetic domains through the coarse head without it: the real image holds anatomy that no
synthetic image shows. Version 2 (the dataset `skull-sim-v2`) renders both from the coarse head:
a gap of physics alone. Label masks (0 air, 1 soft tissue, 2 bone) and the per-material
path-length maps (of the coarse head) are saved beside the images. With `jitter=True` the synthetic
domains are re-projected under a small pose perturbation (±1.5°, ±3 mm), mimicking X-DigiSkull's
only-approximately aligned views; the masks and path maps then belong to the real-domain pose.

Output layout (written to `<out>.partial-*` and renamed into place only when complete):

    <out>/images/<domain>/<id>.png   16-bit greyscale, value = round(65535 * display)
    <out>/masks/<scene>.png          8-bit labels
    <out>/paths/<scene>.npz          float16 (M, H, W) path lengths in mm, materials in `materials`
    <out>/dicom/<domain>/<id>.dcm    optional DX For Presentation files
    <out>/manifest.csv               one row per image (see MANIFEST_COLUMNS)
    <out>/dataset.json               preset, seed, styles, versions, manifest sha256
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .detail import add_detail
from .phantom import BONE_MATERIALS, MATERIAL_ID, MATERIALS, SubjectParams, build_head, rot_x, rot_z
from .physics import DOMAIN_STYLES, realize
from .projector import VIEWS, Geometry, project

GENERATOR_VERSION = "3"  # 3: real-domain fine anatomy (datasets.detail); 2: physics-only gap
#: Versions the generator still renders (the dataset `skull-sim-v2` names version 2).
GENERATOR_VERSIONS = ("2", "3")
DOMAINS: tuple[str, ...] = tuple(DOMAIN_STYLES)
MANIFEST_COLUMNS = ("id", "scene", "subject", "view", "domain", "split", "dose", "kvp", "path", "checksum",
                    "mask_path", "paths_path", "height", "width")
BONE_MASK_MM = 12.0  # bone path length above which a pixel is labelled bone


@dataclass(frozen=True)
class Preset:
    """Size of a generated dataset.

    Attributes:
        size: Image side in pixels.
        n_subjects: Number of phantom subjects (splits are by subject).
        views: Names of `datasets.projector.VIEWS` rendered per subject.
        supersample: Rays per pixel per axis.
        test, ref, val: Subjects in the held-out splits (`datasets.splits`); train gets the rest.
    """

    size: int
    n_subjects: int
    views: tuple[str, ...] = tuple(VIEWS)
    supersample: int = 2
    test: int = 30
    ref: int = 18
    val: int = 8

    @property
    def split_counts(self) -> dict[str, int]:
        return {"test": self.test, "ref": self.ref, "val": self.val}


#: 30 test subjects (180 scenes) in every preset but `micro`: enough to separate methods by subject-level intervals.
PRESETS: dict[str, Preset] = {
    # a few seconds to generate: the runner's tests and CI drills (not for results)
    "micro": Preset(size=32, n_subjects=16, views=("pa", "lateral", "towne"), test=6, ref=3, val=2),
    "tiny": Preset(size=64, n_subjects=72),  # train 16 subjects (96 images per domain), about 35 s on 2 cores
    "small": Preset(size=128, n_subjects=72),
    "paper": Preset(size=512, n_subjects=96, ref=24, val=12, supersample=1),
}


def dataset_folder(data_root: Path, preset: str, seed: int = 0, split_seed: int = 0, jitter: bool = False,
                   version: str = GENERATOR_VERSION, misregister: float = 0.0) -> Path:
    """Where the loader and `python -m datasets generate` keep one generated variant (never shared by two)."""
    name = f"{preset}-seed{seed}" + (f"-split{split_seed}" if split_seed else "") + ("-jitter" if jitter else "")
    name += f"-misreg{check_misregister(misregister, jitter):g}mm" if misregister else ""
    return Path(data_root) / "skull-sim" / f"{name}-v{check_version(version)}"


#: Largest `misregister` (mm): a few pixels of `tiny` at the isocentre; beyond it the scenes are no longer "aligned".
MAX_MISREGISTER_MM = 10.0


def check_misregister(mm: float, jitter: bool = False) -> float:
    """`mm` as a float in [0, MAX_MISREGISTER_MM], or a one-line error naming the value and the fix."""
    try:
        mm = float(mm)
    except (TypeError, ValueError):
        raise ValueError(f"--misregister {mm!r}: expected a distance in mm, e.g. 2") from None
    if not 0.0 <= mm <= MAX_MISREGISTER_MM:
        raise ValueError(f"--misregister {mm:g}: must lie in [0, {MAX_MISREGISTER_MM:g}] mm")
    if mm and jitter:
        raise ValueError("--misregister and --jitter are alternatives (a fixed shift of paired scenes, or unpaired "
                         "scenes under random pose differences): pass one")
    return mm


def misregistration(seed: int, subject: int, view_index: int, mm: float) -> np.ndarray:
    """The shift (mm, 3D) of a scene's simulated pose against its acquired (real) pose under `--misregister mm`: a
    rigid translation of exactly `mm` in a direction uniform on the sphere, from its own stream (nothing else a scene
    draws changes)."""
    direction = np.random.default_rng([seed, subject, view_index, MISREGISTER_STREAM]).normal(size=3)
    return mm * direction / np.linalg.norm(direction)


#: The seed-sequence word of the misregistration stream (outside the domain indices that the noise streams use).
MISREGISTER_STREAM = 1000


def check_version(version: str) -> str:
    if str(version) not in GENERATOR_VERSIONS:
        raise ValueError(f"unknown skull-sim generator version {version!r}; available: {', '.join(GENERATOR_VERSIONS)}")
    return str(version)


def _identity(preset: str, seed: int, split_seed: int, jitter: bool, dicom: bool, version: str,
              misregister: float = 0.0) -> dict:
    """The fields of `dataset.json` that a cached copy must match to be reused (`misregister` only when set, so that
    a copy generated before the option existed still matches)."""
    return dict(preset=preset, preset_config=asdict(get_preset(preset)), seed=seed, split_seed=split_seed,
                jitter=jitter, dicom=dicom, generator_version=version, **({"misregister_mm": misregister}
                                                                           if misregister else {}))


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def label_mask(lengths: np.ndarray) -> np.ndarray:
    """0 = air/background, 1 = soft tissue, 2 = bone (bone path >= BONE_MASK_MM)."""
    total = lengths.sum(axis=0)
    bone = sum(lengths[MATERIAL_ID[m]] for m in BONE_MATERIALS)
    mask = np.zeros(total.shape, np.uint8)
    mask[total > 1.0] = 1
    mask[bone >= BONE_MASK_MM] = 2
    return mask


def _scene_pose(rng: np.random.Generator, deg: float, mm: float) -> tuple[np.ndarray, np.ndarray]:
    pose = rot_z(rng.uniform(-deg, deg)) @ rot_x(rng.uniform(-deg, deg))
    return pose, rng.uniform(-mm, mm, size=3)


def subject_head(seed: int, subject: int, detail: bool = False, draw: int = 0) -> list:
    """The phantom of one subject (its primitives in painting order), as the generator drew it; with `detail`, the
    real domains' head: the same anatomy with its fine structure (`datasets.detail`, realisation `draw`)."""
    rng = np.random.default_rng([seed, subject])
    params = SubjectParams.sample(rng)
    prims = build_head(params, rng)
    return add_detail(prims, params, seed, subject, draw) if detail else prims


def scene_pose(seed: int, subject: int, view_index: int) -> tuple[np.random.Generator, np.ndarray, np.ndarray]:
    """(generator, rotation, shift) of one scene's real-domain pose; the generator goes on to draw the jitter."""
    pose_rng = np.random.default_rng([seed, subject, view_index])
    return (pose_rng, *_scene_pose(pose_rng, 3.0, 3.0))


def render_scene(seed: int, subject: int, preset_name: str, view_index: int, jitter: bool = False,
                 version: str = GENERATOR_VERSION, domains: tuple[str, ...] = DOMAINS, draw: int = 0,
                 detail: bool | None = None, misregister: float = 0.0) -> dict:
    """One scene in `domains`: {"lengths": the coarse head's path lengths in the real pose, domain: display image}.
    `draw` > 0 renders the real domains with another realisation of the fine anatomy, under the same noise;
    `detail=False` renders v3's real domains without it, under the same noise (what the anatomy adds);
    `misregister` (mm) renders the synthetic domains with the head shifted by that much (`misregistration`), as
    between a simulator and the physical phantom it models: the scenes stay paired, their pixels no longer agree."""
    preset = PRESETS[preset_name]
    view_name = preset.views[view_index]
    geom = Geometry()
    pixel_mm = geom.detector_mm / preset.size
    coarse = subject_head(seed, subject)
    pose_rng, pose, shift = scene_pose(seed, subject, view_index)
    lengths = project(coarse, VIEWS[view_name], preset.size, geom, preset.supersample, pose, shift)
    syn_lengths = real_lengths = lengths
    if jitter:
        d_pose, d_shift = _scene_pose(pose_rng, 1.5, 3.0)
        syn_lengths = project(coarse, VIEWS[view_name], preset.size, geom, preset.supersample,
                              d_pose @ pose, shift + d_shift)
    elif misregister:
        syn_lengths = project(coarse, VIEWS[view_name], preset.size, geom, preset.supersample, pose,
                              shift + misregistration(seed, subject, view_index, misregister))
    detail = check_version(version) != "2" if detail is None else detail
    if detail and any(DOMAIN_STYLES[d].kind == "real" for d in domains):
        real_lengths = project(subject_head(seed, subject, detail=True, draw=draw), VIEWS[view_name], preset.size,
                               geom, preset.supersample, pose, shift)
    out = {"lengths": lengths}
    for domain in domains:
        d_idx = DOMAINS.index(domain)
        style = DOMAIN_STYLES[domain]
        noise_rng = np.random.default_rng([seed, subject, view_index, d_idx])
        src = syn_lengths if style.kind == "synthetic" else real_lengths
        out[domain] = realize(src, style, noise_rng, pixel_mm, detector_seed=seed, coupled_noise=version != "2")
    return out


def render_subject(args: tuple) -> list[dict]:
    """Render every view and domain of one subject (worker function; writes files under `root`).

    Args:
        args: (root, seed, subject, preset name, jitter[, generator version[, misregister mm]]).
    """
    root, seed, subject, preset_name, jitter, *rest = args
    version = rest[0] if rest else GENERATOR_VERSION
    misregister = rest[1] if len(rest) > 1 else 0.0
    preset = PRESETS[preset_name]
    from .io import write_png16  # local import keeps workers light

    rows = []
    for v_idx, view_name in enumerate(preset.views):
        scene = f"s{subject:03d}_{view_name}"
        images = render_scene(seed, subject, preset_name, v_idx, jitter, version, misregister=misregister)
        lengths = images.pop("lengths")
        np.savez_compressed(root / "paths" / f"{scene}.npz", lengths=lengths.astype(np.float16),
                            materials=np.array(MATERIALS))
        write_png16(root / "masks" / f"{scene}.png", label_mask(lengths), bits=8)
        for domain, img in images.items():
            style = DOMAIN_STYLES[domain]
            rel = Path("images") / domain / f"{scene}_{domain}.png"
            write_png16(root / rel, img)
            rows.append(dict(id=f"{scene}_{domain}", scene=scene, subject=f"s{subject:03d}", view=view_name,
                             domain=domain, dose=style.dose_label, kvp=style.kvp, path=str(rel),
                             checksum=sha256_file(root / rel), mask_path=f"masks/{scene}.png",
                             paths_path=f"paths/{scene}.npz", height=preset.size, width=preset.size))
    return rows


def generate(out: Path, preset: str = "tiny", seed: int = 0, split_seed: int = 0, jitter: bool = False,
             dicom: bool = False, workers: int | None = None, force: bool = False, progress=None,
             version: str = GENERATOR_VERSION, misregister: float = 0.0) -> Path:
    """Generate `skull-sim` into `out` atomically; return `out`. A complete `out` is reused when its
    `dataset.json` matches the request (preset, seed, split seed, jitter, DICOM, generator version, misregister).

    Args:
        out: Destination folder (must not exist, or be a complete dataset, or `force`).
        preset: Key of `PRESETS`.
        seed: Phantom and noise seed.
        split_seed: Seed of the subject split (see `datasets.splits`).
        jitter: Pose jitter between synthetic and real domains.
        dicom: Also write DX For Presentation DICOM files.
        workers: Processes (default: CPU count, at most 8).
        force: Regenerate even if a complete dataset exists.
        progress: Optional callable(done, total) for progress display.
        version: Generator version (`GENERATOR_VERSIONS`): "3" with real-domain fine anatomy, "2" without.
        misregister: Shift (mm) of every scene's synthetic pose against its real pose (`render_scene`); 0 = none.

    Raises:
        FileExistsError: `out` exists and is not a complete skull-sim dataset, or holds another variant.
    """
    from .splits import assign_splits

    out = Path(out)
    cfg = get_preset(preset)
    version = check_version(version)
    misregister = check_misregister(misregister, jitter)
    if is_complete(out) and not force:
        want = json.loads(json.dumps(_identity(preset, seed, split_seed, jitter, dicom, version, misregister)))
        have = json.loads((out / "dataset.json").read_text())
        diff = [k for k in [*want, *{"misregister_mm"} - set(want)] if have.get(k) != want.get(k)
                and not (k == "dicom" and have.get(k) and not dicom)]
        if diff:
            k = diff[0]
            raise FileExistsError(f"{out} holds skull-sim with {k}={have.get(k)!r}, not the requested {want.get(k)!r}; "
                                  "pass another --out (or --data-root), or --force to regenerate it")
        return out
    if out.exists() and not is_complete(out) and not force:
        raise FileExistsError(f"{out} exists but is not a complete skull-sim dataset; remove it or pass --force")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ["paths", "masks"] + [f"images/{d}" for d in DOMAINS]:
        (tmp / sub).mkdir(parents=True)
    t_start = time.time()
    jobs = [(tmp, seed, s, preset, jitter, version, misregister) for s in range(cfg.n_subjects)]
    workers = workers or min(os.cpu_count() or 1, 8)
    rows: list[dict] = []
    try:
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                for i, r in enumerate(pool.map(render_subject, jobs)):
                    rows += r
                    if progress:
                        progress(i + 1, len(jobs))
        else:
            for i, job in enumerate(jobs):
                rows += render_subject(job)
                if progress:
                    progress(i + 1, len(jobs))
        splits = assign_splits(sorted({r["subject"] for r in rows}), "skull-sim", split_seed, counts=cfg.split_counts)
        for r in rows:
            r["split"] = splits[r["subject"]]
        if dicom:
            from .io import write_dicom_dx

            for r in rows:
                dcm = tmp / "dicom" / r["domain"] / f"{r['id']}.dcm"
                dcm.parent.mkdir(parents=True, exist_ok=True)
                write_dicom_dx(dcm, tmp / r["path"], r)
        _write_manifest(tmp / "manifest.csv", rows)
        meta = dict(dataset="skull-sim", **_identity(preset, seed, split_seed, jitter, dicom, version, misregister),
                    domains=list(DOMAINS), styles={d: s.to_dict() for d, s in DOMAIN_STYLES.items()},
                    geometry=asdict(Geometry()), n_images=len(rows),
                    manifest_sha256=sha256_file(tmp / "manifest.csv"),
                    seconds=round(time.time() - t_start, 2))
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))  # written last: marks completeness
        if out.exists():
            old = out.with_name(f"{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write_manifest(path: Path, rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: r["id"])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r[k] for k in MANIFEST_COLUMNS})


def is_complete(root: Path) -> bool:
    """True if `root` holds a finished dataset whose manifest matches the recorded checksum."""
    meta_path = Path(root) / "dataset.json"
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return sha256_file(Path(root) / "manifest.csv") == meta["manifest_sha256"]
    except (OSError, ValueError, KeyError):
        return False
