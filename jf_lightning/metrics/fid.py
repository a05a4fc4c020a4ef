"""FID: Inception features of images, their statistics, and the Fréchet distance between two sets.

The libraries do the measuring; this module finds their weights, feeds them images from memory or a
folder, and caches a reference set's statistics:

- ``clean-fid`` (default, GigaGAN's and the paper's convention): its TorchScript Inception
  (``inception-2015-12-05.pt``), its ``clean`` resizing (PIL bicubic on float pixels) and its
  ``frechet_distance``; ``legacy_tensorflow`` mode resizes inside the network instead;
- ``torchmetrics`` (torch-fidelity's Inception port, ``weights-inception-2015-12-05-6726825d.pth``):
  the ``FrechetInceptionDistance`` metric's own network and distance.

Weights come from a given path or the library's own cache (clean-fid: ``/tmp``, where its
``build_feature_extractor`` downloads to; torch-fidelity: torch hub's ``checkpoints`` folder). Nothing
is downloaded here: without the file, a one-line error says which file to put where.

A reference set's statistics (mean and covariance of its features, overall and per MJHQ category) are
computed once and cached in an ``.npz`` named by the set's files, the extractor, its mode and a digest
of its weights, in clean-fid's layout (``mu``, ``sigma``): a clean-fid statistics file is a reference too.
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid.downloads_helper import inception_url as CLEAN_FID_URL
from cleanfid.fid import frechet_distance, get_batch_features, get_files_features
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer
from PIL import Image
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3 as TORCH_FIDELITY_URL
from torchvision.transforms.functional import to_tensor
from tqdm import tqdm

CLEAN_FID_FILE = "inception-2015-12-05.pt"  # the name clean-fid's InceptionV3W loads
CLEAN_FID_CACHE = Path("/tmp")  # where clean-fid's feature_extractor looks (and downloads to)
TORCH_FIDELITY_FILE = TORCH_FIDELITY_URL.rsplit("/", 1)[1]
IMAGE_EXTENSIONS = {
    ".bmp",
    ".jpg",
    ".jpeg",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
}  # clean-fid's, less .npy
BACKENDS = ("clean-fid", "torchmetrics")
MODES = ("clean", "legacy_tensorflow")


class MissingWeightsError(FileNotFoundError):
    """A feature extractor's weights file is not where it was looked for."""


def locate_weights(weights: str | Path | None, filename: str, cache: Path, url: str, what: str) -> Path:
    """``weights`` (a file, or a folder holding ``filename``), else ``cache / filename``; a one-line
    :class:`MissingWeightsError` naming the file, the place and its download address when absent."""
    path = Path(weights) if weights is not None else cache
    if path.is_dir() or weights is None or (not path.exists() and not path.suffix):  # a folder
        path = path / filename
    if not path.is_file():
        raise MissingWeightsError(f"{what} weights not found at {path}: download {url} and put it there "
                                  f"(or pass the file's path)")  # fmt: skip
    return path


