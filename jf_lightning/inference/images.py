"""Images as data: float pixels -> uint8, PIL conversion, resizing and captioned grids."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.utils
from PIL import Image, ImageDraw, ImageFont


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float in [-1, 1] -> (N, 3, H, W) uint8 on the CPU."""
    return ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(N, 3, H, W) uint8 -> N RGB PIL images."""
    return [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images]


def from_pil(images: Sequence[Image.Image]) -> torch.Tensor:
    """N RGB PIL images of one size -> (N, 3, H, W) uint8."""
    return torch.stack(
        [torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1) for im in images]
    )


def resize_images(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """(N, 3, H, W) uint8 -> (N, 3, size, size) uint8 (bilinear, antialiased); None keeps them."""
    if size is None or images.shape[-1] == size == images.shape[-2]:
        return images
    out = F.interpolate(
        images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def caption_tile(image: torch.Tensor, caption: str, min_size: int = 128, lines: int = 3) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, H' + band, W') uint8: upscaled (nearest: a 32 px sample stays crisp) to
    at least ``min_size`` wide, with the caption written in a white band underneath."""
    scale = max(1, -(-min_size // image.shape[-1]))
    tile = to_pil(image[None].repeat_interleave(scale, -1).repeat_interleave(scale, -2))[0]
    font = ImageFont.load_default()
    line_h = 11  # the default bitmap font is about 11 px tall
    width_chars = max(8, tile.width // 6)  # and about 6 px per character
    text = textwrap.wrap(caption, width_chars)[:lines]
    canvas = Image.new("RGB", (tile.width, tile.height + 4 + line_h * lines), "white")
    canvas.paste(tile, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(text):
        draw.text((2, tile.height + 2 + i * line_h), line, fill="black", font=font)
    return from_pil([canvas])[0]


def make_grid(
    images: torch.Tensor, captions: Sequence[str] | None = None, nrow: int = 8, padding: int = 2
) -> Image.Image:
    """(N, 3, H, W) uint8 -> one PIL grid, ``nrow`` images per row, optionally captioned."""
    if captions is not None:
        images = torch.stack([caption_tile(img, cap) for img, cap in zip(images, captions, strict=True)])
    grid = torchvision.utils.make_grid(images, nrow=nrow, padding=padding, pad_value=255)  # (3, H*, W*)
    return to_pil(grid[None])[0]
