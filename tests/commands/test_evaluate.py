"""``jf eval fid`` / ``jf eval clip`` on folders: JSON on stdout and in --out, metrics in an MLflow run,
one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from jf_lightning.commands import evaluate
from jf_lightning.metrics.fid import TorchmetricsFID, fid_scores, image_files, reference_stats
from tests.eval_extractors import extractors_dir, write_images


@pytest.fixture(scope="session")
def extractors(tmp_path_factory):
    return extractors_dir(tmp_path_factory)


def test_clip_of_a_folder_as_json_into_a_new_mlflow_run(tmp_path, tmp_path_factory, capsys):
    clip = extractors_dir(tmp_path_factory, tiny=True) / "clip"
    write_images(tmp_path / "images", 3, seed=0)
    (tmp_path / "prompts.txt").write_text("a red circle\ntwo blue squares\na cat\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    capsys.readouterr()  # the fixture's building messages
    evaluate.main(["clip", "--images", str(tmp_path / "images"), "--prompts", str(tmp_path / "prompts.txt"),
                   "--model", str(clip), "--device", "cpu", "--out", str(tmp_path / "clip.json"),
                   "--experiment", "eval", "--tracking-uri", uri])  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"val/clip_score"} and printed["val/clip_score"] > 0
    assert json.loads((tmp_path / "clip.json").read_text()) == printed
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("eval").experiment_id])
    assert run.data.metrics["val/clip_score"] == pytest.approx(printed["val/clip_score"])
    # into an existing run, at a step
    evaluate.main(["clip", "--images", str(tmp_path / "images"), "--prompts", str(tmp_path / "prompts.txt"),
                   "--model", str(clip), "--device", "cpu", "--mlflow-run", run.info.run_id,
                   "--tracking-uri", uri, "--step", "7"])  # fmt: skip
    history = client.get_metric_history(run.info.run_id, "val/clip_score")
    assert sorted(m.step for m in history) == [0, 7]


@pytest.mark.slow  # the real Inception's first block at 299 px, for 4 images
def test_fid_of_a_folder_equals_the_library_path_with_mjhq_categories(extractors, tmp_path, capsys):
    meta = {}
    for category, seed in (("animals", 0), ("food", 1)):
        for path in write_images(tmp_path / "ref" / category, 2, seed=seed, smooth=category == "food"):
            meta[path.stem + category] = {"prompt": category, "category": category}
            path.rename(path.with_name(path.stem + category + ".png"))
    (tmp_path / "ref" / "meta_data.json").write_text(json.dumps(meta))
    for path in image_files(tmp_path / "ref"):  # generated = the reference's images, mirrored
        (tmp_path / "gen").mkdir(exist_ok=True)
        (tmp_path / "gen" / path.name).write_bytes(path.read_bytes())
    args = ["fid", "--images", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"), "--backend",
            "torchmetrics", "--dims", "64", "--weights", str(extractors), "--prompts",
            str(tmp_path / "ref" / "meta_data.json"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"]  # fmt: skip
    capsys.readouterr()
    evaluate.main(args)
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"val/fid/mjhq", "val/fid/mjhq/animals", "val/fid/mjhq/food"}
    assert all(abs(v) < 1e-6 for v in printed.values())  # the same images: 0
    extractor = TorchmetricsFID(extractors, dims=64)
    reference = reference_stats(tmp_path / "ref", extractor, tmp_path / "cache", progress=False)
    shifted = extractor.files(image_files(tmp_path / "ref" / "food"), 8, 0, False)
    assert fid_scores(np.concatenate([shifted, shifted]), reference, extractor)[""] > 1e-3


def test_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        evaluate.main(
            ["fid", "--images", str(tmp_path), "--reference", str(tmp_path), "--weights", str(tmp_path)]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("jf eval fid: error: clean-fid Inception weights not found at") and "\n" not in err
    with pytest.raises(SystemExit):
        evaluate.main(["nonsense"])
    assert "unknown metric 'nonsense'" in capsys.readouterr().err
