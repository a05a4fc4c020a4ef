"""GenEval's detector for real images: Mask2Former instance segmentation on COCO through transformers,
with CLIP colours.

GenEval itself runs mmdetection's Mask2Former Swin-S (``mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco``);
the transformers port of that architecture and training set (``facebook/mask2former-swin-small-coco-instance``)
is the default here. Detections are what both libraries return for an instance model: per query and
class, score = class probability x mean mask probability inside the mask, the top ``num_queries``
(query, class) pairs kept, each with its binary mask and the mask's bounding box. GenEval's rules then
threshold, cap and sort them (:mod:`jf_lightning.metrics.geneval`); nothing is thresholded here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from jf_lightning.metrics.clip_colors import DEFAULT_CLIP, ClipColorClassifier
from jf_lightning.metrics.geneval import Detection, Detector

DEFAULT_MASK2FORMER = "facebook/mask2former-swin-small-coco-instance"
GENEVAL_OBJECTS = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
"""GenEval's object names (``evaluation/object_names.txt``): COCO's 80 instance classes in COCO's order,
some renamed ("tv", "computer mouse", "tv remote", "computer keyboard")."""


def geneval_names(id2label: dict[int, str]) -> list[str]:
    """A model's class labels as GenEval's names: a label that is one already stays; otherwise an 80-class
    (COCO) model's label ``i`` is GenEval's ``i``-th name (COCO's "mouse" is GenEval's "computer mouse")."""
    labels = [str(id2label[i]).lower().replace("_", " ").replace("-", " ") for i in range(len(id2label))]
    if len(labels) == len(GENEVAL_OBJECTS):
        return [label if label in GENEVAL_OBJECTS else GENEVAL_OBJECTS[i] for i, label in enumerate(labels)]
    return labels


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of a boolean H x W mask, ends exclusive (mmdetection's ``mask2bbox``)."""
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


class Mask2FormerDetector(Detector):
    """A transformers Mask2Former instance-segmentation model (hub id or local directory) with a CLIP
    colour classifier; ``colors=None`` leaves colours unclassified (every colour clause then fails)."""

    def __init__(
        self,
        model: str = DEFAULT_MASK2FORMER,
        colors: str | ClipColorClassifier | None = DEFAULT_CLIP,
        device: str | torch.device = "cpu",
    ):
        # The models load on first use, not here: a config builds its callbacks (and this detector)
        # before the CLI checks the run's data, whose missing shards should be the error a user sees.
        self.source, self.device = model, torch.device(device)
        self._colors = colors
        self._model = None

    def load(self) -> Mask2FormerDetector:
        """Load the segmenter, its processor and the colour model (once)."""
        if self._model is not None:
            return self
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        try:
            self._model = Mask2FormerForUniversalSegmentation.from_pretrained(self.source).eval().to(self.device)
            self.processor = AutoImageProcessor.from_pretrained(self.source)
        except OSError as err:
            raise FileNotFoundError(
                f"Mask2Former model {self.source!r} could not be loaded ({str(err).splitlines()[0]}): give a "
                f"local directory holding a transformers Mask2Former (config.json, weights, "
                f"preprocessor_config.json), e.g. a download of {DEFAULT_MASK2FORMER}"
            ) from None
        self._classes = geneval_names(self._model.config.id2label)
        if isinstance(self._colors, str):
            self._colors = ClipColorClassifier(self._colors, self.device)
        return self

    @property
    def model(self):
        return self.load()._model

    @property
    def classes(self) -> list[str]:
        """GenEval's object name of each of the model's class ids."""
        return self.load()._classes

    @property
    def colors(self) -> ClipColorClassifier | None:
        return self.load()._colors

    def to(self, device: str | torch.device) -> Mask2FormerDetector:
        """Move the segmenter and the colour model (a training rank's GPU)."""
        self.device = torch.device(device)
        if self._model is not None:
            self._model.to(self.device)
            if self._colors is not None and not isinstance(self._colors, str):
                self._colors.to(self.device)
        return self

    @torch.no_grad()
    def detect_batch(self, images: list[Image.Image | np.ndarray]) -> list[list[Detection]]:
        """Detections (with masks, colour unset) of each image, in its own pixel coordinates."""
        rgb = [
            np.array(im.convert("RGB") if isinstance(im, Image.Image) else im) for im in images
        ]  # writable copies
        self.load()
        inputs = self.processor(images=rgb, return_tensors="pt")
        out = self.model(pixel_values=inputs["pixel_values"].to(self.device))
        sizes = [im.shape[:2] for im in rgb]
        results = self.processor.post_process_instance_segmentation(
            out, threshold=0.0, target_sizes=sizes, return_binary_maps=True
        )
        detections = []
        for result, (h, w) in zip(results, sizes, strict=True):
            masks = result["segmentation"]  # (n, H, W) binary, or a (H, W) map of -1 when none was found
            found = []
            for k, info in enumerate(result["segments_info"]):
                mask = masks[k].cpu().numpy().astype(bool)
                found.append(
                    Detection(self.classes[info["label_id"]], mask_box(mask), info["score"], None, mask)
                )
            detections.append(found)
        return detections

    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        return self.detect_batch([image])[0]

    def colorize(self, image: Image.Image | np.ndarray, detections: list[Detection]) -> list[Detection]:
        if self.colors is None:
            return detections
        colors = self.colors.classify(image, detections)
        return [replace(d, color=c) for d, c in zip(detections, colors, strict=True)]
