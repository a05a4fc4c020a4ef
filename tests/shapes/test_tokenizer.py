"""The shapes tokenizer: vocabulary, special tokens, round trips, and save/load through AutoTokenizer."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from jf_lightning.shapes import language
from jf_lightning.shapes import tokenizer as T
from jf_lightning.shapes import world as W


@pytest.fixture(scope="module")
def tok():
    return T.build_shapes_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=True)["input_ids"]


def test_vocabulary_size_and_ids(tok):
    assert len(tok) == len(T.vocabulary()) < T.MAX_VOCAB
    assert tok.bos_token == T.BOS_TOKEN == "<｜begin▁of▁sentence｜>"
    assert tok.eos_token == T.EOS_TOKEN == "<｜end▁of▁sentence｜>"
    assert tok.pad_token == T.PAD_TOKEN == "<｜▁pad▁｜>"
    assert tok.unk_token == "<unk>"
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    assert set(T.IMAGE_TAGS) <= set(tok.all_special_tokens)
    assert tok.convert_tokens_to_ids(list(T.SPECIAL_TOKENS)) == list(range(len(T.SPECIAL_TOKENS)))


def test_no_special_tokens_added_automatically(tok):
    ids = _ids(tok, "a red circle")
    assert ids == tok.convert_tokens_to_ids(["a", "red", "circle"])
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids


@pytest.mark.parametrize("tag", T.IMAGE_TAGS + (T.BOS_TOKEN, T.EOS_TOKEN, T.PAD_TOKEN))
def test_special_tokens_are_single_tokens(tok, tag):
    ids = _ids(tok, f"a{tag}circle")
    assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == tag


def test_template_splits_into_known_tokens(tok):
    text = f"{T.BOS_TOKEN}<|User|>: {T.IMAGE_START_TOKEN}{T.IMAGE_TOKEN}{T.IMAGE_END_TOKEN}\n{language.CAPTION_REQUEST}\n\n<|Assistant|>: a red circle{T.EOS_TOKEN}"
    toks = tok.convert_ids_to_tokens(_ids(tok, text))
    assert tok.unk_token not in toks
    assert toks[:7] == [T.BOS_TOKEN, "<", "|", "User", "|", ">", ":"]
    assert toks[-1] == T.EOS_TOKEN and "Assistant" in toks
    assert _ids(tok, "12") == tok.convert_tokens_to_ids(["1", "2"])  # digits are single tokens


def test_every_world_word_round_trips(tok):
    for word in language.all_words() + [w.capitalize() for w in language.all_words()]:
        ids = _ids(tok, word)
        assert len(ids) == 1 and ids[0] != tok.unk_token_id, word
        assert tok.decode(ids) == word


def test_world_texts_round_trip(tok):
    rng = np.random.default_rng(0)
    texts = [language.text_sample(rng) for _ in range(100)]
    for _ in range(100):
        scene = W.sample_scene(rng)
        texts += [t for qa in language.questions_for_scene(scene) for t in qa[1:]]
        texts.append(language.generation_prompt(scene, rng)[0])
    for text in texts:
        ids = _ids(tok, text)
        assert tok.unk_token_id not in ids, text
        assert tok.decode(ids) == text


def test_unknown_words_become_unk(tok):
    assert _ids(tok, "a zebra") == [tok.convert_tokens_to_ids("a"), tok.unk_token_id]


def test_save_and_load_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path))
    assert len(loaded) == len(tok) and loaded.get_vocab() == tok.get_vocab()
    text = f"{T.BOS_TOKEN}<|User|>: How many circles are there?\n\n<|Assistant|>: three.{T.EOS_TOKEN}"
    assert _ids(loaded, text) == _ids(tok, text)
    assert loaded.decode(_ids(tok, "What color is the square?")) == "What color is the square?"
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token) == (T.BOS_TOKEN, T.EOS_TOKEN, T.PAD_TOKEN)
    assert set(T.IMAGE_TAGS) <= set(loaded.all_special_tokens)
