"""Preview montage: domains (columns) x views (rows) of one subject, plus its label mask and (skull-sim) the
per-structure labels of `datasets.labels` drawn on the real image."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import XrayDataset

LABEL_COLORS = ("tab:red", "tab:orange", "tab:cyan", "tab:green", "yellow", "tab:purple")


def _draw_labels(ax, dataset: XrayDataset, rows, scene: str, first: bool) -> None:
    """The real image of `scene` (the first real domain) with each structure's outline in its colour."""
    from .labels import load_labels

    real = [d for d in dataset.domains if d.startswith("real")] or list(dataset.domains)
    r = rows[(rows["scene"] == scene) & (rows["domain"] == real[len(real) // 2])]
    ax.imshow(dataset.load(r)[0, 0].numpy() * 0.5 + 0.5, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    labels = load_labels(dataset, [scene])[0]
    for k, label in enumerate(labels):
        if label.any():
            ax.contour(label.astype(float), [0.5], colors=[LABEL_COLORS[k]], linewidths=0.8)
    if first:
        ax.set_title("structures (labels)", fontsize=8)


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
    has_labels = dataset.name.startswith("skull-sim")
    ncols = len(dataset.domains) + int(has_masks) + int(has_labels)
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

            col = len(dataset.domains)
            mask = np.array(Image.open(dataset.root / rows[rows["scene"] == scene]["mask_path"].iloc[0]))
            axes[i, col].imshow(mask, cmap="viridis", vmin=0, vmax=2, interpolation="nearest")
            if i == 0:
                axes[i, col].set_title("mask (air/soft/bone)", fontsize=8)
        if has_labels:
            _draw_labels(axes[i, -1], dataset, rows, scene, first=i == 0)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    preset = dataset.config.get("preset", "")
    fig.suptitle(f"{dataset.name} {preset} - subject {subject} ({dataset.size}x{dataset.size})", fontsize=10)
    fig.tight_layout()
    if has_labels:
        from matplotlib.lines import Line2D

        from .labels import STRUCTURE_NAMES

        handles = [Line2D([], [], color=LABEL_COLORS[k], lw=2, label=n.replace("_", " "))
                   for k, n in enumerate(STRUCTURE_NAMES)]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
        fig.subplots_adjust(bottom=0.06)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
    return fig
