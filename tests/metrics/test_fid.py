"""FID through the libraries: clean-fid's TorchScript Inception and torch-fidelity's, both random in
the real architecture and loaded by the libraries' own loaders, against the libraries' own FID."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cleanfid.fid import compare_folders
from cleanfid.inception_torchscript import InceptionV3W

from jf_lightning.inference.images import from_pil
from jf_lightning.metrics import fid
from jf_lightning.metrics.fid import (
    CleanFID,
    FIDStats,
    InceptionFeatures,
    MissingWeightsError,
    TorchmetricsFID,
    fid_scores,
    image_files,
    reference_stats,
)
from tests.eval_extractors import extractors_dir, write_images


@pytest.fixture(scope="session")
def extractors(tmp_path_factory):
    return extractors_dir(tmp_path_factory)


def _tensors(paths) -> torch.Tensor:
    from PIL import Image

    return from_pil([Image.open(p) for p in paths])  # (N, 3, H, W) uint8


@pytest.mark.slow  # Inception at 299 px: seconds an image on a CPU
def test_clean_fid_equals_clean_fids_own_compare_folders(extractors, tmp_path):
    real, fake = tmp_path / "real", tmp_path / "fake"
    write_images(real, 2, seed=0)  # two images a set: a covariance, at Inception's seconds per image
    write_images(fake, 2, seed=1, smooth=True)
    extractor = CleanFID(extractors)
    reference = reference_stats(real, extractor, cache_dir=tmp_path / "cache", progress=False)
    # generated images arrive as tensors; clean-fid reads the same images from their files below
    in_memory = extractor.images(_tensors(image_files(fake)))  # (2, 2048)
    ours = fid_scores(in_memory, reference, extractor)[""]
    theirs = compare_folders(
        str(fake), str(real), InceptionV3W(str(extractors), download=False), mode="clean", num_workers=0,
        batch_size=8, device=torch.device("cpu"), verbose=False,
    )  # fmt: skip
    assert ours > 1.0  # random features still tell noise from gradients
    assert ours == pytest.approx(theirs, rel=1e-5)


@pytest.mark.slow  # two of scipy's 2048 x 2048 matrix square roots: seconds each, minutes on a busy CPU
def test_a_set_against_itself_is_zero_and_in_memory_images_match_their_files(tmp_path, tmp_path_factory):
    extractor = CleanFID(extractors_dir(tmp_path_factory, tiny=True))
    files = write_images(tmp_path / "real", 4, seed=0)
    from_files = extractor.files(files, 8, 0, False)  # clean-fid's own reading and resizing
    in_memory = extractor.images(_tensors(files))
    np.testing.assert_allclose(in_memory, from_files, rtol=1e-5, atol=1e-6)
    reference = reference_stats(tmp_path / "real", extractor, cache_dir=tmp_path / "cache", progress=False)
    other = extractor.images(_tensors(write_images(tmp_path / "fake", 4, seed=1, smooth=True)))
    assert (
        fid_scores(in_memory, reference, extractor)[""] < 1e-3 * fid_scores(other, reference, extractor)[""]
    )


@pytest.mark.slow
def test_torchmetrics_backend_equals_frechet_inception_distance(extractors, tmp_path):
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = _tensors(write_images(tmp_path / "real", 2, seed=0))
    fake = _tensors(write_images(tmp_path / "fake", 2, seed=1, smooth=True))
    # The first block's 64 features: the same code path as the pool's 2048, without two 2048 x 2048
    # matrix roots (about a minute each on 2 cores).
    extractor = TorchmetricsFID(extractors, dims=64)
    reference = reference_stats(tmp_path / "real", extractor, cache_dir=tmp_path / "cache", progress=False)
    ours = fid_scores(extractor.images(fake), reference, extractor)[""]
    metric = FrechetInceptionDistance(
        feature=64, feature_extractor_weights_path=str(extractors / fid.TORCH_FIDELITY_FILE)
    )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert ours > 1.0
    assert ours == pytest.approx(metric.compute().item(), rel=1e-4)


class ColourMeans(InceptionFeatures):
    """A stand-in extractor (the mean and spread of each colour channel) that counts its files."""

    key = "colour-means"

    def __init__(self):
        self.files_read = 0

    def images(self, images):
        x = images.double()
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1).numpy()  # (N, 6)

    def files(self, files, batch_size, num_workers, progress):
        self.files_read += len(files)
        return self.images(_tensors(files))

    def distance(self, a, b):
        return float(np.square(a.mu - b.mu).sum())


def test_mjhq_reference_has_per_category_stats_and_is_computed_once(tmp_path):
    root = tmp_path / "mjhq"
    meta = {}
    for category, seed in [("animals", 0), ("food", 1)]:
        for path in write_images(root / "mjhq30k_imgs" / category, 3, seed=seed, smooth=category == "food"):
            path.rename(path.with_name(f"{category}{path.stem}.jpg"))  # MJHQ's ids are file stems
            meta[f"{category}{path.stem}"] = {"category": category, "prompt": f"a {category} picture"}
    (root / "meta_data.json").write_text(json.dumps(meta))
    extractor = ColourMeans()
    stats = reference_stats(root / "mjhq30k_imgs", extractor, cache_dir=tmp_path / "cache", progress=False)
    assert set(stats) == {"", "animals", "food"} and stats[""].count == 6 and stats["food"].count == 3
    assert extractor.files_read == 6
    again = reference_stats(root / "mjhq30k_imgs", extractor, cache_dir=tmp_path / "cache", progress=False)
    assert extractor.files_read == 6  # from the cache
    np.testing.assert_array_equal(again["food"].sigma, stats["food"].sigma)
    # the cache is a statistics file: given as the reference, it is read as it is
    (cache,) = (tmp_path / "cache").glob("*.npz")
    assert reference_stats(cache, extractor)["animals"].count == 3
    # per-category FID: generated images of one category against that category's reference
    food = extractor.images(_tensors(sorted((root / "mjhq30k_imgs" / "food").glob("*.jpg"))))
    scores = fid_scores(np.concatenate([food, food]), stats, extractor, ["food"] * 3 + ["animals"] * 3)
    assert scores["food"] == pytest.approx(0, abs=1e-9) and scores["animals"] > 1


def test_a_clean_fid_statistics_file_is_a_reference(tmp_path):
    np.savez(tmp_path / "custom_clean_custom_na.npz", mu=np.zeros(6), sigma=np.eye(6))
    stats = reference_stats(tmp_path / "custom_clean_custom_na.npz", ColourMeans())
    assert set(stats) == {""} and stats[""].sigma.shape == (6, 6)


def test_missing_weights_name_the_file_and_where_it_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "CLEAN_FID_CACHE", tmp_path / "cache")
    with pytest.raises(MissingWeightsError, match=r"cache/inception-2015-12-05\.pt: download https://\S+"):
        CleanFID()
    with pytest.raises(MissingWeightsError, match=r"elsewhere/inception-2015-12-05\.pt"):
        CleanFID(tmp_path / "elsewhere")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(
        MissingWeightsError, match=r"torch/hub/checkpoints/weights-inception-2015-12-05-6726825d\.pth"
    ):
        TorchmetricsFID()


def test_stats_need_two_images_and_folders_an_image():
    with pytest.raises(ValueError, match="at least 2 images"):
        FIDStats.of(np.zeros((1, 4)))
    with pytest.raises(FileNotFoundError, match="no images"):
        image_files(".github-does-not-exist")
