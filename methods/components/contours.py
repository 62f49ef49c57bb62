"""Contour maps as in ContourDiff's preprocessing: Gaussian blur (3x3), Canny 80/150, binarised.

The reference runs OpenCV on 8-bit images. Here the Canny thresholds are the same fractions of the
display range (80/255 and 150/255) applied to the full-precision image in [0, 1] (skimage's Canny,
which smooths with sigma 0.8, the sigma OpenCV derives for a 3x3 Gaussian kernel), so 16-bit inputs are
not quantised first. skimage uses the L2 gradient norm where OpenCV's default is L1 (up to a factor
sqrt(2) in the effective threshold).
"""
from __future__ import annotations

import numpy as np
import torch

LOW, HIGH, SIGMA = 80 / 255, 150 / 255, 0.8


def contour_map(images: torch.Tensor, low: float = LOW, high: float = HIGH, sigma: float = SIGMA) -> torch.Tensor:
    """Binary edge maps of a batch.

    Args:
        images: (B, 1, H, W) in [-1, 1].

    Returns:
        (B, 1, H, W) float in {-1, 1} (1 = edge), on the input's device.
    """
    from skimage.feature import canny

    x01 = ((images.detach().float().cpu() + 1) * 0.5).clamp(0, 1).numpy()
    edges = np.stack([canny(img[0], sigma=sigma, low_threshold=low, high_threshold=high) for img in x01])
    return torch.from_numpy(edges[:, None].astype(np.float32) * 2 - 1).to(images.device)
