"""CLIP score through torchmetrics with a tiny CLIP saved by save_pretrained and loaded back."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.multimodal.clip_score import CLIPScore
from transformers import CLIPModel, CLIPProcessor

from jf_lightning.metrics.clip_score import ProjectedFeatures, clip_score, clip_score_metric, load_clip
from tests.eval_extractors import extractors_dir

PROMPTS = ["a photo of a red circle", "two blue squares", "a green triangle left of a yellow circle", "a cat"]


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory):
    return extractors_dir(tmp_path_factory, tiny=True) / "clip"


def _images() -> torch.Tensor:
    return torch.randint(
        0, 256, (4, 3, 40, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def test_clip_score_equals_torchmetrics_and_the_models_own_cosine(clip_dir):
    images = _images()
    ours = clip_score(clip_score_metric(str(clip_dir)), images, PROMPTS, batch_size=3)
    direct = CLIPScore(
        model_name_or_path=lambda: (
            ProjectedFeatures(CLIPModel.from_pretrained(clip_dir)),
            CLIPProcessor.from_pretrained(clip_dir),
        )
    )
    direct.update(images, PROMPTS)
    # and from transformers' forward alone: logits_per_image = exp(logit_scale) * cos
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    with torch.no_grad():
        out = model(**processor(text=PROMPTS, images=list(images), return_tensors="pt", padding=True))
    cosines = out.logits_per_image.diagonal() / model.logit_scale.exp()  # (4,)
    assert ours > 0  # the score is clamped at 0: the fixture's CLIP must leave it above
    assert ours == pytest.approx(direct.compute().item(), rel=1e-5)
    assert ours == pytest.approx(100 * cosines.mean().item(), rel=1e-4)
    # the score follows the images: other images, another score
    assert clip_score(clip_score_metric(str(clip_dir)), images.flip(0), PROMPTS) != pytest.approx(ours)


def test_a_missing_clip_names_both_ways_to_provide_it(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"save_pretrained.*hf download openai/clip-vit-large-patch14"
    ):
        load_clip(str(tmp_path / "no-clip"))


def test_images_and_prompts_must_pair_up(clip_dir):
    with pytest.raises(ValueError, match="4 images for 3 prompts"):
        clip_score(clip_score_metric(str(clip_dir)), _images(), PROMPTS[:3])
