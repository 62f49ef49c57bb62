"""U-Nets from diffusers, built from config with no pretrained weights."""
from __future__ import annotations


def make_unet(image_size: int, in_channels: int = 1, out_channels: int = 1, base_channels: int = 32,
              channel_mults: tuple[int, ...] = (1, 2, 2), layers_per_block: int = 1, attention: bool = False,
              num_class_embeds: int | None = None, norm_groups: int = 8, class_embed_type: str | None = None,
              scale_shift: bool = False):
    """A diffusers `UNet2DModel`; with `num_class_embeds` the class embedding is added to the time embedding.

    Args:
        image_size: Input side (must be divisible by 2^(len(channel_mults)-1)).
        in_channels, out_channels: Channels of input and output.
        base_channels: Channels at full resolution; level i has base_channels * channel_mults[i].
        channel_mults: Per-level multipliers.
        layers_per_block: ResNet blocks per level.
        attention: Self-attention at the two lowest resolutions (as ADM does at 16x16 and 8x8).
        num_class_embeds: Number of class labels (incl. a null label for guidance), or None.
        norm_groups: GroupNorm groups.
        class_embed_type: None, or "identity": the caller passes an embedding of the time-embedding width as
            `class_labels` (a continuous condition, added to the time embedding).
        scale_shift: Feed the (time + condition) embedding to every ResNet block as a scale and shift of its
            normalised features (diffusers' "scale_shift", FiLM / AdaGN) instead of adding it.
    """
    from diffusers import UNet2DModel

    n = len(channel_mults)
    if image_size % (2 ** (n - 1)):
        raise ValueError(f"image_size {image_size} is not divisible by 2^{n - 1} (channel_mults={channel_mults})")
    down = tuple("AttnDownBlock2D" if attention and i >= n - 2 else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if attention and i < 2 else "UpBlock2D" for i in range(n))
    return UNet2DModel(sample_size=image_size, in_channels=in_channels, out_channels=out_channels,
                       block_out_channels=tuple(base_channels * m for m in channel_mults),
                       layers_per_block=layers_per_block, down_block_types=down, up_block_types=up,
                       norm_num_groups=norm_groups, num_class_embeds=num_class_embeds,
                       class_embed_type=class_embed_type,
                       resnet_time_scale_shift="scale_shift" if scale_shift else "default",
                       attention_head_dim=8 if attention else None)
