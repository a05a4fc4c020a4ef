"""FID of images the model draws from a benchmark's prompts against a real image set: MJHQ-30K FID as
the paper reports it (the ablations: FID-10k at CFG 7.5, 30 steps; the main table: FID-30k at CFG 2),
overall and per MJHQ category, and on the same images, optionally, the CLIP score.

Logged: ``<prefix>`` (``val/fid/mjhq`` by default), ``<prefix>/<category>`` for each category of the
prompts that the reference also has, ``val/time/fid``, and with ``clip_model`` ``val/clip_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch

from jf_lightning.callbacks.clip_score import CLIPScorer
from jf_lightning.callbacks.evaluation import gather_rows
from jf_lightning.callbacks.generated_images import GeneratedImagesCallback, ImageScorer
from jf_lightning.metrics.fid import InceptionFeatures, feature_extractor, fid_scores, reference_stats
from jf_lightning.metrics.prompt_files import balanced_subset, read_prompts


class FIDScorer(ImageScorer):
    """Inception features of every rank's images, gathered in item order to every rank, which each
    compute the same FID against the reference statistics (computed once per machine, then cached)."""

    def __init__(
        self,
        reference: str,
        categories: Sequence[str | None],
        prefix: str = "val/fid/mjhq",
        backend: str = "clean-fid",
        weights: str | None = None,
        mode: str = "clean",
        cache_dir: str | None = None,
        dims: int = 2048,
        per_category: bool = True,
    ):
        self.reference_path, self.categories, self.prefix = reference, list(categories), prefix.rstrip("/")
        self.backend, self.weights, self.mode = backend, weights, mode
        self.cache_dir, self.dims, self.per_category = cache_dir, dims, per_category
        self.extractor: InceptionFeatures | None = None
        self.reference: dict = {}
        self.index: list[int] = []
        self.features: list[torch.Tensor] = []

    def setup(self, trainer: pl.Trainer) -> None:
        if self.extractor is None:
            self.extractor = feature_extractor(
                self.backend, self.weights, self.mode, trainer.strategy.root_device, self.dims
            )
        if not self.reference:
            # one process per machine reads the reference set; the others wait, then read its cache
            if trainer.local_rank == 0:
                self.reference = reference_stats(self.reference_path, self.extractor, self.cache_dir)
            trainer.strategy.barrier("fid_reference")
            if trainer.local_rank != 0:
                self.reference = reference_stats(
                    self.reference_path, self.extractor, self.cache_dir, progress=False
                )

    def reset(self) -> None:
        self.index, self.features = [], []

    def update(self, images: torch.Tensor, index: Sequence[int]) -> None:
        self.features.append(torch.from_numpy(self.extractor.images(images)))  # (b, 2048)
        self.index.extend(index)

    def compute(self, trainer: pl.Trainer) -> dict[str, float]:
        features = gather_rows(
            trainer, self.index, torch.cat(self.features), len(self.categories)
        )  # (N, 2048)
        categories = self.categories if self.per_category else None  # each category: one more matrix root
        scores = fid_scores(features.numpy(), self.reference, self.extractor, categories)
        return {self.prefix if k == "" else f"{self.prefix}/{k}": v for k, v in scores.items()}


class FIDCallback(GeneratedImagesCallback):
    """FID (and optionally CLIP score) of ``num_images`` images of a prompt file (text lines, or MJHQ's
    ``meta_data.json``, whose prompts are taken in turn from each category) against ``reference``: a
    folder of real images (recursively; MJHQ's with per-category statistics) or a statistics file."""

    name = "fid"

    def __init__(
        self,
        prompts: str,
        reference: str,
        num_images: int | None = 10_000,
        prefix: str = "val/fid/mjhq",
        backend: str = "clean-fid",
        weights: str | None = None,
        mode: str = "clean",
        cache_dir: str | None = None,
        dims: int = 2048,
        per_category: bool = True,
        clip_model: str | None = None,
        **kwargs: Any,
    ):
        """
        Args:
            prompts: Prompt file: one prompt per line, or MJHQ-30K's ``meta_data.json``.
            reference: Real images (a folder, searched recursively; MJHQ-30K's ``mjhq30k_imgs`` with
                ``meta_data.json`` in or beside it gives per-category FID) or an ``.npz`` statistics file.
            num_images: Images drawn (the ablations: 10,000; the paper's table: 30,000); null: one per prompt.
            prefix: Metric name: ``<prefix>`` overall, ``<prefix>/<category>``.
            backend: ``clean-fid`` (its ``mode``) or ``torchmetrics`` (torch-fidelity's Inception).
            weights: The Inception weights file (or its folder); null: the library's cache
                (clean-fid: ``/tmp/inception-2015-12-05.pt``; torch-fidelity: torch hub's checkpoints).
            mode: clean-fid's ``clean`` (the paper's) or ``legacy_tensorflow``.
            cache_dir: Where reference statistics are cached (default ``~/.cache/jf_lightning/fid``).
            dims: Feature size: 2048 (FID); the torchmetrics backend also takes an earlier block's
                64 / 192 / 768 (cheap, not comparable with published FIDs).
            per_category: Also ``<prefix>/<category>`` (each a 2048 x 2048 matrix square root on the CPU).
            clip_model: Also log ``val/clip_score`` on the same images with this CLIP (hub id or folder).
            kwargs: How the images are drawn: ``steps`` (the paper: 30), ``cfg_weight`` (the ablations:
                7.5; the main table: 2), ``seed``, ``batch_size`` (images generated and featurised per
                call, per rank), ``template``, ``temperature``, ``grid_images``, ``every_n_steps``; see
                :class:`GeneratedImagesCallback`.
        """
        self.prompt_file, self.num_images = prompts, num_images
        self.fid = FIDScorer(reference, [], prefix, backend, weights, mode, cache_dir, dims, per_category)
        self.clip = CLIPScorer([], clip_model) if clip_model is not None else None
        scorers: list[ImageScorer] = [self.fid] + ([self.clip] if self.clip else [])
        super().__init__(None, scorers, **kwargs)

    def load_prompts(self) -> list[str]:
        entries = balanced_subset(read_prompts(self.prompt_file), self.num_images)
        texts = [e.text for e in entries]
        self.fid.categories = [e.category for e in entries]
        if self.clip is not None:
            self.clip.prompts = texts
        return texts
