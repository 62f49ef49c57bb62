"""GAN networks of the junyanz reference (pytorch-CycleGAN-and-pix2pix): CycleGAN's ResNet generator, pix2pix's
U-Net generator, and the 70x70 PatchGAN both use."""
from __future__ import annotations

import math

import torch
from torch import nn


def _norm(channels: int, affine: bool = False) -> nn.Module:
    """Instance norm. `affine=True` is what the reference's BatchNorm computes at batch 1 in training mode (the
    statistics of the one image, with a learned scale and shift), which is how pix2pix trains and tests."""
    return nn.InstanceNorm2d(channels, affine=affine, track_running_stats=False)


class ResnetBlock(nn.Module):
    """x + [reflect pad, conv3x3, norm, ReLU, reflect pad, conv3x3, norm](x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), _norm(channels),
                                  nn.ReLU(True), nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3),
                                  _norm(channels))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """c7s1-ngf, d(2ngf), d(4ngf), n_blocks x R(4ngf), u(2ngf), u(ngf), c7s1-out, tanh.

    Args:
        in_channels, out_channels: Image channels.
        ngf: Filters of the first layer.
        n_blocks: Residual blocks (9 at 256 px, 6 at <= 128 px in the reference).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, ngf: int = 64, n_blocks: int = 6):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), _norm(ngf), nn.ReLU(True)]
        for i in range(2):  # downsampling
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), _norm(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1), _norm(c // 2),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net: `n_down` stride-2 4x4 convolutions down to 1x1 and as many transposed ones up, each level's
    encoder features concatenated to its decoder input (skip connections).

    Channels from the outside in: ngf, 2ngf, 4ngf, then 8ngf for every further level (the reference's
    `unet_256` has n_down = 8; here n_down = log2(image size), so the innermost features are 1x1 as there).
    Encoder: LeakyReLU(0.2) - conv - norm (no activation on the outermost level, no norm on the outermost and
    innermost); decoder: ReLU - transposed conv - norm, with Dropout(0.5) after the norm of the 8ngf levels between
    the 4ngf level and the innermost one (n_down - 5 of them, as the reference's `use_dropout` blocks), tanh at
    the output. Only the output convolution has a bias (the reference with its default BatchNorm).

    Args:
        in_channels, out_channels: Image channels.
        image_size: Input side, a power of two >= 8.
        ngf: Filters of the outermost level.
        dropout: The reference's dropout-as-noise (pix2pix: on; the regression CNN: off).
        affine_norm: Learned scale and shift in the norms (`_norm`).
        tanh: End in tanh (images in [-1, 1]); False returns the output convolution as it is (logits, e.g. the
            utility benchmark's segmenter, `benchmark.orchestration.utility`).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, image_size: int = 64, ngf: int = 64,
                 dropout: bool = True, affine_norm: bool = True, tanh: bool = True):
        super().__init__()
        n_down = int(round(math.log2(image_size)))
        if 2**n_down != image_size or n_down < 3:
            raise ValueError(f"UnetGenerator needs a power-of-two image size >= 8, got {image_size}")
        widths = [ngf * min(2**i, 8) for i in range(n_down)]  # encoder output channels, outside in
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        for i in range(n_down):
            c_in = in_channels if i == 0 else widths[i - 1]
            layers = [] if i == 0 else [nn.LeakyReLU(0.2, True)]
            has_norm = 0 < i < n_down - 1
            layers.append(nn.Conv2d(c_in, widths[i], 4, stride=2, padding=1, bias=False))
            layers += [_norm(widths[i], affine_norm)] if has_norm else []
            self.down.append(nn.Sequential(*layers))
        for i in reversed(range(n_down)):
            c_in = widths[i] if i == n_down - 1 else 2 * widths[i]  # the innermost level has no skip to concatenate
            c_out = out_channels if i == 0 else widths[i - 1]
            layers = [nn.ReLU(True), nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=i == 0)]
            if i == 0:
                layers += [nn.Tanh()] if tanh else []
            else:
                layers.append(_norm(c_out, affine_norm))
                if dropout and 4 <= i <= n_down - 2:
                    layers.append(nn.Dropout(0.5))
            self.up.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[0](skips.pop())
        for block in self.up[1:]:
            x = block(torch.cat([skips.pop(), x], dim=1))
        return x


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN (n_layers = 3): C64 (no norm) - C128 - C256 - C512 (stride 1) - 1 channel map.

    Args:
        in_channels: 1 for CycleGAN (an image); 2 for pix2pix (source and image concatenated).
        affine_norm: Learned scale and shift in the norms (pix2pix's BatchNorm at batch 1, `_norm`).
    """

    def __init__(self, in_channels: int = 1, ndf: int = 64, n_layers: int = 3, affine_norm: bool = False):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1), _norm(ndf * mult, affine_norm),
                       nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def init_normal(module: nn.Module, std: float = 0.02) -> nn.Module:
    """Reference init: conv weights ~ N(0, std), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module
