"""Image preprocessing: PIL image -> (3, S, S) pixels.

The two tasks see images differently, as in the paper: understanding must see the whole picture (a
question may be about its corner), so it is resized on the long side and padded to a square;
generation must learn to fill the whole canvas, so it is resized on the short side and cropped.

Two implementations of the same geometry:
- the training loader's (``und_square``, ``gen_square``): uint8 tensors, resized by torch's uint8
  bicubic antialias kernel on channels-last pixels, 6x faster than PIL's bicubic (0.48 vs 2.8 ms for
  512 x 384 -> 384 x 288, one core; ``benchmarks/data_throughput.py`` times the whole loader),
  within 2 levels of it on 0.2% of a photo's pixels and equal elsewhere. The squares come back as (3, S, S) views of (S, S, 3) memory, so a batch is
  stacked with plain copies; ``unit_range`` hands the model contiguous floats.
- the released image processor's (``und_transform``): PIL's bicubic, the pixels the released model
  was trained and is evaluated on; inference uses it.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torchvision.transforms.v2 import InterpolationMode

PAD_GREY = 127
"""Pad colour of understanding images: the released image processor fills with int(0.5 * 255) = 127,
its mean colour, which normalises to (almost) 0."""


def unit_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., 3, S, S), any memory layout -> contiguous float in [-1, 1], the mean-0.5 /
    std-0.5 normalisation (scaled in place: a batch of 384 px images is tens of MB). The layout is made
    contiguous on the uint8 pixels, a quarter of the bytes: 3x faster on a CPU than a cast that
    transposes."""
    return pixels.contiguous().to(torch.float32).div_(127.5).sub_(1.0)


def und_size(width: int, height: int, image_size: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): the long side resized to ``image_size`` (aspect kept), centred like
    the release's expand2square (offset (S - side) // 2 on the short axis)."""
    scale = image_size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return new_w, new_h, (image_size - new_w) // 2, (image_size - new_h) // 2


def gen_size(width: int, height: int, image_size: int) -> tuple[int, int]:
    """(new_w, new_h): the short side resized to ``image_size``, rounded but never below it (the
    square crop must fit)."""
    scale = image_size / min(width, height)
    return max(image_size, round(width * scale)), max(image_size, round(height * scale))


# -- the training loader's tensor path ---------------------------------------------------------------


def hwc_pixels(image: Image.Image) -> torch.Tensor:
    """PIL image -> (H, W, 3) uint8 RGB tensor (one copy, PIL's own layout)."""
    return torch.from_numpy(np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8))


def resize_hwc(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (height, width, 3) uint8, bicubic with antialiasing (PIL's filter, computed
    by torch's channels-last uint8 kernel)."""
    if pixels.shape[:2] == (height, width):
        return pixels
    chw = pixels.permute(2, 0, 1).unsqueeze(0)  # (1, 3, H, W) viewing channels-last memory
    out = F.resize(chw, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out[0].permute(1, 2, 0)  # (height, width, 3)


def und_square(image: Image.Image, image_size: int) -> torch.Tensor:
    """Resize the long side to ``image_size`` (bicubic, keep aspect) and pad to a centred grey square.

    Returns (3, image_size, image_size) uint8 viewing (S, S, 3) memory.
    """
    pixels = hwc_pixels(image)
    new_w, new_h, left, top = und_size(pixels.shape[1], pixels.shape[0], image_size)
    square = torch.full((image_size, image_size, 3), PAD_GREY, dtype=torch.uint8)  # (S, S, 3)
    square[top : top + new_h, left : left + new_w] = resize_hwc(pixels, new_w, new_h)
    return square.permute(2, 0, 1)


def gen_square(image: Image.Image, image_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """Resize the short side to ``image_size`` (bicubic) and crop a square: at a random offset drawn
    from ``generator`` only (a batch built twice from the same seed is the same), or at the centre
    offsets ``(new - S) // 2`` with ``generator=None`` (pre-encoding's fixed crop).

    Returns (3, image_size, image_size) uint8 viewing (S, S, 3) memory.
    """
    pixels = hwc_pixels(image)
    new_w, new_h = gen_size(pixels.shape[1], pixels.shape[0], image_size)
    pixels = resize_hwc(pixels, new_w, new_h)
    if generator is None:
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    else:
        top = int(torch.randint(0, new_h - image_size + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_w - image_size + 1, (1,), generator=generator))
    return pixels[top : top + image_size, left : left + image_size].contiguous().permute(2, 0, 1)


def gen_transform(image: Image.Image, image_size: int, generator: torch.Generator | None) -> torch.Tensor:
    """``gen_square`` normalised: (3, image_size, image_size) float in [-1, 1]."""
    return unit_range(gen_square(image, image_size, generator))


def stack_squares(squares: list[torch.Tensor]) -> torch.Tensor:
    """(3, S, S) uint8 squares -> (N, 3, S, S) viewing (N, S, S, 3) memory: copies of the squares'
    own (S, S, 3) layout, not a transposition each."""
    return torch.stack([s.permute(1, 2, 0) for s in squares]).permute(0, 3, 1, 2)


# -- the released image processor's PIL path ---------------------------------------------------------


def und_transform(image: Image.Image, image_size: int) -> torch.Tensor:
    """``und_square``'s geometry through PIL's bicubic, as the released image processor computes it.

    Returns (3, image_size, image_size) float in [-1, 1].
    """
    return unit_range(F.pil_to_tensor(und_resize_and_pad(image, image_size)))


def und_resize_and_pad(image: Image.Image, image_size: int) -> Image.Image:
    """``und_transform``'s geometry alone: the RGB square it normalises."""
    image = image.convert("RGB")
    new_w, new_h, left, top = und_size(*image.size, image_size)
    if (new_w, new_h) != image.size:
        image = F.resize(image, [new_h, new_w], interpolation=InterpolationMode.BICUBIC, antialias=True)
    padding = [left, top, image_size - new_w - left, image_size - new_h - top]
    return F.pad(image, padding, fill=PAD_GREY)
