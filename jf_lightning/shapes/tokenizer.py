"""The shapes-world tokenizer: a word-level tokenizer over the world's vocabulary, built offline.

It stands in for the LLM's tokenizer in tiny runs and tests, with the released JanusFlow's special
tokens (DeepSeek's sentence tokens and the image tags). Encoding never adds special tokens: the data
pipeline writes BOS/EOS and image tags itself, so what it writes is exactly what the model sees.

Text is split on whitespace, then every ASCII punctuation character and every digit is a token of its
own. Decoding joins tokens with single spaces and removes the space before ``. , ? !``, so world texts
(single-spaced, lowercase or capitalised words, no space before punctuation) round-trip exactly.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from jf_lightning.shapes.language import all_words

BOS_TOKEN = "<｜begin▁of▁sentence｜>"
EOS_TOKEN = "<｜end▁of▁sentence｜>"
PAD_TOKEN = "<｜▁pad▁｜>"
UNK_TOKEN = "<unk>"
IMAGE_START_TOKEN = "<begin_of_image>"
IMAGE_END_TOKEN = "<end_of_image>"
IMAGE_TOKEN = "<image_placeholder>"
IMAGE_TAGS = (IMAGE_START_TOKEN, IMAGE_END_TOKEN, IMAGE_TOKEN)
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, *IMAGE_TAGS)
TEMPLATE_WORDS = ("User", "Assistant")  # JanusFlow's "<|User|>: ... <|Assistant|>:" roles
MAX_VOCAB = 512  # the tiny model's vocab_size


def vocabulary() -> list[str]:
    """All tokens in id order: special tokens, punctuation, digits, then words (each also capitalised)."""
    words = set(all_words()) | set(TEMPLATE_WORDS)
    words |= {w[:1].upper() + w[1:] for w in words}
    return [*SPECIAL_TOKENS, *string.punctuation, *string.digits, *sorted(words)]


def build_shapes_tokenizer() -> PreTrainedTokenizerFast:
    """The tokenizer (fewer than MAX_VOCAB tokens; no automatic special tokens). Save it with
    ``save_pretrained(dir)``; ``AutoTokenizer.from_pretrained(dir)`` loads it back."""
    vocab = vocabulary()
    if len(vocab) >= MAX_VOCAB or len(set(vocab)) != len(vocab):
        raise AssertionError(
            f"shapes vocabulary has {len(vocab)} tokens; it must be unique and < {MAX_VOCAB}"
        )
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation("isolated"),
            pre_tokenizers.Digits(individual_digits=True),
        ]
    )
    # WordPiece's decoder joins with spaces and its cleanup drops the space before . , ? !
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.post_processor = None
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=list(IMAGE_TAGS),
        clean_up_tokenization_spaces=False,
    )
