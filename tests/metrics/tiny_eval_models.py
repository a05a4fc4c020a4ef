"""Tiny random-weight models in the real architectures GenEval scoring loads (a Mask2Former instance
segmenter with COCO's 80 classes, a CLIP), written with ``save_pretrained`` for the real loading code."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jf_lightning.metrics.mask2former_detector import GENEVAL_OBJECTS


def save_tiny_mask2former(path: Path, favour: str | None = None, size: int = 64) -> Path:
    """A Mask2Former (tiny Swin backbone) at ``path``; with ``favour``, every query's class head is biased
    to that COCO class, so detections of it carry scores near their mask scores (above GenEval's 0.3)."""
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    swin = SwinConfig(
        image_size=size, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
        window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"],
    )  # fmt: skip
    # COCO's own spelling, as the hub's checkpoint has it
    names = [n.replace("computer mouse", "mouse") for n in GENEVAL_OBJECTS]
    config = Mask2FormerConfig(
        backbone_config=swin, feature_size=32, mask_feature_dim=32, hidden_dim=32, encoder_feedforward_dim=64,
        dim_feedforward=64, decoder_layers=2, encoder_layers=1, num_queries=12, num_attention_heads=2,
        id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
    )  # fmt: skip
    model = Mask2FormerForUniversalSegmentation(config)
    if favour is not None:
        with torch.no_grad():
            model.class_predictor.bias[GENEVAL_OBJECTS.index(favour)] = 30.0
    model.save_pretrained(path)
    Mask2FormerImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path


def save_tiny_clip(path: Path) -> Path:
    """A CLIP with a character-level BPE vocabulary (CLIP's tokenizer files, a handful of merges)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())  # the byte-level alphabet
    vocab = {
        t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])
    }
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"]},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=16,
    )  # fmt: skip
    CLIPModel(config).save_pretrained(path)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(path)
    return path


def write_llava_shard(path, records) -> str:
    """A shard in the LLaVA layout (png + json conversation); records: (question, answer, extra json fields)."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as tar:
        for i, (question, answer, extra) in enumerate(records):
            png = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(png, "PNG")
            meta = {
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
                **extra,
            }
            for suffix, data in (("png", png.getvalue()), ("json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return str(path)
