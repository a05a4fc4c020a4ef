"""ShapesDetector on shapes-world-like images drawn here with PIL (independent of jf_lightning/shapes/world.py)."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from jf_lightning.metrics.geneval import Detector
from jf_lightning.shapes.detector import SHAPES_PALETTE, ShapesDetector

CLASSES = ("circle", "square", "triangle")


def random_scene(rng, n):
    """n shapes (class, colour, (x0, y0, side)) in fractions of the side, boxes >= 0.06 apart."""
    shapes = []
    while len(shapes) < n:
        side = rng.uniform(0.18, 0.30)
        x0, y0 = rng.uniform(0.02, 0.98 - side, 2)
        if all(
            x0 > a + s + 0.06 or a > x0 + side + 0.06 or y0 > b + s + 0.06 or b > y0 + side + 0.06
            for _, _, (a, b, s) in shapes
        ):
            shapes.append((str(rng.choice(CLASSES)), str(rng.choice(list(SHAPES_PALETTE))), (x0, y0, side)))
    return shapes


def draw(shapes, size, supersample=1):
    """White image with the shapes; supersample > 1 draws larger and box-filters down (antialiased)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), "white")
    canvas = ImageDraw.Draw(image)
    for name, color, (x0, y0, side) in shapes:
        b = [round(x0 * big), round(y0 * big), round((x0 + side) * big) - 1, round((y0 + side) * big) - 1]
        fill = SHAPES_PALETTE[color]
        if name == "circle":
            canvas.ellipse(b, fill=fill)
        elif name == "square":
            canvas.rectangle(b, fill=fill)
        else:
            canvas.polygon([((b[0] + b[2]) / 2, b[1]), (b[2], b[3]), (b[0], b[3])], fill=fill)
    return image if supersample == 1 else image.resize((size, size), Image.Resampling.BOX)


def degrade(image, rng, sigma=10.0, blur=0.0):
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, (*image.size[::-1], 3))
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


def found(detections, threshold):
    return Counter((d.class_name, d.color) for d in detections if d.score > threshold)


def truth(shapes):
    return Counter((name, color) for name, color, _ in shapes)


@pytest.fixture(scope="module")
def detector():
    return ShapesDetector()


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("supersample", [1, 4], ids=["aliased", "antialiased"])
def test_exact_on_clean_images(detector, size, supersample):
    rng = np.random.default_rng(size + supersample)
    for _ in range(25):
        shapes = random_scene(rng, int(rng.integers(1, 5)))
        dets = detector.detect(draw(shapes, size, supersample))
        # every object above GenEval's counting threshold, nothing else detected at all
        assert found(dets, 0.9) == truth(shapes) == found(dets, 0.0), shapes
        for name, color, (x0, y0, side) in shapes:
            want = np.array([x0, y0, x0 + side, y0 + side]) * size
            boxes = [d.box for d in dets if (d.class_name, d.color) == (name, color)]
            # within about a pixel; a triangle's sub-pixel apex falls under the 50% contour
            assert min(np.abs(np.array(b) - want).max() for b in boxes) <= 1.25


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("blur", [0.0, 0.5], ids=["noise", "noise+blur"])
def test_robust_to_noise_and_slight_blur(detector, size, blur):
    rng = np.random.default_rng(7 * size + int(blur * 10))
    for _ in range(25):
        shapes = random_scene(rng, int(rng.integers(1, 5)))
        image = degrade(draw(shapes, size), rng, sigma=10.0, blur=blur * size / 32)
        assert found(detector.detect(image), 0.3) == truth(shapes), shapes


def test_no_detections_on_background_or_noise(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.full((64, 64, 3), 255, np.uint8)) == []
    assert detector.detect(degrade(Image.new("RGB", (32, 32), "white"), rng, sigma=10.0)) == []
    for size in (32, 64):
        uniform = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        coarse = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
        for image in (uniform, smooth):
            assert found(detector.detect(image), 0.3) == Counter()


def test_colours_off_the_palette_are_not_confident(detector):
    for fill in ((128, 128, 128), (255, 150, 200), (255, 140, 0)):  # grey, pink, orange
        image = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(image).rectangle([10, 10, 29, 29], fill=fill)
        assert found(detector.detect(image), 0.3) == Counter(), fill


