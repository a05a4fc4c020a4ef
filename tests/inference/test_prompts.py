import pytest
import torch

from jf_lightning.data.templates import Templater
from jf_lightning.inference.prompts import (
    decode_answers,
    encode_understanding,
    generation_prompt_ids,
    understanding_prompt_ids,
)
from jf_lightning.shapes.tokenizer import build_shapes_tokenizer

T_UND, T_GEN = 3, 4


@pytest.fixture(scope="module")
def tokenizer():
    return build_shapes_tokenizer()


def _templater(tokenizer, style):
    return Templater(tokenizer, num_und_tokens=T_UND, num_gen_tokens=T_GEN, style=style)


@pytest.mark.parametrize("style", ["pretrain", "sft"])
def test_generation_prompt_is_the_training_sample_before_begin_of_image(tokenizer, style):
    templater = _templater(tokenizer, style)
    ids = generation_prompt_ids(templater, "a photo of a red circle")
    training = templater.generation("a photo of a red circle").input_ids
    assert ids[0] == templater.bos and templater.boi not in ids
    assert training[: len(ids) + 1] == ids + [templater.boi]
    words = tokenizer.convert_ids_to_tokens(ids[1:])
    prompt = ["a", "photo", "of", "a", "red", "circle"]
    assert words == (prompt if style == "pretrain" else ["User", ":", *prompt, "Assistant", ":"])


@pytest.mark.parametrize("style", ["pretrain", "sft"])
def test_understanding_prompt_plus_answer_is_the_training_sample(tokenizer, style):
    templater = _templater(tokenizer, style)
    pixels = torch.zeros(3, 8, 8)
    question = "<image>\nWhat color is the circle?"
    ids, start = understanding_prompt_ids(templater, question, pixels)
    training = templater.conversation([(question, "red")], pixels)
    answer = templater.encode(" red") + [templater.eos]
    assert training.input_ids == ids + answer  # the model continues exactly where training taught it
    assert (
        ids[start] == templater.boi and ids[start + 1 : start + 1 + T_UND] == [templater.placeholder] * T_UND
    )
    assert ids[start + 1 + T_UND] == templater.eoi


def test_encode_understanding_left_pads_and_places_slots(tokenizer):
    templater = _templater(tokenizer, "pretrain")
    questions = ["<image>\nHow many shapes are there?", "<image>\nIs the red circle left of the square?"]
    pixels = torch.randn(2, 3, 8, 8)
    batch = encode_understanding(templater, questions, pixels)
    assert batch.input_ids.shape == batch.attention_mask.shape and batch.und_slots.shape == (2, 2)
    assert batch.und_pixels is pixels
    for row, question in enumerate(questions):
        ids, start = understanding_prompt_ids(templater, question, pixels[row])
        pad = batch.input_ids.shape[1] - len(ids)
        assert batch.input_ids[row, pad:].tolist() == ids  # prompt flush right
        assert batch.input_ids[row, :pad].eq(templater.pad).all()
        assert batch.attention_mask[row].tolist() == [0] * pad + [1] * len(ids)
        assert batch.und_slots[row].tolist() == [row, pad + start]
        assert batch.input_ids[row, pad + start] == templater.boi
    assert batch.attention_mask[:, -1].eq(1).all()


def test_decode_answers_cuts_at_the_first_eos(tokenizer):
    templater = _templater(tokenizer, "pretrain")
    red, blue = templater.encode("red") + templater.encode("blue")
    eos, pad = templater.eos, templater.pad
    ids = torch.tensor([[red, eos, blue, blue], [blue, red, pad, pad], [eos, red, red, red]])
    assert decode_answers(tokenizer, ids, eos) == ["red", "blue red", ""]
    assert decode_answers(tokenizer, ids[:1], None) == ["red blue blue"]
