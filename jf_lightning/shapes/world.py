"""The synthetic "shapes world": the embedded default dataset (pure Python, numpy and PIL).

Scenes hold 1 to 4 flat shapes (circle, square, upward triangle) in 6 palette colours on a white
background. Shapes never touch (at least one white pixel between them from 32 px up) and stay inside the
image, so a colour-segmentation + connected-components detector recovers every object exactly; pixels are
drawn without anti-aliasing, so every pixel is white or a palette colour.

This module holds scenes, their sampling and rendering, and per-patch labels; ``language.py`` turns a
scene into the three data kinds' texts, ``geneval_specs.py`` holds the GenEval-format prompt specs and
the ground-truth scene for each.

Coordinates are fractions of the image side, origin at the top left, y pointing down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 190),
    "black": (20, 20, 20),
}
COLOR_NAMES = tuple(COLORS)
BACKGROUND = (255, 255, 255)
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_SHAPES = 4
# Side of a shape's box by how many shapes share the image: a lone shape is drawn large, so that its
# class is plain at 32 px (to the generator learning it and to the detector scoring it); four still fit.
# (experiments/tiny.md has the measurements behind these sizes.)
SIZE_RANGES = {1: (0.30, 0.50), 2: (0.26, 0.42), 3: (0.22, 0.36), 4: (0.20, 0.32)}
# Boxes are kept GAP apart: 0.06 * 32 px > 1.9 px leaves at least one white pixel between shapes after
# rounding box edges to pixels, so shapes are separate connected components (8-connectivity) from 32 px up.
GAP = 0.06
BORDER = 0.02  # a shape's box stays this far from the image edge (detector boxes are never clipped)

PLACES = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class Shape:
    shape: str
    color: str
    center: tuple[float, float]
    """(cx, cy) in [0, 1] image coordinates."""
    size: float
    """Side of the shape's square bounding box, as a fraction of the image side."""

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in [0, 1] image coordinates."""
        (cx, cy), h = self.center, self.size / 2
        return (cx - h, cy - h, cx + h, cy + h)

    @property
    def place(self) -> str:
        """Named place of the centre in a 3x3 grid: "top left", "top", ..., "center", ..."bottom right"."""
        cx, cy = self.center
        col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
        row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
        return f"{row} {col}".strip() or "center"

    def phrase(self) -> str:
        """ "a red circle on the left", "a blue square at the top right", "a black triangle in the center"."""
        place = self.place
        prep = "in" if place == "center" else "on" if place in ("left", "right") else "at"
        return f"a {self.color} {self.shape} {prep} the {place}"


@dataclass
class Scene:
    shapes: list[Shape] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls([Shape(s["shape"], s["color"], tuple(s["center"]), s["size"]) for s in d["shapes"]])

    def of_class(self, shape: str) -> list[Shape]:
        return [s for s in self.shapes if s.shape == shape]


# ---------------------------------------------------------------------------------------------- sampling
def _apart(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    """Boxes (cx, cy, size) at least GAP apart along some axis (then the shapes cannot touch)."""
    half = (a[2] + b[2]) / 2
    return abs(a[0] - b[0]) - half >= GAP or abs(a[1] - b[1]) - half >= GAP


def _sample_layout(rng: np.random.Generator, n: int, tries: int = 100) -> list[tuple[float, float, float]]:
    """n non-touching boxes (cx, cy, size) inside the image, by rejection sampling; sizes drawn from
    ``SIZE_RANGES[n]``."""
    low, high = SIZE_RANGES[n]
    for _ in range(tries):
        boxes: list[tuple[float, float, float]] = []
        for size in np.round(rng.uniform(low, high, n), 4):
            lo, hi = BORDER + size / 2, 1 - BORDER - size / 2
            for _ in range(50):
                cx, cy = np.round(rng.uniform(lo, hi, 2), 4)
                box = (float(cx), float(cy), float(size))
                if lo <= cx <= hi and lo <= cy <= hi and all(_apart(box, b) for b in boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == n:
            return boxes
    raise RuntimeError(f"could not place {n} shapes without overlap")


def sample_scene(
    rng: np.random.Generator,
    n_shapes: int | None = None,
    constraints: Sequence[Mapping[str, str]] = (),
    accept: Callable[[Scene], bool] | None = None,
    max_tries: int = 1000,
) -> Scene:
    """A random scene of ``n_shapes`` shapes (default: uniform 1..4, at least ``len(constraints)``).

    ``constraints``: one dict per required object, with optional keys ``shape`` and ``color``; the
    remaining objects are free. ``accept``: a predicate the scene must satisfy (rejection sampling).
    The objects' order in the scene is shuffled.
    """
    constraints = list(constraints)
    if n_shapes is None:
        n_shapes = int(rng.integers(max(1, len(constraints)), MAX_SHAPES + 1))
    if not max(1, len(constraints)) <= n_shapes <= MAX_SHAPES:
        raise ValueError(
            f"n_shapes={n_shapes} must be in [max(1, {len(constraints)} constraints), {MAX_SHAPES}]"
        )
    for _ in range(max_tries):
        kinds = [
            (
                c.get("shape") or SHAPES[rng.integers(len(SHAPES))],
                c.get("color") or COLOR_NAMES[rng.integers(len(COLOR_NAMES))],
            )
            for c in constraints + [{}] * (n_shapes - len(constraints))
        ]
        boxes = _sample_layout(rng, n_shapes)
        shapes = [Shape(k[0], k[1], (b[0], b[1]), b[2]) for k, b in zip(kinds, boxes)]
        scene = Scene([shapes[i] for i in rng.permutation(n_shapes)])
        if accept is None or accept(scene):
            return scene
    raise RuntimeError("no scene satisfying the constraints was found")


# --------------------------------------------------------------------------------------------- rendering
def pixel_box(shape: Shape, size: int) -> tuple[int, int, int, int]:
    """Inclusive pixel box (x0, y0, x1, y1) the shape is drawn in at ``size`` x ``size`` pixels."""
    x0, y0, x1, y1 = (round(v * size) for v in shape.box)
    return (x0, y0, x1 - 1, y1 - 1)


def _draw_shape(draw: ImageDraw.ImageDraw, s: Shape, size: int, fill: Any) -> None:
    x0, y0, x1, y1 = pixel_box(s, size)
    if s.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif s.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif s.shape == "triangle":
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
    else:
        raise ValueError(f"unknown shape {s.shape!r}; expected one of {SHAPES}")


def render_scene(scene: Scene, size: int) -> Image.Image:
    """RGB image, white background, shapes in exact palette colours (no anti-aliasing)."""
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        _draw_shape(draw, s, size, COLORS[s.color])
    return image


PATCH_LABELS = 1 + len(SHAPES) * len(COLOR_NAMES)
"""Classes of :func:`patch_labels`: background, then every (shape, colour) pair."""


def patch_labels(scene: Scene, size: int, grid: int) -> np.ndarray:
    """(grid * grid,) int64 class of each patch of the scene drawn at ``size`` px, row-major: 0 for
    background, else ``1 + shape index * len(COLORS) + colour index`` of the shape covering most of the
    patch (at least a quarter of it). The dense target that teaches an encoder's patches which object
    they belong to (shapes/siglip_pretraining.py)."""
    if size % grid:
        raise ValueError(f"a {size} px image does not split into {grid} x {grid} patches")
    cell = size // grid
    # Shapes never overlap, so one drawing of shape numbers 1..n tells every pixel's shape.
    index = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(index)
    for number, s in enumerate(scene.shapes, start=1):
        _draw_shape(draw, s, size, number)
    pixels = np.asarray(index).reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid * grid, -1)
    cover = np.stack([(pixels == n).sum(axis=1) for n in range(len(scene.shapes) + 1)], axis=1)  # (P, 1 + n)
    cover[:, 0] = 0  # background never wins a patch a shape covers enough
    winner = cover.argmax(axis=1)  # (P,) shape number
    classes = np.array(
        [0] + [1 + SHAPES.index(s.shape) * len(COLOR_NAMES) + COLOR_NAMES.index(s.color) for s in scene.shapes]
    )
    return np.where(cover.max(axis=1) * 4 >= cell * cell, classes[winner], 0).astype(np.int64)
