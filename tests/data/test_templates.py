import pytest
import torch

from jf_lightning.batch import IGNORE_INDEX
from jf_lightning.data.sources import RawSample
from jf_lightning.data.templates import CAPTION_INSTRUCTION, Templater

T_UND, T_GEN = 3, 5


def pixels():
    return torch.zeros(3, 8, 8)


@pytest.fixture
def tpl(tokenizer):
    return Templater(tokenizer, T_UND, T_GEN, "pretrain")


@pytest.fixture
def sft(tokenizer):
    return Templater(tokenizer, T_UND, T_GEN, "sft")


def targets(sample) -> list[int]:
    return [t for t in sample.labels if t != IGNORE_INDEX]


def assert_shifted(sample):
    """Every label is the next token or IGNORE_INDEX; the last position has no target."""
    assert len(sample.labels) == len(sample.input_ids) == len(sample.key_mask)
    assert sample.labels[-1] == IGNORE_INDEX
    for i, label in enumerate(sample.labels[:-1]):
        assert label in (IGNORE_INDEX, sample.input_ids[i + 1])


def und_block(t: Templater, n: int) -> list[int]:
    return [t.boi] + [t.placeholder] * n + [t.eoi]


def test_pretrain_caption_layout(tpl, tokenizer):
    s = tpl.caption("A red circle.", pixels())
    expected = (
        [tpl.bos]
        + und_block(tpl, T_UND)
        + tpl.encode(CAPTION_INSTRUCTION)
        + tpl.encode(" A red circle.")
        + [tpl.eos]
    )
    assert s.input_ids == expected
    assert_shifted(s)
    assert [sl.start for sl in s.slots] == [1] and s.slots[0].kind == "und"
    assert s.input_ids[s.slots[0].start] == tpl.boi
    assert tokenizer.decode(targets(s), skip_special_tokens=True) == "A red circle."
    assert targets(s)[-1] == tpl.eos
    # the targets are exactly the caption tokens and EOS, as a contiguous tail
    n_target = len(tpl.encode(" A red circle.")) + 1
    assert s.labels[-n_target - 1 : -1] == s.input_ids[-n_target:]
    assert all(label == IGNORE_INDEX for label in s.labels[: -n_target - 1])


def test_pretrain_qa_layout(tpl, tokenizer):
    s = tpl.conversation([("<image>\nWhat color is the circle?", "The circle is red.")], pixels())
    q = tpl.encode("\nWhat color is the circle?")
    assert s.input_ids == [tpl.bos] + und_block(tpl, T_UND) + q + tpl.encode(" The circle is red.") + [
        tpl.eos
    ]
    assert_shifted(s)
    assert tokenizer.decode(targets(s), skip_special_tokens=True) == "The circle is red."


def test_pretrain_qa_with_the_image_after_the_question(tpl, tokenizer):
    s = tpl.conversation([("What color is the circle?\n<image>", "red")], pixels())
    q = tpl.encode("What color is the circle?\n")
    assert s.input_ids == [tpl.bos] + q + und_block(tpl, T_UND) + tpl.encode(" red") + [tpl.eos]
    assert s.slots[0].start == 1 + len(q)  # the image slot follows the question
    assert_shifted(s)


def test_sft_understanding_layout_and_multi_turn(sft, tokenizer):
    turns = [("<image>\nWhat color is the circle?", "red"), ("Is it round?", "yes")]
    s = sft.conversation(turns, pixels())
    expected = (
        [sft.bos]
        + sft.encode("User: ")
        + und_block(sft, T_UND)
        + sft.encode("\nWhat color is the circle?")
        + sft.encode("\n\nAssistant:")
        + sft.encode(" red")
        + [sft.eos]
        + sft.encode("User: ")
        + sft.encode("Is it round?")
        + sft.encode("\n\nAssistant:")
        + sft.encode(" yes")
        + [sft.eos]
    )
    assert s.input_ids == expected
    assert_shifted(s)
    assert s.slots[0].start == 1 + len(sft.encode("User: "))
    assert s.input_ids[s.slots[0].start] == sft.boi
    assert tokenizer.convert_ids_to_tokens(targets(s)) == [
        "red",
        sft.tokenizer.eos_token,
        "yes",
        sft.tokenizer.eos_token,
    ]


def test_image_goes_first_without_marker(sft):
    s = sft.conversation([("What color?", "red")], pixels())
    assert s.input_ids[1 + len(sft.encode("User: "))] == sft.boi
    with pytest.raises(ValueError, match="marker"):
        sft.conversation([("<image> and <image>", "red")], pixels())


