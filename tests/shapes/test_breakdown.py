"""The per-prompt GenEval breakdown: held-out seeds, scoring by failure kind, and checkpoint loading."""

import numpy as np
import pytest
import torch

from jf_lightning.shapes import geneval_specs, world
from jf_lightning.shapes.breakdown import (
    HELD_OUT_SEED,
    held_out_items,
    load_checkpoint_stage,
    score_images,
    summarize_outcomes,
)
from jf_lightning.shapes.detector import ShapesDetector
from jf_lightning.stages import PretrainingStage


def images_of(scenes, size=32) -> torch.Tensor:
    arrays = [np.asarray(world.render_scene(scene, size)) for scene in scenes]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8


def test_held_out_seeds_are_distinct_and_unused_by_validation():
    items = held_out_items(["colors", "single_object"], seeds_per_spec=3)
    assert len(items) == (18 + 3) * 3
    colors_alone = held_out_items(["colors"], seeds_per_spec=3)
    assert [s for _, s in items[: len(colors_alone)]] == [s for _, s in colors_alone]
    colour_seeds = [s for spec, s in items if spec["tag"] == "colors"]
    assert len(set(colour_seeds)) == len(colour_seeds)
    assert min(s for _, s in items) >= HELD_OUT_SEED > 6 * 48  # the demo's callback uses 0..287
    with pytest.raises(ValueError, match="seeds_per_spec=101"):
        held_out_items(["colors"], seeds_per_spec=101)


def test_ground_truth_scores_right_and_failures_get_their_kind():
    items = held_out_items(["colors"], seeds_per_spec=2)
    rng = np.random.default_rng(0)
    truth = score_images(items, images_of(geneval_specs.scene_for_spec(spec, rng) for spec, _ in items), ShapesDetector())
    assert np.mean([o.correct for o in truth]) >= 0.97

    blank = score_images(items[:4], images_of([world.Scene()] * 4), ShapesDetector())
    recoloured = []  # the asked shape, in another colour
    for spec, _ in items[:4]:
        req = spec["include"][0]
        other = next(c for c in world.COLOR_NAMES if c != req["color"])
        recoloured.append(geneval_specs.scene_for_spec({**spec, "include": [{**req, "color": other}]}, rng))
    wrong_colour = score_images(items[:4], images_of(recoloured), ShapesDetector())
    summary = summarize_outcomes(blank + wrong_colour)["colors"]
    assert summary["accuracy"] == 0.0 and summary["images"] == 8
    assert summary["failures"] == {"empty": 4, "colour": 4}
    with pytest.raises(ValueError, match="4 items but 3 images"):
        score_images(items[:4], images_of([world.Scene()] * 3), ShapesDetector())


def test_checkpoint_stage_loads_the_checkpoints_weights(tmp_path):
    torch.manual_seed(0)
    stage = PretrainingStage(rf_weight=7.0)
    stage.configure_model()
    with torch.no_grad():
        next(stage.model.parameters()).add_(1.0)  # weights a fresh init would not have
    path = tmp_path / "last.ckpt"
    hparams = {**stage.hparams, "_class_path": "jf_lightning.stages.PretrainingStage"}
    torch.save({"hyper_parameters": hparams, "state_dict": stage.state_dict()}, path)
    loaded = load_checkpoint_stage(path)
    assert isinstance(loaded, PretrainingStage) and loaded.hparams.rf_weight == 7.0 and not loaded.training
    for (name, a), b in zip(stage.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name

    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": {}}, path)
    with pytest.raises(ValueError, match="name stage None, not one of jf_lightning's stages"):
        load_checkpoint_stage(path)
