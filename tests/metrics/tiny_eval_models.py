"""Tiny random-weight models in the real architectures GenEval scoring loads (a Mask2Former instance
segmenter with COCO's 80 classes, from the package's smoke extractors, and a CLIP), written with
``save_pretrained`` for the real loading code."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from jf_lightning.shapes.eval_extractors import save_tiny_mask2former

__all__ = ["save_tiny_clip", "save_tiny_mask2former", "write_llava_shard"]


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