def test_sft_caption_is_a_one_turn_conversation(sft, tokenizer):
    s = sft.caption("A red circle.", pixels())
    text = tokenizer.decode(
        s.input_ids[1 + len(sft.encode("User: ")) + T_UND + 2 :], skip_special_tokens=True
    )
    assert text.startswith("Generate the caption of this picture.")
    assert tokenizer.decode(targets(s), skip_special_tokens=True) == "A red circle."


def test_generation_layouts(tpl, sft):
    s = tpl.generation(" a red square ", pixels())
    prompt = tpl.encode("a red square")
    assert s.input_ids == [tpl.bos] + prompt + [tpl.boi] + [tpl.placeholder] * T_GEN
    assert s.slots[0].kind == "gen" and s.slots[0].start == 1 + len(prompt)
    assert all(label == IGNORE_INDEX for label in s.labels) and all(s.key_mask) and not s.prompt_dropped
    s = sft.generation("a red square", pixels())
    head = sft.encode("User: a red square\n\nAssistant:")
    assert s.input_ids == [sft.bos] + head + [sft.boi] + [sft.placeholder] * T_GEN


@pytest.mark.parametrize("style", ["pretrain", "sft"])
def test_prompt_drop_pads_and_masks_exactly_the_prompt(tokenizer, style):
    t = Templater(tokenizer, T_UND, T_GEN, style)
    kept, dropped = (
        t.generation("a red square", pixels()),
        t.generation("a red square", pixels(), drop_prompt=True),
    )
    boi = kept.slots[0].start
    assert dropped.slots[0].start == boi and len(dropped) == len(kept) and dropped.prompt_dropped
    assert dropped.input_ids[0] == t.bos and dropped.key_mask[0]
    assert dropped.input_ids[1:boi] == [t.pad] * (boi - 1)
    assert dropped.key_mask[1:boi] == [False] * (boi - 1)
    assert dropped.input_ids[boi:] == kept.input_ids[boi:] and all(dropped.key_mask[boi:])


def test_text_labels_every_token_after_bos(tpl, tokenizer):
    s = tpl.text("There is one red triangle.")
    assert s.input_ids[0] == tpl.bos and s.input_ids[-1] == tpl.eos
    assert s.labels == s.input_ids[1:] + [IGNORE_INDEX]
    assert tokenizer.decode(targets(s), skip_special_tokens=True) == "There is one red triangle."
    assert len(tpl.text("There is one red triangle.", max_len=4)) == 4


def test_from_raw_dispatch(tpl):
    und = RawSample("und", "k", "u", text="A red circle.")
    assert tpl.from_raw(und, pixels()).slots[0].kind == "und"
    qa = RawSample("und", "k", "u", turns=[("<image>What color?", "red")])
    assert len(targets(tpl.from_raw(qa, pixels()))) == 2
    import numpy as np

    gen = RawSample("gen", "k", "u", text="a red square", latent=np.ones((4, 2, 2), np.float16))
    s = tpl.from_raw(gen, None, drop_prompt=True)
    assert s.prompt_dropped and s.slots[0].latent.dtype == torch.float32 and s.slots[0].pixels is None


def test_tokenizer_without_image_tags_is_refused(tokenizer):
    class NoTags:
        bos_token_id, eos_token_id, pad_token_id, unk_token_id = 0, 1, 2, 3

        def convert_tokens_to_ids(self, tokens):
            return [3 for _ in tokens]

    with pytest.raises(ValueError, match="begin_of_image"):
        Templater(NoTags(), T_UND, T_GEN)


def _byte_level_bpe():
    """A small byte-level BPE tokenizer (the GPT-2 / Llama-3 family's pre-tokenizer) with the image tags."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<bos>", "<eos>", "<pad>", "<begin_of_image>", "<end_of_image>", "<image_placeholder>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["a red square above a blue circle", "What colour is the shape? Answer: green.", "ünïcödé tëxt"] * 50
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=special))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        additional_special_tokens=special[3:],
    )  # fmt: skip


@pytest.mark.parametrize("which", ["shapes", "byte_level_bpe"])
def test_encode_gives_the_tokenizers_own_ids(tokenizer, which):
    tok = tokenizer if which == "shapes" else _byte_level_bpe()
    templater = Templater(tok, T_UND, T_GEN)
    assert templater._backend is not None  # the fast path is the one under test
    texts = [
        "a red square", " a red square", "\n\nAssistant:", "User: what colour?", "two  spaces",
        "ünïcödé tëxt 🙂", "<image_placeholder> inside text", "what is <begin_of_image> here", "",
    ]  # fmt: skip
    for text in texts:
        assert templater.encode(text) == (tok.encode(text, add_special_tokens=False) if text else [])
