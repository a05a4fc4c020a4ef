"""The shapes world's prepared inputs: ready only once made with the same settings, made idempotently,
and a directory holding something else is a one-line error, never overwritten."""

from __future__ import annotations

import pytest

from jf_lightning.inputs import UserInputError, check_ready
from jf_lightning.shapes.prepare import ShapesSiglip, ShapesWorld

WORLD = {"train_samples": 16, "val_samples": 4, "image_size": 32, "samples_per_shard": 8}


def test_world_then_siglip_are_ready_once_prepared(tmp_path):
    world = ShapesWorld(str(tmp_path / "w"), **WORLD)
    siglip = ShapesSiglip(str(tmp_path / "s"), world=str(tmp_path / "w"), steps=2, batch_size=4)
    assert not world.ready() and not siglip.ready()  # the SigLIP's world is not there yet either
    with pytest.raises(UserInputError, match=rf"{tmp_path / 'w'} is missing \(ShapesWorld .*`jf prepare`"):
        check_ready([world, siglip], "jf prepare")
    world.prepare()
    assert world.ready() and not siglip.ready()
    siglip.prepare()
    assert siglip.ready()
    check_ready([world, siglip], "jf prepare")
    record = (tmp_path / "s" / "pretraining.json").read_text()
    world.prepare(), siglip.prepare()  # idempotent: nothing is redone
    assert (tmp_path / "s" / "pretraining.json").read_text() == record


def test_a_directory_holding_other_settings_is_one_line_and_kept(tmp_path):
    ShapesWorld(str(tmp_path / "w"), **WORLD).prepare()
    other = ShapesWorld(str(tmp_path / "w"), **{**WORLD, "seed": 5})
    with pytest.raises(UserInputError, match="holds a shapes world with other parameters"):
        other.ready()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(UserInputError, match="is not empty"):
        ShapesWorld(str(tmp_path / "mine"), **WORLD).ready()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"


def test_bad_settings_are_refused_when_checked(tmp_path):
    with pytest.raises(UserInputError, match="question_mix"):
        ShapesWorld(str(tmp_path / "w"), question_mix={"colour": 1.0}).ready()
