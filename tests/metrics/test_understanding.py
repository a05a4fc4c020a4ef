import pytest

from jf_lightning.data import shapes_world as world
from jf_lightning.data.shapes_shards import sample_rng
from jf_lightning.metrics.understanding import SCORED_TYPES, exact_match_accuracy, heldout_questions


def test_exact_match_accuracy_overall_and_per_type():
    scores = exact_match_accuracy(
        predictions=["Red.", "3", "square", "left", "no"],
        references=["red", "three", "circle", "left", "yes"],
        types=["color", "count", "shape", "position", "position"],
    )
    assert scores == {
        "und_accuracy": 3 / 5,
        "und_accuracy/color": 1.0,
        "und_accuracy/count": 1.0,
        "und_accuracy/position": 0.5,
        "und_accuracy/shape": 0.0,
    }


def test_exact_match_is_exact_after_normalisation():
    scores = exact_match_accuracy(["red circle", "re d", "two shapes"], ["red", "red", "two"], ["color"] * 3)
    assert scores["und_accuracy"] == 0.0


def test_exact_match_accuracy_edge_cases():
    assert exact_match_accuracy([], [], []) == {}
    with pytest.raises(ValueError, match="lengths differ"):
        exact_match_accuracy(["a"], ["a", "b"], ["color"])


def test_heldout_questions_are_deterministic_and_typed():
    qs = heldout_questions(seed=3, n=40)
    assert qs == heldout_questions(seed=3, n=40)
    assert qs != heldout_questions(seed=4, n=40)
    assert {q.question_type for q in qs} == set(SCORED_TYPES)  # 40 draws cover the four types
    for q in qs:
        assert q.question.startswith("<image>\n")
        qa = world.questions_for_scene(q.scene)
        assert (q.question_type, q.question.removeprefix("<image>\n"), q.answer) in qa
    assert qs[0].image(32).size == (32, 32)


def test_heldout_questions_respect_the_type_filter():
    qs = heldout_questions(seed=0, n=12, types=("color",))
    assert {q.question_type for q in qs} == {"color"}
    with pytest.raises(ValueError, match="subset"):
        heldout_questions(seed=0, n=1, types=("colour",))


def test_heldout_questions_place_the_image_as_the_world_does():
    first, last = heldout_questions(seed=0, n=20), heldout_questions(seed=0, n=20, image_after_question=1.0)
    for a, b in zip(first, last):
        assert a.scene == b.scene and a.answer == b.answer
        assert b.question == a.question.removeprefix("<image>\n") + "\n<image>"


def test_heldout_scenes_are_not_the_training_shards_scenes():
    # the shard writer draws und sample i from sample_rng(seed, split, "und", i)
    qs = heldout_questions(seed=0, n=20)
    for split in ("train", "val"):
        shard_scenes = [world.sample_scene(sample_rng(0, split, "und", i)) for i in range(20)]
        assert all(q.scene != s for q, s in zip(qs, shard_scenes))
