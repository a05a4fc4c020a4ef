"""Object detectors behind GenEval's rules: a protocol, and a classical detector for the shapes world.

GenEval scores real images with Mask2Former boxes and CLIP colour labels; any object with
``classes`` and ``detect(image) -> list[Detection]`` plugs into ``metrics.geneval`` the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

# scipy is installed with clean-fid and mlflow (both project dependencies), so labelling and
# per-component statistics come from scipy.ndimage rather than a hand-written union-find.
from scipy import ndimage

from jf_lightning.metrics.geneval import Detection

SHAPES_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "yellow": (240, 200, 0),
    "purple": (140, 50, 190),
    "black": (20, 20, 20),
}
SHAPES_CLASSES = ("circle", "square", "triangle")

# Shape prototypes in feature space, for shapes whose bounding box is square:
#   fill     = area / bbox area: disc pi/4, square 1, upward triangle 1/2
#   centroid = centroid height within the bbox, 0 top .. 1 bottom: 1/2, 1/2, 2/3 (mass sits low)
#   corners  = filled fraction of the four bbox corner cells (each a quarter of the side):
#              disc ~0.27, square 1, upward triangle (0 + 0 + 0.75 + 0.75) / 4
# The values are those measured on shapes 6-19 px wide, drawn aliased or antialiased, segmented at
# the 50% contour: pixelation fattens triangles (fill 0.54-0.61) and rounds squares' corners.
_PROTOTYPES = {
    "circle": (0.77, 0.50, 0.27),
    "square": (0.985, 0.50, 0.95),
    "triangle": (0.57, 0.645, 0.43),
}
# per-feature unit: about half the gap between the closest prototypes on that feature, 2-4 times the
# spread measured on ground-truth shapes at 32 px
_FEATURE_SCALE = np.array([0.1, 0.07, 0.25])


@runtime_checkable
class Detector(Protocol):
    """Anything that finds GenEval objects in an RGB image."""

    classes: Sequence[str]

    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        """Detections in the pixel coordinates of ``image`` (PIL image or H x W x 3 uint8 array)."""
        ...


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 from a PIL image, or from an array: uint8, or float in [0, 1]; alpha dropped."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an H x W x 3 image array, got shape {arr.shape}")
    arr = arr[..., :3]
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(arr, 0.0, 1.0) * 255.0)
    return arr.astype(np.uint8)


class ShapesDetector:
    """Colour segmentation + connected components + fill-ratio shape classes, for the shapes world.

    Each pixel is modelled as a palette colour partly mixed with the white background (edges of
    blurred or antialiased shapes are such mixtures): per colour, the pixel's position ``alpha``
    along the segment white -> colour and its distance from that segment. It belongs to the colour
    with the nearest segment when that distance is under ``max_color_distance`` and ``alpha`` is over
    ``alpha_threshold`` (a half-covered pixel: the 50% contour keeps a blurred shape's true outline).
    A grey blur edge of a black shape thus stays black instead of turning purple, as a nearest-colour
    rule would have it. Components of each colour, larger than ``min_area_fraction`` of the image, are
    classified by their nearest shape prototype (fill ratio, centroid height, filled corners).

    ``score`` multiplies three confidences in [0, 1]: shape fit (a Gaussian of the distance to the
    prototype), colour fit (how close the component's pixels lie to their colour's segment) and
    squareness of the box (every shapes-world class has a square box).
    """

    def __init__(
        self,
        palette: Mapping[str, Sequence[int]] | None = None,
        classes: Sequence[str] = SHAPES_CLASSES,
        work_size: int = 128,
        alpha_threshold: float = 0.5,
        max_color_distance: float = 90.0,
        min_area_fraction: float = 0.004,
        denoise: bool = True,
        return_masks: bool = False,
    ):
        unknown = set(classes) - set(_PROTOTYPES)
        if unknown:
            raise ValueError(f"ShapesDetector knows {sorted(_PROTOTYPES)}, not {sorted(unknown)}")
        self.palette = dict(SHAPES_PALETTE if palette is None else palette)
        self.classes = tuple(classes)
        self.work_size = work_size
        self.alpha_threshold = alpha_threshold
        self.max_color_distance = max_color_distance
        self.min_area_fraction = min_area_fraction
        self.denoise = denoise
        self.return_masks = return_masks
        self._color_names = list(self.palette)
        self._colors = np.array([self.palette[c] for c in self._color_names], dtype=np.float32)  # (C, 3)
        self._prototypes = np.array([_PROTOTYPES[c] for c in self.classes])  # (K, 3)

    def segment(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per pixel: palette index (-1 = background) and distance to that colour's segment; (H, W) each."""
        white = np.float32(255.0)
        v = rgb.astype(np.float32) - white  # (H, W, 3), background ~ 0
        d = self._colors - white  # (C, 3), white -> colour
        alpha = np.clip(np.einsum("hwk,ck->hwc", v, d) / np.sum(d * d, axis=1), 0.0, 1.0)  # (H, W, C)
        residual = np.linalg.norm(v[:, :, None, :] - alpha[..., None] * d, axis=-1)  # (H, W, C)
        best = residual.argmin(axis=-1)  # (H, W)
        dist = np.take_along_axis(residual, best[..., None], axis=-1)[..., 0]
        best_alpha = np.take_along_axis(alpha, best[..., None], axis=-1)[..., 0]
        fg = (best_alpha >= self.alpha_threshold) & (dist <= self.max_color_distance)
        return np.where(fg, best, -1), dist

    def _prepare(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, float]:
        """Resample to ``work_size`` on the long side (bilinear up, antialiased down), lightly denoised."""
        rgb = to_rgb_array(image)
        h, w = rgb.shape[:2]
        scale = self.work_size / max(h, w)
        if scale != 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            resample = Image.Resampling.BILINEAR if scale > 1 else Image.Resampling.BOX
            rgb = np.asarray(Image.fromarray(rgb).resize(size, resample))
        if self.denoise:
            # a median over ~1/40 of the side removes speckle but keeps corners of the smallest shapes
            k = max(3, (self.work_size // 40) | 1)
            rgb = ndimage.median_filter(rgb, size=(k, k, 1), mode="nearest")
        return rgb, scale

    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        rgb, scale = self._prepare(image)
        labels, dist = self.segment(rgb)
        min_area = self.min_area_fraction * labels.size
        detections = []
        for ci, color in enumerate(self._color_names):
            components, n = ndimage.label(labels == ci)
            for idx, sl in enumerate(ndimage.find_objects(components), start=1):
                comp = components[sl] == idx  # (h, w) inside the component's box
                area = int(comp.sum())
                if area < min_area:
                    continue
                det = self._classify(comp, sl, float(dist[sl][comp].mean()), color, scale)
                if det is not None:
                    detections.append(det)
        if self.return_masks:
            detections = [self._with_mask(d, labels, scale) for d in detections]
        return sorted(detections, key=lambda d: -d.score)

    def shape_features(self, comp: np.ndarray) -> np.ndarray:
        """(fill, centroid height, corner fill) of a boolean component cropped to its bounding box."""
        h, w = comp.shape
        ys = np.nonzero(comp)[0]
        fill = comp.mean()
        centroid = (ys.mean() + 0.5) / h
        ch, cw = max(1, round(h / 4)), max(1, round(w / 4))
        corners = np.mean(
            [comp[:ch, :cw].mean(), comp[:ch, -cw:].mean(), comp[-ch:, :cw].mean(), comp[-ch:, -cw:].mean()]
        )
        rows = comp.sum(axis=1)  # (h,) widths
        third = max(1, h // 3)
        taper = rows[:third].mean() / max(rows[-third:].mean(), 1e-6)
        return np.array([fill, centroid, corners, taper])

    def _classify(self, comp, sl, mean_dist, color, scale) -> Detection | None:
        feats = self.shape_features(comp)
        z = (feats[:3] - self._prototypes) / _FEATURE_SCALE  # (K, 3)
        d2 = np.sum(z * z, axis=1)  # (K,)
        k = int(d2.argmin())
        # ambiguity (a blob midway between two prototypes gets 0.5) times absolute fit (lenient:
        # ground truth at 32 px lies up to d2 ~ 1.5 from its prototype)
        ambiguity = 1.0 / np.sum(np.exp(d2[k] - d2))
        shape_conf = float(ambiguity * np.exp(-d2[k] / 50.0))
        # blur-free palette pixels sit on their segment (distance ~0; noise of sigma adds ~1.7 sigma)
        color_conf = float(np.clip(1.0 - (mean_dist - 30.0) / 60.0, 0.0, 1.0))
        h, w = comp.shape
        elong = max(h, w) / min(h, w)
        aspect_conf = float(np.clip(1.0 - (elong - 1.3) / 0.7, 0.0, 1.0))
        score = shape_conf * color_conf * aspect_conf
        if score <= 0.0:
            return None
        y0, x0 = sl[0].start / scale, sl[1].start / scale
        y1, x1 = sl[0].stop / scale, sl[1].stop / scale
        return Detection(self.classes[k], (x0, y0, x1, y1), score, color)

    def _with_mask(self, det: Detection, labels: np.ndarray, scale: float) -> Detection:
        raise NotImplementedError