def file_digest(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: names the weights in reference caches."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:12]


@dataclass
class FIDStats:
    """Mean and covariance of a set's features, as clean-fid computes them."""

    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FIDStats:
        """features: (N, D), N >= 2 (a covariance needs two)."""
        if len(features) < 2:
            raise ValueError(f"FID needs at least 2 images per set, got {len(features)}")
        return cls(np.mean(features, axis=0), np.cov(features, rowvar=False), len(features))


class InceptionFeatures(ABC):
    """An Inception feature extractor and the Fréchet distance of its library."""

    #: names the extractor, its mode and its weights (reference caches are keyed by it)
    key: str

    @abstractmethod
    def images(self, images: torch.Tensor) -> np.ndarray:
        """(N, 3, H, W) uint8 -> (N, D) features (D = 2048 for the standard FID)."""

    @abstractmethod
    def files(self, files: Sequence[Path], batch_size: int, num_workers: int, progress: bool) -> np.ndarray:
        """Image files (any sizes) -> (N, D) features, with a progress bar when ``progress``."""

    @abstractmethod
    def distance(self, a: FIDStats, b: FIDStats) -> float:
        """The Fréchet distance between two sets' statistics."""


class CleanFID(InceptionFeatures):
    """clean-fid's TorchScript Inception, resizing and distance."""

    def __init__(
        self, weights: str | Path | None = None, mode: str = "clean", device: str | torch.device = "cpu"
    ):
        if mode not in MODES:
            raise ValueError(f"clean-fid mode {mode!r}: use one of {MODES}")
        path = locate_weights(weights, CLEAN_FID_FILE, CLEAN_FID_CACHE, CLEAN_FID_URL, "clean-fid Inception")
        if path.name != CLEAN_FID_FILE:
            raise MissingWeightsError(
                f"{path}: clean-fid loads its Inception only as {CLEAN_FID_FILE}; rename it"
            )
        self.mode, self.device = mode, torch.device(device)
        # clean-fid's own wrapper, without its download: legacy_tensorflow resizes inside the network
        self.model = InceptionV3W(str(path.parent), download=False, resize_inside=mode == "legacy_tensorflow")
        self.model = self.model.to(self.device).eval()
        self.resize = build_resizer(mode)
        self.key = f"clean-fid-{mode}-{file_digest(path)}"

    def images(self, images: torch.Tensor) -> np.ndarray:
        # each image as clean-fid's ResizeDataset.__getitem__ prepares a file (it reads only files):
        # HWC uint8 -> the mode's resizer -> CHW float in 0..255 (clean: PIL bicubic on float32 pixels)
        batch = []
        for image in images:
            resized = self.resize(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))  # (S, S, 3)
            batch.append(to_tensor(resized) * 255 if resized.dtype == np.uint8 else to_tensor(resized))
        return get_batch_features(torch.stack(batch), self.model, self.device)  # (N, 2048) float32

    def files(self, files: Sequence[Path], batch_size: int, num_workers: int, progress: bool) -> np.ndarray:
        return get_files_features(
            [str(f) for f in files], self.model, num_workers=num_workers, batch_size=batch_size,
            device=self.device, mode=self.mode, description="FID reference features", verbose=progress,
        )  # fmt: skip

    def distance(self, a: FIDStats, b: FIDStats) -> float:
        return float(frechet_distance(a.mu, a.sigma, b.mu, b.sigma))


class TorchmetricsFID(InceptionFeatures):
    """torchmetrics' ``FrechetInceptionDistance``: torch-fidelity's Inception (bilinear resizing inside
    the network) and torchmetrics' distance, in float64."""

    def __init__(
        self, weights: str | Path | None = None, device: str | torch.device = "cpu", dims: int = 2048
    ):
        """``dims``: the pool features (2048, the standard) or an earlier block's (64, 192, 768)."""
        from torchmetrics.image.fid import FrechetInceptionDistance

        cache = Path(torch.hub.get_dir()) / "checkpoints"  # where torch-fidelity's download goes
        path = locate_weights(
            weights, TORCH_FIDELITY_FILE, cache, TORCH_FIDELITY_URL, "torch-fidelity Inception"
        )
        self.device = torch.device(device)
        self.metric = FrechetInceptionDistance(feature=dims, feature_extractor_weights_path=str(path))
        self.model = self.metric.inception.to(self.device)
        self.key = f"torchmetrics-{dims}-{file_digest(path)}"

    @torch.no_grad()
    def images(self, images: torch.Tensor) -> np.ndarray:
        return self.model(images.to(self.device)).double().cpu().numpy()  # (N, D), as the metric sums them

    def files(self, files: Sequence[Path], batch_size: int, num_workers: int, progress: bool) -> np.ndarray:
        out, batch = [], []
        for path in tqdm(files, desc="FID reference features", disable=not progress):
            with Image.open(path) as im:
                batch.append(torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1))
            # one tensor per batch: a batch closes early where the image size changes
            if len(batch) == batch_size or batch[0].shape != batch[-1].shape:
                last = batch.pop() if batch[0].shape != batch[-1].shape else None
                out.append(self.images(torch.stack(batch)))
                batch = [last] if last is not None else []
        if batch:
            out.append(self.images(torch.stack(batch)))
        return np.concatenate(out)

    def distance(self, a: FIDStats, b: FIDStats) -> float:
        from torchmetrics.image.fid import _compute_fid  # the function FrechetInceptionDistance.compute calls

        t = [torch.as_tensor(x, dtype=torch.float64) for x in (a.mu, a.sigma, b.mu, b.sigma)]
        return float(_compute_fid(*t))


def feature_extractor(
    backend: str = "clean-fid",
    weights: str | Path | None = None,
    mode: str = "clean",
    device="cpu",
    dims: int = 2048,
) -> InceptionFeatures:
    """The extractor of ``backend`` (``clean-fid`` in ``mode``, or ``torchmetrics`` with ``dims`` features)."""
    if backend == "clean-fid":
        if dims != 2048:
            raise ValueError(
                f"clean-fid's Inception gives 2048 features, not {dims}: use backend torchmetrics"
            )
        return CleanFID(weights, mode, device)
    if backend == "torchmetrics":
        return TorchmetricsFID(weights, device, dims)
    raise ValueError(f"FID backend {backend!r}: use one of {BACKENDS}")


