"""History of generated images for the discriminator (Shrivastava et al. 2017; CycleGAN's ImagePool)."""
from __future__ import annotations

import torch


class ImagePool:
    """Until full, stores and returns each new image; then, per image, with probability 0.5 returns a
    stored image (replacing it with the new one), otherwise returns the new image.

    Args:
        size: Capacity (0 disables the pool).
        generator: Random source (for reproducible draws).
    """

    def __init__(self, size: int = 50, generator: torch.Generator | None = None):
        self.size, self.images, self.generator = size, [], generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif self._rand() > 0.5:
                idx = int(torch.randint(0, self.size, (), generator=self.generator))
                out.append(self.images[idx].clone())
                self.images[idx] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)
