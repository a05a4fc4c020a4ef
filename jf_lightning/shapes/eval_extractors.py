"""The evaluation metrics' feature extractors with random weights in the real architectures, saved where
and as the libraries read them, so that tests and smoke runs take the metrics' whole path offline:

- ``inception-2015-12-05.pt``: torch-fidelity's port of the TensorFlow Inception (2015-12-05) as the
  TorchScript module clean-fid's ``InceptionV3W`` loads (``layers`` maps 299 px pixels in [-1, 1] to
  the 2048 pool features; calling it with ``return_features`` resizes inside);
- ``weights-inception-2015-12-05-6726825d.pth``: the same weights as the state dict torch-fidelity's
  ``FeatureExtractorInceptionV3`` (torchmetrics' FID) loads;
- ``clip/``: a tiny ``CLIPModel`` with a byte-level ``CLIPTokenizer`` and image processor, written by
  ``save_pretrained`` (the layout of ``openai/clip-vit-large-patch14``);
- ``mask2former/``: a tiny ``Mask2FormerForUniversalSegmentation`` (Swin backbone) with COCO's 80
  classes and its image processor, the layout of ``facebook/mask2former-swin-small-coco-instance``
  (GenEval's detector).

Their numbers mean nothing (random features); the real weights go in the same places.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    SwinConfig,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from jf_lightning.inputs import PreparedInput
from jf_lightning.metrics.fid import CLEAN_FID_FILE, TORCH_FIDELITY_FILE
from jf_lightning.metrics.mask2former_detector import GENEVAL_OBJECTS


class _RandomInception(FeatureExtractorInceptionV3):
    """torch-fidelity's own layer list, kept at its random initialisation (its loading is skipped)."""

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return None


def random_inception(seed: int = 0) -> FeatureExtractorInceptionV3:
    """torch-fidelity's Inception with He-initialised convolutions (random features of unit scale:
    PyTorch's default init shrinks them layer by layer towards zero, where every FID is 0)."""
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)  # the constructor reads a file before its load_state_dict (skipped above)
        net = _RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return net


class CleanFidInception(nn.Module):
    """The interface of clean-fid's ``inception-2015-12-05.pt``: ``layers`` for pixels already at 299 px
    in [-1, 1] (``clean`` mode), or the module called on 0..255 pixels of any size (it resizes)."""

    def __init__(self, net: nn.Module):  # torch-fidelity's FeatureExtractorInceptionV3
        super().__init__()
        self.layers = nn.Sequential(
            net.Conv2d_1a_3x3,
            net.Conv2d_2a_3x3,
            net.Conv2d_2b_3x3,
            net.MaxPool_1,
            net.Conv2d_3b_1x1,
            net.Conv2d_4a_3x3,
            net.MaxPool_2,
            net.Mixed_5b,
            net.Mixed_5c,
            net.Mixed_5d,
            net.Mixed_6a,
            net.Mixed_6b,
            net.Mixed_6c,
            net.Mixed_6d,
            net.Mixed_6e,
            net.Mixed_7a,
            net.Mixed_7b,
            net.Mixed_7c,
            net.AvgPool,
        )  # fmt: skip  (torch-fidelity's forward order)
        self.fc = net.fc

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)  # (N, 3, 299, 299)
        features = self.layers((x - 128) / 128).flatten(1)  # (N, 2048)
        return features if return_features else self.fc(features)  # (N, 2048) or (N, 1008)


class TinyCleanFidNet(nn.Module):
    """clean-fid's file interface (``layers``: 299 px in [-1, 1] -> 2048 features; called: resizes) around
    two convolutions: for runs that need FID's whole path but not Inception's cost (about 6 GFLOPs an
    image: seconds on a shared CPU), such as smoke runs and multi-process tests."""

    def __init__(self):
        super().__init__()
        self.layers = nn.Sequential(
            nn.AvgPool2d(13),  # (N, 3, 23, 23)
            nn.Conv2d(3, 64, 3, stride=2),  # (N, 64, 11, 11)
            nn.ReLU(),
            nn.Conv2d(64, 2048, 1),  # (N, 2048, 11, 11)
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),  # (N, 2048, 1, 1)
        )
        for module in self.layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = F.interpolate(img, size=(299, 299), mode="bilinear", align_corners=False)  # (N, 3, 299, 299)
        return self.layers((x - 128) / 128).flatten(1)  # (N, 2048)


