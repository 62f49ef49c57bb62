"""Preview montage: domains (columns) x views (rows) of one subject, plus its label mask."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import XrayDataset


def montage(dataset: XrayDataset, subject: str | None = None, out: Path | None = None):
    """Render a montage figure (and save it to `out` as PNG if given). Returns the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = dataset.manifest
    subject = subject or sorted(m[m["split"] == "test"]["subject"].unique())[0]
    rows = m[m["subject"] == subject]
    if rows.empty:
        examples = ", ".join(sorted(m["subject"].unique())[:5])
        raise KeyError(f"subject {subject!r} not in {dataset.name}; e.g. {examples}")
    scenes = sorted(rows["scene"].unique())
    has_masks = "mask_path" in rows and rows["mask_path"].astype(bool).all()
    ncols = len(dataset.domains) + int(has_masks)
    fig, axes = plt.subplots(len(scenes), ncols, figsize=(1.9 * ncols, 1.9 * len(scenes)), squeeze=False)
    for i, scene in enumerate(scenes):
        for j, domain in enumerate(dataset.domains):
            ax = axes[i, j]
            r = rows[(rows["scene"] == scene) & (rows["domain"] == domain)]
            if len(r):
                img = dataset.load(r)[0, 0].numpy() * 0.5 + 0.5
                ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if i == 0:
                ax.set_title(domain, fontsize=9)
            if j == 0:
                ax.set_ylabel(scene.split("_", 1)[-1], fontsize=9)
        if has_masks:
            from PIL import Image

            mask = np.array(Image.open(dataset.root / rows[rows["scene"] == scene]["mask_path"].iloc[0]))
            axes[i, -1].imshow(mask, cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
            if i == 0:
                axes[i, -1].set_title("mask (air/soft/bone)", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    preset = dataset.config.get("preset", "")
    fig.suptitle(f"{dataset.name} {preset} - subject {subject} ({dataset.size}x{dataset.size})", fontsize=10)
    fig.tight_layout()
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig
