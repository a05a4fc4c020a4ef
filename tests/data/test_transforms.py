import torch
from PIL import Image

from jf_lightning.data.transforms import PAD_GREY, gen_transform, und_transform

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
