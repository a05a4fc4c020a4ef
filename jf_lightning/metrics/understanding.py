"""Understanding accuracy: exact match of normalised short answers, overall and per question type; and
the held-out question sets the understanding callback asks."""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)  # fmt: skip
_WORD_TO_DIGITS = {w: str(i) for i, w in enumerate(NUMBER_WORDS)}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Exact-match form: lowercase, punctuation removed, number words as digits, articles dropped,
    single spaces ("Two." -> "2", "the top left" -> "top left", "3" -> "3")."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(_WORD_TO_DIGITS.get(w, w) for w in words if w not in _ARTICLES)


def exact_match_accuracy(
    predictions: Sequence[str], references: Sequence[str], types: Sequence[str]
) -> dict[str, float]:
    """``{"und_accuracy": mean, "und_accuracy/<type>": mean per type}`` over normalised exact matches.
    Empty input gives an empty dict (nothing to log rather than a fake 0)."""
    if not len(predictions) == len(references) == len(types):
        raise ValueError(
            f"lengths differ: {len(predictions)} predictions, {len(references)} references, {len(types)} types"
        )
    hits: dict[str, list[bool]] = {}
    for pred, ref, qtype in zip(predictions, references, types):
        hits.setdefault(qtype, []).append(normalize_answer(pred) == normalize_answer(ref))
    if not hits:
        return {}
    everything = [h for per_type in hits.values() for h in per_type]
    scores = {"und_accuracy": sum(everything) / len(everything)}
    scores.update({f"und_accuracy/{t}": sum(hits[t]) / len(hits[t]) for t in sorted(hits)})
    return scores


@dataclass(frozen=True)
class Question:
    """One held-out question: its image, the human turn as the training data writes it (``"<image>\\n..."``;
    without the marker the image goes first), the reference answer and a type to report it under."""

    image: Image.Image
    question: str
    answer: str
    question_type: str


class QuestionSet(ABC):
    """A held-out understanding set (``UnderstandingAccuracyCallback`` asks it)."""

    @abstractmethod
    def questions(self, image_size: int) -> list[Question]:
        """The questions in a fixed order; ``image_size`` is the model's (a set that renders its
        images may draw them at that size; the training transform resizes any other)."""