def image_files(root: str | Path) -> list[Path]:
    """Every image under ``root`` (recursively), sorted; a one-line error when there is none."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    return files


def mjhq_categories(root: Path) -> dict[str, str] | None:
    """Image id -> category from MJHQ-30K's ``meta_data.json`` in ``root`` or beside it, if there is one."""
    for meta in (root / "meta_data.json", root.parent / "meta_data.json"):
        if meta.is_file():
            return {key: entry["category"] for key, entry in json.loads(meta.read_text()).items()}
    return None


def reference_groups(root: str | Path) -> dict[str, list[Path]]:
    """``{"": every image}``, plus each MJHQ category's images when ``meta_data.json`` names them."""
    root = Path(root)
    files = image_files(root)
    groups = {"": files}
    categories = mjhq_categories(root)
    if categories:
        for path in files:
            if path.stem in categories:
                groups.setdefault(categories[path.stem], []).append(path)
    return groups


def save_stats(path: Path, stats: dict[str, FIDStats]) -> None:
    """clean-fid's layout for the whole set (``mu``, ``sigma``), ``mu/<group>`` ... for the others."""
    arrays = {}
    for group, s in stats.items():
        suffix = f"/{group}" if group else ""
        arrays |= {f"mu{suffix}": s.mu, f"sigma{suffix}": s.sigma, f"count{suffix}": np.array(s.count)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # whole or absent: another process may read it


def load_stats(path: str | Path) -> dict[str, FIDStats]:
    """Statistics saved by :func:`save_stats`, or clean-fid's own ``mu`` / ``sigma`` file."""
    with np.load(path) as data:
        keys = set(data.files)
        if not {"mu", "sigma"} <= keys:
            raise ValueError(f"{path}: not a FID statistics file (it needs the arrays `mu` and `sigma`)")
        groups = [""] + sorted(k[3:] for k in keys if k.startswith("mu/"))
        out = {}
        for g in groups:
            suffix = f"/{g}" if g else ""
            count = int(data[f"count{suffix}"]) if f"count{suffix}" in keys else 0
            out[g] = FIDStats(data[f"mu{suffix}"], data[f"sigma{suffix}"], count)
        return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "jf_lightning" / "fid"


def reference_stats(
    reference: str | Path,
    extractor: InceptionFeatures,
    cache_dir: str | Path | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, FIDStats]:
    """The statistics of a reference set: an ``.npz`` statistics file as it is, or a folder of images
    (overall and per MJHQ category), computed once and cached by its files, the extractor and mode."""
    reference = Path(reference)
    if reference.is_file():
        return load_stats(reference)
    if not reference.is_dir():
        raise FileNotFoundError(f"FID reference {reference}: no such folder or statistics file")
    groups = reference_groups(reference)
    files = groups[""]
    listing = "\n".join(f"{p.relative_to(reference)} {p.stat().st_size}" for p in files)
    fingerprint = hashlib.sha256(f"{reference.resolve()}\n{listing}\n{sorted(groups)}".encode()).hexdigest()[
        :12
    ]
    cache = Path(cache_dir or default_cache_dir()) / f"{reference.name}-{fingerprint}-{extractor.key}.npz"
    if cache.is_file():
        return load_stats(cache)
    features = extractor.files(files, batch_size, num_workers, progress)  # (N, 2048)
    position = {path: i for i, path in enumerate(files)}
    stats = {g: FIDStats.of(features[[position[p] for p in members]]) for g, members in groups.items()}
    save_stats(cache, stats)
    return stats


def fid_scores(
    features: np.ndarray,
    reference: dict[str, FIDStats],
    extractor: InceptionFeatures,
    categories: Sequence[str | None] | None = None,
) -> dict[str, float]:
    """features: (N, D) of generated images -> ``{"": FID against the whole reference, <category>:
    FID of the images of that category against the reference's category}`` (categories the reference
    lacks, or with fewer than 2 images, are left out)."""
    out = {"": extractor.distance(FIDStats.of(features), reference[""])}
    if categories is not None:
        labels = np.array([c if c is not None else "" for c in categories])
        for category in sorted(set(labels) - {""}):
            rows = features[labels == category]
            if category in reference and len(rows) >= 2:
                out[category] = extractor.distance(FIDStats.of(rows), reference[category])
    return out
