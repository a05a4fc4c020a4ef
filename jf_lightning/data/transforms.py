"""Image preprocessing: PIL image -> float tensor (3, S, S) in [-1, 1].

The two tasks see images differently, as in the paper: understanding must see the whole picture (a
question may be about its corner), so it is resized on the long side and padded to a square;
generation must learn to fill the whole canvas, so it is resized on the short side and cropped.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode

PAD_GREY = 127
"""Pad colour of understanding images: the released image processor fills with int(0.5 * 255) = 127,
its mean colour, which normalises to (almost) 0."""


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 3, S, S) -> float in [-1, 1], the mean-0.5 / std-0.5 normalisation (one new
    tensor, scaled in place: a batch of 384 px images is tens of MB)."""
    return pixels.to(torch.float32).div_(127.5).sub_(1.0)


def und_transform(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resize the long side to ``image_size`` (bicubic, keep aspect) and pad to a centred square.

    Returns (3, image_size, image_size) float in [-1, 1].
    """
    return unit_range(und_square(image, image_size))


def und_square(image: Image.Image, image_size: int) -> torch.Tensor:
    """``und_transform`` before normalisation: (3, image_size, image_size) uint8 (4x less to build,
    stack and ship between processes; the packer normalises a whole batch at once)."""
    return F.pil_to_tensor(und_resize_and_pad(image, image_size))


def und_resize_and_pad(image: Image.Image, image_size: int) -> Image.Image:
    """``und_transform``'s geometry alone: the RGB square it normalises."""
    image = image.convert("RGB")
    width, height = image.size
    scale = image_size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != image.size:
        image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    # Centre the picture like the release's expand2square: offset (S - side) // 2 on the short axis.
    left, top = (image_size - new_w) // 2, (image_size - new_h) // 2
    padding = [left, top, image_size - new_w - left, image_size - new_h - top]
    return F.pad(image, padding, fill=PAD_GREY)


def gen_transform(image: Image.Image, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Resize the short side to ``image_size`` (bicubic) and crop a random square.

    The crop offset comes from ``generator`` only, so a batch built twice from the same seed is the
    same. Returns (3, image_size, image_size) float in [-1, 1].
    """
    return unit_range(gen_square(image, image_size, generator))


def gen_square(image: Image.Image, image_size: int, generator: torch.Generator) -> torch.Tensor:
    """``gen_transform`` before normalisation: (3, image_size, image_size) uint8."""
    image = image.convert("RGB")
    width, height = image.size
    scale = image_size / min(width, height)
    # Round, but never below image_size: the crop must fit.
    new_w, new_h = max(image_size, round(width * scale)), max(image_size, round(height * scale))
    if (new_w, new_h) != image.size:
        image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    top = int(torch.randint(0, new_h - image_size + 1, (1,), generator=generator))
    left = int(torch.randint(0, new_w - image_size + 1, (1,), generator=generator))
    return F.pil_to_tensor(F.crop(image, top, left, image_size, image_size))