def save_random_inceptions(
    out_dir: str | Path, seed: int = 0, tiny: bool = False
) -> tuple[Path, Path | None]:
    """One random Inception in both libraries' formats: (clean-fid file, torch-fidelity file); ``tiny``:
    :class:`TinyCleanFidNet` in clean-fid's format alone (torch-fidelity's is the Inception's state dict)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if tiny:
        torch.jit.save(torch.jit.script(TinyCleanFidNet().eval()), str(out / CLEAN_FID_FILE))
        return out / CLEAN_FID_FILE, None
    net = random_inception(seed).eval()
    torch.save(net.state_dict(), out / TORCH_FIDELITY_FILE)
    torch.jit.save(torch.jit.script(CleanFidInception(net).eval()), str(out / CLEAN_FID_FILE))
    return out / CLEAN_FID_FILE, out / TORCH_FIDELITY_FILE


def save_tiny_clip(out_dir: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny CLIP (two layers per tower, width 32) with a byte-level tokenizer, by ``save_pretrained``."""
    torch.manual_seed(seed)
    units = list(bytes_to_unicode().values())  # CLIP's own base vocabulary: one unit per byte
    tokens = [*units, *(u + "</w>" for u in units), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])  # no merges: a word is its bytes
    towers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = dict(towers, vocab_size=len(vocab), max_position_embeddings=77,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                pad_token_id=vocab["<|endoftext|>"])  # fmt: skip
    vision = dict(towers, image_size=image_size, patch_size=image_size // 4)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    images = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    out = Path(out_dir)
    model.save_pretrained(out)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(out)
    return out


def save_tiny_mask2former(out_dir: str | Path, favour: str | None = None, size: int = 64, seed: int = 0) -> Path:
    """A tiny Mask2Former instance segmenter (Swin backbone, width 16-32) with COCO's 80 classes, by
    ``save_pretrained``; with ``favour``, every query's class head is biased to that COCO class, so
    detections of it carry scores near their mask scores (above GenEval's 0.3)."""
    torch.manual_seed(seed)
    swin = SwinConfig(
        image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    names = [n.replace("computer mouse", "mouse") for n in GENEVAL_OBJECTS]  # COCO's own spelling, as the hub's
    config = Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_dim=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, decoder_layers=2, encoder_layers=1, num_queries=12, num_attention_heads=2,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    model = Mask2FormerForUniversalSegmentation(config)
    if favour is not None:
        with torch.no_grad():
            model.class_predictor.bias[GENEVAL_OBJECTS.index(favour)] = 30.0
    out = Path(out_dir)
    model.save_pretrained(out)
    Mask2FormerImageProcessor(size={"height": size, "width": size}).save_pretrained(out)
    return out


class RandomEvalExtractors(PreparedInput):
    """The random Inception (both formats; ``tiny``: :class:`TinyCleanFidNet` in clean-fid's alone) in
    ``out_dir``, the tiny CLIP in ``out_dir/clip`` and the tiny Mask2Former in ``out_dir/mask2former``:
    point an FID callback's ``weights`` at ``out_dir``, a CLIP score's ``model`` at ``out_dir/clip``
    and a GenEval detector's ``model`` and ``colors`` at ``out_dir/mask2former`` and ``out_dir/clip``."""

    def __init__(self, out_dir: str, seed: int = 0, clip_seed: int = 2, tiny: bool = False):
        """
        Args:
            out_dir: Where the files go.
            seed: Seeds the Inception's random weights.
            clip_seed: Seeds the CLIP's (at 2 its image and prompt embeddings point to the same side, so
                the CLIP score, clamped at 0, is not 0 and moves with the images).
            tiny: Write the two-convolution stand-in in clean-fid's format instead of the Inception.
        """
        self.out_dir, self.seed, self.clip_seed, self.tiny = out_dir, seed, clip_seed, tiny

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    def _files(self) -> list[Path]:
        out = self.path
        return [out / CLEAN_FID_FILE, out / "clip" / "config.json", out / "mask2former" / "config.json"] + (
            [] if self.tiny else [out / TORCH_FIDELITY_FILE]
        )

    def ready(self) -> bool:
        return all(p.is_file() for p in self._files())

    def prepare(self) -> None:
        if self.ready():
            return
        print(f"writing random-weight evaluation extractors into {self.out_dir} ...", flush=True)
        save_random_inceptions(self.out_dir, self.seed, self.tiny)
        save_tiny_clip(self.path / "clip", self.clip_seed)
        save_tiny_mask2former(self.path / "mask2former", seed=self.seed)


class ShapesFIDReference(PreparedInput):
    """Real images of the shapes world for FID (``out_dir/images/<i>.png``) and their captions, one
    per line, as a prompt file (``out_dir/prompts.txt``): a smoke run's reference set and prompts."""

    def __init__(self, out_dir: str, n: int = 32, image_size: int = 32, seed: int = 12345):
        """
        Args:
            out_dir: Where the images and the prompt file go.
            n: Scenes rendered.
            image_size: Side of the images, in pixels (the world's).
            seed: Seeds the scenes (apart from the training world's).
        """
        self.out_dir, self.n, self.image_size, self.seed = out_dir, n, image_size, seed

    @property
    def path(self) -> Path:
        return Path(self.out_dir)

    def ready(self) -> bool:
        prompts = self.path / "prompts.txt"
        return prompts.is_file() and len(prompts.read_text().splitlines()) == self.n

    def prepare(self) -> None:
        if self.ready():
            return
        from jf_lightning.shapes.language import caption
        from jf_lightning.shapes.world import render_scene, sample_scene

        rng = np.random.default_rng(self.seed)
        (self.path / "images").mkdir(parents=True, exist_ok=True)
        captions = []
        for i in range(self.n):
            scene = sample_scene(rng)
            render_scene(scene, self.image_size).save(self.path / "images" / f"{i:05d}.png")
            captions.append(caption(scene))
        (self.path / "prompts.txt").write_text("\n".join(captions) + "\n")
