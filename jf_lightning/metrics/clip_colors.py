"""GenEval's colour rule: CLIP zero-shot classification of a detected object over GenEval's 10 colours.

As GenEval's ``color_classification`` does it (djghosh13/geneval ``evaluation/evaluate_images.py``,
with clip_benchmark's ``zero_shot_classifier``): the object's mask is pasted over a flat ``#999``
background, the picture is cropped to the object's box, and CLIP picks the colour whose three
templates ("a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a
{color} object"; unit text embeddings averaged and renormalised) lie nearest the crop's embedding.
GenEval runs open_clip's ``ViT-L-14`` with OpenAI's weights; here the same weights come through
transformers (``openai/clip-vit-large-patch14``) and its own preprocessing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from jf_lightning.metrics.geneval import COLOR_TEMPLATES, GENEVAL_COLORS, Detection

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def object_crop(image: Image.Image, detection: Detection, background: str = "#999") -> Image.Image:
    """The object alone: its mask (when the detection has one) over ``background``, cropped to its box."""
    image = image.convert("RGB")
    if detection.mask is not None:
        if detection.mask.shape != (image.height, image.width):
            raise ValueError(f"mask {detection.mask.shape} does not match the image {image.size[::-1]}")
        blank = Image.new("RGB", image.size, color=background)
        image = Image.composite(image, blank, Image.fromarray(detection.mask.astype(np.uint8) * 255))
    return image.crop(tuple(round(c) for c in detection.box))


class ClipColorClassifier:
    """CLIP zero-shot colour of detected objects (a transformers CLIP from a hub id or a local directory)."""

    def __init__(
        self,
        model: str = DEFAULT_CLIP,
        device: str | torch.device = "cpu",
        colors: Sequence[str] = GENEVAL_COLORS,
        background: str = "#999",
        batch_size: int = 16,
    ):
        from transformers import CLIPModel, CLIPProcessor  # transformers' import is slow: only when used

        try:
            self.model = CLIPModel.from_pretrained(model).eval().to(device)
            self.processor = CLIPProcessor.from_pretrained(model)
        except OSError as err:
            raise FileNotFoundError(
                f"CLIP colour model {model!r} could not be loaded ({str(err).splitlines()[0]}): give a local "
                f"directory holding a transformers CLIP (config.json, weights, tokenizer and "
                f"preprocessor files), e.g. a download of {DEFAULT_CLIP}"
            ) from None
        self.device, self.colors = torch.device(device), tuple(colors)
        self.background, self.batch_size = background, batch_size
        self._text: dict[str, torch.Tensor] = {}  # object name -> (colours, D) unit text embeddings

    def to(self, device: str | torch.device) -> ClipColorClassifier:
        self.device = torch.device(device)
        self.model.to(self.device)
        self._text = {name: emb.to(self.device) for name, emb in self._text.items()}
        return self

    @torch.no_grad()
    def text_classifier(self, object_name: str) -> torch.Tensor:
        """(len(colors), D): per colour, the mean of its templates' unit embeddings, renormalised."""
        if object_name not in self._text:
            texts = [t.format(color=c, object=object_name) for c in self.colors for t in COLOR_TEMPLATES]
            tokens = self.processor.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
            emb = _unit(self._features(self.model.get_text_features(**tokens)))  # (colours * templates, D)
            self._text[object_name] = _unit(emb.view(len(self.colors), len(COLOR_TEMPLATES), -1).mean(1))
        return self._text[object_name]

    @torch.no_grad()
    def classify(self, image: Image.Image | np.ndarray, detections: Sequence[Detection]) -> list[str]:
        """The colour of each detection (all of one class or not: each uses its own class's templates)."""
        if not detections:
            return []
        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        out: list[str] = []
        for i in range(0, len(detections), self.batch_size):
            chunk = detections[i : i + self.batch_size]
            crops = [object_crop(pil, d, self.background) for d in chunk]
            pixels = self.processor(images=crops, return_tensors="pt")["pixel_values"].to(self.device)
            img = _unit(self._features(self.model.get_image_features(pixel_values=pixels)))  # (b, D)
            for row, det in zip(img, chunk, strict=True):
                logits = self.text_classifier(det.class_name) @ row  # (colours,)
                out.append(self.colors[int(logits.argmax())])
        return out

    @staticmethod
    def _features(out) -> torch.Tensor:
        """The projected embedding whether transformers returns a tensor or an output with a pooler."""
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
