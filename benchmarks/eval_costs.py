"""What the FID / CLIP-score evaluation costs per image on this machine (2 CPU cores), against a
training step of the same model in the same run: the figures eval/README.md's cost arithmetic uses.

    python -m benchmarks.eval_costs [--images 8] [--skip-distance]   (from the repository root)

Prints, per image: the tiny model's generation (30 Euler steps, CFG: two branches), the Inception
features (clean-fid's clean mode, the real architecture with random weights, from 256 px), CLIP
ViT-L/14's image + prompt features (torchmetrics' CLIPScore, the real configuration with random
weights); one training step of the tiny model (forward + backward, 4 mixed samples, as
``benchmarks.forward_backward``) as the baseline; and one Fréchet distance (scipy's 2048 x 2048 matrix
square root, clean-fid's ``frechet_distance``), which is paid per metric key, not per image.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from benchmarks.forward_backward import median_seconds, mixed_batch
from jf_lightning.inference.generate import generate_images
from jf_lightning.metrics.clip_score import ProjectedFeatures
from jf_lightning.metrics.fid import CleanFID, FIDStats
from jf_lightning.models.config import tiny
from jf_lightning.models.janusflow import JanusFlow
from jf_lightning.shapes.eval_extractors import save_random_inceptions, save_tiny_clip


def seconds(fn) -> float:
    fn()  # warm-up (TorchScript profiles its first calls)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def clip_large(tmp: str):
    """CLIP ViT-L/14's configuration (transformers' defaults for openai/clip-vit-large-patch14) with
    random weights, and the tiny CLIP's processor resized to 224 px."""
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(save_tiny_clip(f"{tmp}/clip", image_size=224))
    eos = processor.tokenizer.eos_token_id  # the byte vocabulary's ids lie inside CLIP's 49,408
    text = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
            "eos_token_id": eos}  # fmt: skip
    vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
              "num_hidden_layers": 24, "patch_size": 14, "image_size": 224}  # fmt: skip
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768)).eval()
    return CLIPScore(model_name_or_path=lambda: (ProjectedFeatures(model), processor))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--skip-distance", action="store_true")
    args = parser.parse_args()
    n = args.images
    torch.manual_seed(0)
    print(f"threads={torch.get_num_threads()} load average={os.getloadavg()[0]:.1f} images={n}")
    cfg = tiny()
    model = JanusFlow(cfg).eval()
    train = JanusFlow(cfg).train()
    t_step = median_seconds(train, mixed_batch(cfg), 5)
    print(f"tiny training step (4 samples, fwd+bwd): {t_step * 1000:9.1f} ms", flush=True)
    prompts = [list(range(20, 40))] * n
    t_gen = seconds(lambda: generate_images(model, prompts, list(range(n)), 0, 30, 7.5, n)) / n
    print(f"tiny generation, 30 steps, CFG:          {t_gen * 1000:9.1f} ms/image  "
          f"({t_gen / (t_step / 4):.1f} training samples' worth)", flush=True)  # fmt: skip
    images = torch.randint(0, 256, (n, 3, 256, 256), dtype=torch.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        save_random_inceptions(tmp)
        inception = CleanFID(tmp)
        t_inception = seconds(lambda: inception.images(images)) / n
        print(f"Inception features (clean, 256 px):      {t_inception * 1000:9.1f} ms/image", flush=True)
        metric = clip_large(tmp)
        texts = ["a photo of a red circle left of a blue square on a wooden table"] * n
        t_clip = seconds(lambda: metric.update(images, texts)) / n
    print(f"CLIP ViT-L/14 image + prompt features:   {t_clip * 1000:9.1f} ms/image")
    if not args.skip_distance:
        rng = np.random.default_rng(0)
        a, b = FIDStats.of(rng.standard_normal((300, 2048))), FIDStats.of(rng.standard_normal((300, 2048)))
        start = time.perf_counter()
        inception.distance(a, b)
        print(
            f"Frechet distance (2048, scipy sqrtm):     {time.perf_counter() - start:9.1f} s per metric key"
        )


if __name__ == "__main__":
    main()
