import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image

from jf_lightning.data.transforms import (
    PAD_GREY,
    gen_square,
    gen_transform,
    stack_squares,
    und_resize_and_pad,
    und_square,
    und_transform,
    unit_range,
)

GREY = PAD_GREY / 127.5 - 1.0
RED = torch.tensor([1.0, -1.0, -1.0])


def test_und_wide_image_is_resized_on_the_long_side_and_padded_centred():
    out = und_transform(Image.new("RGB", (40, 20), (255, 0, 0)), 16)  # -> 16 x 8, padded 4 + 4 rows
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out[:, :4], torch.full_like(out[:, :4], GREY))
    assert torch.allclose(out[:, 12:], torch.full_like(out[:, 12:], GREY))
    assert torch.allclose(out[:, 4:12].permute(1, 2, 0), RED.expand(8, 16, 3), atol=1e-6)


def test_und_tall_image_pads_columns():
    out = und_transform(Image.new("RGB", (10, 40), (255, 0, 0)), 16)  # -> 4 x 16, columns 6..9 red
    assert torch.allclose(out[:, :, :6], torch.full_like(out[:, :, :6], GREY))
    assert torch.allclose(out[:, :, 10:], torch.full_like(out[:, :, 10:], GREY))
    assert torch.allclose(out[:, :, 6:10].permute(1, 2, 0), RED.expand(16, 4, 3), atol=1e-6)


def test_und_handles_grey_and_alpha_modes():
    assert und_transform(Image.new("L", (8, 8), 255), 8).shape == (3, 8, 8)
    assert und_transform(Image.new("RGBA", (8, 4), (0, 0, 0, 0)), 8).shape == (3, 8, 8)


def _ramp(width: int, height: int) -> Image.Image:
    """Each column a different grey value, so crops at different offsets differ."""
    row = bytes(int(255 * x / (width - 1)) for x in range(width))
    return Image.frombytes("L", (width, height), row * height)


def test_gen_resizes_the_short_side_and_crops_a_seeded_square():
    image = _ramp(64, 16)  # short side 16 -> unchanged size, crop offset along x only
    crops = [gen_transform(image, 16, torch.Generator().manual_seed(s)) for s in range(8)]
    assert all(c.shape == (3, 16, 16) for c in crops)
    again = gen_transform(image, 16, torch.Generator().manual_seed(3))
    assert torch.equal(again, crops[3])
    assert len({round(float(c[0, 0, 0]), 4) for c in crops}) > 1  # the offset really varies
    full = torch.tensor(list(image.getdata()), dtype=torch.float32).view(16, 64) / 127.5 - 1
    for crop in crops:  # every crop is a window of the resized image, no rescaling inside
        left = int(torch.argmin((full[0] - crop[0, 0, 0]).abs()))
        assert torch.allclose(crop[0], full[:, left : left + 16], atol=1e-6)


def test_gen_upscales_a_small_image_to_cover_the_square():
    out = gen_transform(Image.new("RGB", (12, 6), (0, 0, 255)), 16, torch.Generator().manual_seed(0))
    assert out.shape == (3, 16, 16)
    assert torch.allclose(out[2], torch.ones(16, 16), atol=1e-6)


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields with grain: the kind of picture a resize filter is judged on."""
    rng = np.random.default_rng(seed)
    fields = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    grain = rng.normal(0, 12, (height, width, 3))  # (H, W, 3)
    return Image.fromarray(np.uint8(np.clip(np.asarray(fields, dtype=np.float32) + grain, 0, 255)))


@pytest.mark.parametrize("size", [(40, 20), (10, 40), (16, 16), (7, 3)])
def test_the_loader_squares_have_the_released_geometry(size):
    image = Image.new("RGB", size, (200, 30, 90))  # one colour: both filters give it exactly
    assert torch.equal(unit_range(und_square(image, 16)), und_transform(image, 16))


def test_the_loader_resize_stays_within_two_levels_of_pils():
    for seed, size in enumerate([(512, 384), (384, 512), (300, 200)]):
        image = _photo(*size, seed=seed)
        ours = und_square(image, 128).int()  # (3, S, S)
        released = F.pil_to_tensor(und_resize_and_pad(image, 128)).int()
        diff = (ours - released).abs()
        assert diff.max() <= 2 and (diff > 0).float().mean() < 0.01


def test_squares_are_views_of_channels_last_memory_and_stack_to_the_same_values():
    image = _photo(60, 40)
    squares = [und_square(image, 32), gen_square(image, 32, torch.Generator().manual_seed(1))]
    for square in squares:
        assert square.shape == (3, 32, 32) and square.dtype == torch.uint8
        assert square.permute(1, 2, 0).is_contiguous()  # (S, S, 3) memory
    batch = stack_squares(squares)  # (2, 3, S, S)
    assert torch.equal(batch, torch.stack(squares))
    assert batch.is_contiguous(memory_format=torch.channels_last)
    floats = unit_range(batch)
    assert floats.is_contiguous() and torch.equal(floats, torch.stack([unit_range(s) for s in squares]))


def test_gen_square_without_a_generator_crops_the_centre():
    image = _ramp(64, 16)
    centre = gen_square(image, 16, None)
    full = F.pil_to_tensor(image.convert("RGB"))  # (3, 16, 64): no resize, short side is 16
    assert torch.equal(centre, full[:, :, 24:40])


def test_an_image_already_at_the_size_is_copied_exactly_by_both_paths():
    image = _photo(32, 32)  # the shapes world renders at the model's size: no resize anywhere
    assert torch.equal(unit_range(und_square(image, 32)), und_transform(image, 32))
    assert torch.equal(gen_square(image, 32, torch.Generator().manual_seed(0)), F.pil_to_tensor(image))
