"""The shapes world's held-out question set and GenEval prompt set."""

import pytest

from jf_lightning.shapes import language, world
from jf_lightning.shapes.evaluation import (
    SCORED_TYPES,
    ShapesGenEvalPrompts,
    ShapesHeldOutQuestions,
    heldout_questions,
)
from jf_lightning.shapes.geneval_specs import geneval_eval_specs
from jf_lightning.shapes.shards import sample_rng


def test_heldout_questions_are_deterministic_and_typed():
    qs = heldout_questions(seed=3, n=40)
    assert qs == heldout_questions(seed=3, n=40)
    assert qs != heldout_questions(seed=4, n=40)
    assert {q.question_type for q in qs} == set(SCORED_TYPES)  # 40 draws cover the four types
    for q in qs:
        assert q.question.startswith("<image>\n")
        qa = language.questions_for_scene(q.scene)
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


def test_the_question_set_renders_its_scenes_at_the_model_size():
    questions = ShapesHeldOutQuestions(n_questions=5, seed=2).questions(image_size=48)
    held = heldout_questions(seed=2, n=5)
    assert [q.question for q in questions] == [q.question for q in held]
    assert all(q.image.size == (48, 48) for q in questions)
    assert questions[0].image.tobytes() == held[0].image(48).tobytes()


def test_the_prompt_set_is_the_worlds_eval_specs():
    assert ShapesGenEvalPrompts(n_per_task=3, seed=1).specs() == geneval_eval_specs(1, 3)
    with pytest.raises(ValueError, match="n_per_task=0"):
        ShapesGenEvalPrompts(n_per_task=0)
