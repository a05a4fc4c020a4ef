"""The evaluation metrics' extractors with random weights, built once per test session in a temporary
folder: the clean-fid and torch-fidelity Inception files side by side (``tiny``: the two-convolution
stand-in in clean-fid's format, for tests that need FID's path but not Inception's seconds per
image), the tiny CLIP in ``clip/``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from jf_lightning.shapes.eval_extractors import RandomEvalExtractors

_built: dict[str, Path] = {}


def extractors_dir(tmp_path_factory, tiny: bool = False) -> Path:
    key = "tiny" if tiny else "inception"
    if key not in _built:
        out = tmp_path_factory.mktemp(f"extractors-{key}")
        RandomEvalExtractors(str(out), tiny=tiny).prepare()
        _built[key] = out
    return _built[key]


def write_images(folder: Path, n: int, seed: int, size: int = 32, smooth: bool = False) -> list[Path]:
    """``n`` PNGs of random pixels (or, ``smooth``, random colour gradients) under ``folder``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        if smooth:
            ramp = np.linspace(0, 1, size)[:, None, None] * rng.uniform(0, 255, (1, 1, 3))
            pixels = (ramp + rng.uniform(0, 255, (1, size, 3)) * 0.3).clip(0, 255).astype(np.uint8)
        else:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(pixels).save(paths[-1])
    return paths