def test_shapes_outside_the_world_are_not_confident(detector):
    image = Image.new("RGB", (64, 64), "white")
    canvas = ImageDraw.Draw(image)
    canvas.polygon([(10, 5), (40, 5), (25, 30)], fill=SHAPES_PALETTE["red"])  # downward triangle
    canvas.polygon([(30, 34), (45, 49), (30, 63), (15, 49)], fill=SHAPES_PALETTE["blue"])  # diamond
    canvas.ellipse([45, 5, 63, 14], fill=SHAPES_PALETTE["green"])  # flat ellipse
    assert found(detector.detect(image), 0.3) == Counter()


def touching_pair(rng):
    """Two shapes of one class and colour that touch or overlap by up to a tenth of their side, side by
    side, stacked, diagonal or offset by half a side; (shapes, arrangement). Aligned squares are left out:
    side by side they are a rectangle, for any detector."""
    while True:
        name, color = str(rng.choice(CLASSES)), str(rng.choice(list(SHAPES_PALETTE)))
        arrangement = str(rng.choice(["side", "stack", "diagonal", "step"]))
        if not (name == "square" and arrangement in ("side", "stack")):
            break
    dx, dy = {"side": (1, 0), "stack": (0, 1), "diagonal": (1, 1), "step": (1, 0.5)}[arrangement]
    side = rng.uniform(0.25, 0.4)
    offset = side * (1 - rng.uniform(0.0, 0.1))
    x0, y0 = rng.uniform(0.02, 0.98 - side - dx * offset), rng.uniform(0.02, 0.98 - side - dy * offset)
    return [(name, color, (x0, y0, side)), (name, color, (x0 + dx * offset, y0 + dy * offset, side))], arrangement


def test_touching_shapes_are_two_objects(detector):
    # a generator draws touching shapes that the world never does; GenEval's instance segmenter sees two
    rng = np.random.default_rng(3)
    detected, counted, misses = [], [], []
    for i in range(240):
        shapes, arrangement = touching_pair(rng)
        image = draw(shapes, size=(32, 64)[i % 2], supersample=(1, 4)[i // 2 % 2])
        dets = detector.detect(image)
        detected.append(found(dets, 0.3) == truth(shapes))  # GenEval's detection threshold
        if not detected[-1]:
            misses.append((arrangement, shapes[0][:2], found(dets, 0.3)))
        # Known limit: of two stacked triangles the upper keeps the lower one's apex tip (its pixels lie
        # nearer the upper core) and scores ~0.8, under the counting threshold. Measured: 0.17 counted.
        if (shapes[0][0], arrangement) != ("triangle", "stack"):
            counted.append(found(dets, 0.9) == truth(shapes))  # GenEval's counting threshold
    assert np.mean(detected) >= 0.98, misses  # measured 1.00
    assert np.mean(counted) >= 0.95  # measured 0.995


def test_merged_shapes_without_a_neck_stay_one_unknown_blob(detector):
    image = Image.new("RGB", (64, 64), "white")
    canvas = ImageDraw.Draw(image)
    canvas.rectangle([4, 4, 35, 19], fill=SHAPES_PALETTE["red"])  # two aligned squares: a rectangle
    canvas.rounded_rectangle([4, 30, 39, 47], radius=8, fill=SHAPES_PALETTE["blue"])  # a capsule
    canvas.ellipse([44, 8, 59, 40], fill=SHAPES_PALETTE["green"])  # an upright ellipse
    assert found(detector.detect(image), 0.3) == Counter()


def test_interface_inputs_and_options():
    detector = ShapesDetector()
    assert isinstance(detector, Detector) and detector.classes == CLASSES
    image = draw([("square", "blue", (0.3, 0.3, 0.25))], 64)
    as_uint8 = detector.detect(np.asarray(image))
    as_float = detector.detect(np.asarray(image, dtype=np.float32) / 255.0)
    assert [d.class_name for d in as_uint8] == [d.class_name for d in as_float] == ["square"]
    assert as_uint8[0].mask is None
    (with_mask,) = ShapesDetector(return_masks=True).detect(image)
    assert with_mask.mask.shape == (64, 64) and abs(int(with_mask.mask.sum()) - 16 * 16) <= 16
    # a custom palette renames the colours; a subset of classes is honoured
    custom = ShapesDetector(palette={"navy": SHAPES_PALETTE["blue"]}, classes=("circle", "square"))
    assert [(d.class_name, d.color) for d in custom.detect(image)] == [("square", "navy")]
    with pytest.raises(ValueError, match="hexagon"):
        ShapesDetector(classes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="too close to the white"):
        ShapesDetector(palette={"ivory": (250, 250, 240)})
    with pytest.raises(ValueError, match="H x W x 3"):
        detector.detect(np.zeros((8, 8)))
