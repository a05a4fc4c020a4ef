"""The FID callback (with the CLIP score on its images) in a real ``validate`` of the tiny model:
per-category keys, and the same values on 2 DDP processes as on 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval_extractors import extractors_dir, write_images

SCRIPT = Path(__file__).with_name("fid_run.py")


def _run(tmp_path: Path, extractors: Path, devices: int) -> dict[str, float]:
    out = tmp_path / f"metrics_{devices}.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(
        [sys.executable, str(SCRIPT), "--prompts", str(tmp_path / "meta_data.json"), "--reference",
         str(tmp_path / "ref"), "--extractors", str(extractors), "--cache", str(tmp_path / "cache"),
         "--out", str(out), "--devices", str(devices)],
        check=True, env=env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    return json.loads(out.read_text())


@pytest.mark.slow  # two validate runs, one of them on 2 processes
def test_fid_callback_on_two_ddp_processes_equals_one(tmp_path, tmp_path_factory):
    extractors = extractors_dir(tmp_path_factory)  # the real Inception layout (its first block: dims 64)
    meta = {}
    for category, seed in (("animals", 0), ("food", 1)):
        for path in write_images(tmp_path / "ref" / category, 3, seed=seed, smooth=category == "food"):
            path.rename(path.with_name(f"{category}{path.stem}.png"))
            meta[f"{category}{path.stem}"] = {
                "prompt": f"a photo of a red circle {category}",
                "category": category,
            }
    (tmp_path / "meta_data.json").write_text(json.dumps(meta))
    one = _run(tmp_path, extractors, 1)
    assert set(one) == {"val/fid/mjhq", "val/fid/mjhq/animals", "val/fid/mjhq/food", "val/clip_score",
                        "val/time/fid"}  # fmt: skip
    assert one["val/fid/mjhq"] > 0 and one["val/clip_score"] > 0
    grids = list(tmp_path.glob("samples/fid_step_000000.png"))  # no logger: under the root dir
    assert grids, "the generated images' grid"
    two = _run(tmp_path, extractors, 2)  # the reference now comes from the cache rank 0 wrote
    for key in ("val/fid/mjhq", "val/fid/mjhq/animals", "val/fid/mjhq/food", "val/clip_score"):
        assert two[key] == pytest.approx(one[key], rel=1e-4), key
