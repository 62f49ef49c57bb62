"""Translated images of a few fixed test scenes, saved with every run: what the qualitative figure shows.

The scenes are chosen once per dataset and task, by id, on the test split (`sample_scenes`): `N_SAMPLES`
subjects evenly spaced in the sorted test subjects, the k-th of them at its k-th scene (so the views differ).
The runner saves, for each such scene it translates, the source image, the aligned real image (where the data
has pairs) and the method's output at every knob value it is scored at, as 16-bit PNG under

    <run>/samples/<task>/<scene>/source-<domain>.png, target-<domain>.png, knob-<value>.png

(`knob-none.png` for a method without a knob). Figures read these files and the records, never checkpoints.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

N_SAMPLES = 4


def sample_scenes(dataset, target: str, n: int = N_SAMPLES) -> list[str]:
    """The fixed scenes of the qualitative figure: scenes of the test split that have a `target` image."""
    rows = dataset.rows(target, "test")
    subjects = sorted(set(rows["subject"]))
    if not subjects:
        return []
    picks = list(dict.fromkeys(subjects[round(i * (len(subjects) - 1) / max(n - 1, 1))] for i in range(n)))
    scenes = []
    for k, subject in enumerate(picks):
        own = sorted(rows.loc[rows["subject"] == subject, "scene"])
        scenes.append(own[k % len(own)])
    return scenes


def knob_file(knob_value) -> str:
    return "knob-none.png" if knob_value in (None, "") else f"knob-{float(knob_value):g}.png"


def _write(path: Path, image) -> None:
    """One (1, H, W) or (H, W) image in [-1, 1] as 16-bit PNG, through a temporary next to it."""
    from datasets.io import write_png16

    arr = np.asarray(image.detach().cpu().double().numpy() if hasattr(image, "detach") else image, np.float64)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    try:
        write_png16(tmp, (arr.reshape(arr.shape[-2:]) + 1.0) / 2.0)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_samples(folder: Path, task: str, scenes: list[str], wanted: list[str], source: str, target: str, knob_value,
                 x_src, x_gt, x_hat) -> list[Path]:
    """Save the images of the `wanted` scenes found in `scenes` (the order of x_src / x_gt / x_hat rows).

    Args:
        folder: The run folder.
        scenes: Scene id of each row of the translated set.
        wanted: The fixed scenes (`sample_scenes`).
        x_gt: Aligned real images, or None.
    """
    written = []
    for scene in wanted:
        if scene not in scenes:
            continue
        i = scenes.index(scene)
        out = Path(folder) / "samples" / task / scene
        out.mkdir(parents=True, exist_ok=True)
        files = {f"source-{source}.png": x_src[i], knob_file(knob_value): x_hat[i]}
        if x_gt is not None:
            files[f"target-{target}.png"] = x_gt[i]
        for name, image in files.items():
            if name.startswith("knob-") or not (out / name).is_file():
                _write(out / name, image)
                written.append(out / name)
    return written


def read_samples(run_folder: Path, task: str) -> dict:
    """{scene: {"source": (domain, image), "target": (domain, image) or None, "knobs": {value: image}}}, images
    float64 (H, W) in [0, 1], from one run's saved samples of `task` (empty when it saved none)."""
    from PIL import Image

    def read_png(path: Path) -> np.ndarray:  # no input checks: a broken method's constant output is shown as it is
        with Image.open(path) as im:
            return np.asarray(im, np.float64) / 65535.0

    out = {}
    for scene_dir in sorted((Path(run_folder) / "samples" / task).glob("*")):
        entry = {"source": None, "target": None, "knobs": {}}
        for f in sorted(scene_dir.glob("*.png")):
            kind, _, value = f.stem.partition("-")
            if kind in ("source", "target"):
                entry[kind] = (value, read_png(f))
            elif kind == "knob":
                entry["knobs"][None if value == "none" else float(value)] = read_png(f)
        out[scene_dir.name] = entry
    return out
