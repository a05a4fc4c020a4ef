"""The real-image GenEval detector on tiny random-weight models saved and loaded through transformers."""

import numpy as np
import pytest
import torch
from PIL import Image

from jf_lightning.metrics.clip_colors import ClipColorClassifier, object_crop
from jf_lightning.metrics.geneval import GENEVAL_COLORS, Detection, score_image
from jf_lightning.metrics.mask2former_detector import (
    GENEVAL_OBJECTS,
    Mask2FormerDetector,
    geneval_names,
    mask_box,
)
from tests.metrics.tiny_eval_models import save_tiny_clip, save_tiny_mask2former


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    return save_tiny_mask2former(root / "m2f", favour="dog"), save_tiny_clip(root / "clip")


def image(seed=0, size=64):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_names_follow_geneval():
    coco = dict(enumerate(n.replace("computer mouse", "mouse") for n in GENEVAL_OBJECTS))
    assert geneval_names(coco) == list(GENEVAL_OBJECTS)
    assert geneval_names({0: "Traffic_Light", 1: "zebra"}) == ["traffic light", "zebra"]
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_box(mask) == (3.0, 2.0, 9.0, 5.0)


def test_detections_from_a_saved_model(models):
    detector = Mask2FormerDetector(str(models[0]), colors=None)
    assert detector.classes[GENEVAL_OBJECTS.index("computer mouse")] == "computer mouse"
    dets = detector.detect(image())
    assert 0 < len(dets) <= 12  # at most one per query
    for d in dets:
        assert d.class_name in GENEVAL_OBJECTS and 0 <= d.score <= 1 and d.color is None
        assert d.mask.shape == (64, 64) and d.box == mask_box(d.mask)
    assert max(d.score for d in dets if d.class_name == "dog") > 0.3  # the favoured class
    # images of another size come back in their own coordinates; a batch equals single calls
    big = detector.detect_batch([image(1, 96), image(2)])
    assert all(d.mask.shape == (96, 96) for d in big[0])
    assert [d.box for d in big[1]] == [d.box for d in detector.detect(image(2))]


def test_rules_on_the_detector(models):
    detector = Mask2FormerDetector(str(models[0]), colors=str(models[1]))
    ok, why, grouped = score_image(
        detector, image(), {"tag": "single_object", "include": [{"class": "dog", "count": 1}]}
    )
    assert ok and not why and "dog" in grouped
    ok, why, _ = score_image(
        detector, image(), {"tag": "single_object", "include": [{"class": "cat", "count": 1}]}
    )
    assert not ok and "expected cat>=1, found 0" in why
    spec = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}]}
    ok, why, grouped = score_image(detector, image(), spec)
    color = grouped["dog"][0].color
    assert color in GENEVAL_COLORS and ok == (color == "red")
    assert [d.color for d in grouped["dog"][1:]] == [None] * (len(grouped["dog"]) - 1)  # only what is checked


def test_crop_pastes_the_mask_over_grey():
    img = image()
    mask = np.zeros((64, 64), bool)
    mask[10:20, 30:50] = True
    mask[10, 30] = False
    crop = np.asarray(object_crop(img, Detection("dog", (30, 10, 50, 20), 0.9, None, mask)))
    assert crop.shape == (10, 20, 3)
    assert (crop[0, 0] == 153).all()  # outside the mask: #999
    assert (crop[1:, 1:] == np.asarray(img)[11:20, 31:50]).all()


def test_colour_is_clips_nearest_template_mean(models):
    clf = ClipColorClassifier(str(models[1]))
    img = image(3)
    dets = [Detection("dog", (0, 0, 40, 40), 0.9), Detection("cup", (20, 10, 64, 50), 0.8)]
    colors = clf.classify(img, dets)
    model, proc = clf.model, clf.processor
    with torch.no_grad():
        for det, color in zip(dets, colors):
            texts = [f"a photo of a {c} {det.class_name}" for c in GENEVAL_COLORS]
            texts += [f"a photo of a {c}-colored {det.class_name}" for c in GENEVAL_COLORS]
            texts += [f"a photo of a {c} object" for c in GENEVAL_COLORS]
            t = model.get_text_features(**proc.tokenizer(texts, padding=True, return_tensors="pt"))
            t = getattr(t, "pooler_output", t)
            t = t / t.norm(dim=-1, keepdim=True)
            t = t.view(3, 10, -1).mean(0)
            px = proc(images=[img.crop(tuple(int(c) for c in det.box))], return_tensors="pt")["pixel_values"]
            v = model.get_image_features(pixel_values=px)
            v = getattr(v, "pooler_output", v)[0]
            assert color == GENEVAL_COLORS[int((t / t.norm(dim=-1, keepdim=True) @ v).argmax())]


def test_missing_model_names_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="local directory holding a transformers Mask2Former"):
        Mask2FormerDetector(str(tmp_path / "nowhere"), colors=None).load()  # loads on first use
    with pytest.raises(FileNotFoundError, match="transformers CLIP"):
        ClipColorClassifier(str(tmp_path / "nowhere"))
