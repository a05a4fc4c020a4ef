"""Understanding scores with each benchmark's own answer rule, and the held-out question sets the
understanding callbacks ask.

* ``exact``: exact match of :func:`normalize_answer` forms (the synthetic worlds' short answers);
* ``vqa`` (VQAv2, GQA, ...): the official VQA evaluation (GT-Vision-Lab/VQA,
  ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``): the prediction goes through its punctuation and
  digit/article processing (:func:`vqa_normalize`); with several human answers (VQAv2's ten), accuracy is
  the mean over the ten leave-one-out subsets of min(1, matching answers / 3); with one reference (GQA),
  exact match of the two processed forms;
* ``pope``: POPE's yes/no rule as LLaVA's ``eval_pope.py`` reads free answers (the first sentence;
  "no" / "not" in it is no, anything else yes), then accuracy, precision, recall, F1 with "yes" as the
  positive class, and the share of yes answers.
"""

from __future__ import annotations

import re
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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


_VQA_PUNCT = (";", ":", "/", "'", "[", "]", '"', "(", ")", "=", "+", "\\", "_", ">", "<", "@", "`", ",", "?")
_VQA_NUMBERS = {"none": "0", **{w: str(i) for i, w in enumerate(NUMBER_WORDS[:11])}}
_VQA_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_VQA_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the official pattern: a period not before a digit


def vqa_normalize(text: str) -> str:
    """The official VQA answer processing: whitespace, punctuation (dropped where it touches a space or
    the answer has a 1,000-style number, else a space), periods not before a digit, lowercase, number
    words zero..ten (and "none") as digits, articles dropped. Its contraction table ("dont" -> "don't")
    is left out: both sides of a match go through this same function here."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    glued = _VQA_COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if (p + " " in text or " " + p in text or glued) else " ")
    out = _VQA_PERIOD.sub("", out, count=32)  # the official call passes re.UNICODE (32) as the count
    words = [_VQA_NUMBERS.get(w, w) for w in out.lower().split()]
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """One question's VQA accuracy: leave-one-out min(1, matches / 3) over several human answers, or
    exact match of the processed forms against a single reference."""
    pred = vqa_normalize(prediction)
    if len(answers) == 1:
        return float(pred == vqa_normalize(answers[0]))
    # the official code processes human answers' punctuation only when they disagree
    refs = [vqa_normalize(a) if len(set(answers)) > 1 else a for a in answers]
    accs = [min(1.0, sum(r == pred for j, r in enumerate(refs) if j != i) / 3) for i in range(len(refs))]
    return sum(accs) / len(accs)


def pope_answer(text: str) -> str:
    """A free answer as POPE's yes or no: the first sentence, commas dropped; no when "no", "No" or "not"
    is one of its words."""
    first = text.split(".")[0].replace(",", "")
    return "no" if {"No", "no", "not"} & set(first.split(" ")) else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """POPE's figures, "yes" the positive class: accuracy, precision, recall, f1, yes_ratio."""
    pred = [pope_answer(p) == "yes" for p in predictions]
    gold = [pope_answer(label) == "yes" for label in labels]
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(p == g for p, g in zip(pred, gold)) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(pred) / n if n else 0.0,
    }


AnswerRule = Literal["exact", "vqa", "pope"]


def benchmark_scores(
    rule: AnswerRule, predictions: Sequence[str], answers: Sequence[Sequence[str]]
) -> dict[str, float]:
    """A benchmark's scores under its rule: ``{"": headline, "<figure>": ...}`` (the headline is the
    accuracy; POPE adds precision, recall, f1, yes_ratio). ``answers``: each question's references."""
    if len(predictions) != len(answers):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(answers)} answer lists")
    if not predictions:
        return {}
    if rule == "pope":
        scores = pope_scores(predictions, [refs[0] for refs in answers])
        return {"": scores.pop("accuracy"), **scores}
    if rule == "vqa":
        return {"": sum(vqa_accuracy(p, refs) for p, refs in zip(predictions, answers)) / len(predictions)}
    if rule == "exact":
        hits = [
            any(normalize_answer(p) == normalize_answer(r) for r in refs)
            for p, refs in zip(predictions, answers)
        ]
        return {"": sum(hits) / len(hits)}
    raise ValueError(f"unknown answer rule {rule!r}: use exact, vqa or pope")


@dataclass(frozen=True)
class Question:
    """One held-out question: its image, the human turn as the training data writes it (``"<image>\\n..."``;
    without the marker the image goes first), the reference answer and a type to report it under."""

    image: Image.Image
    question: str
    answer: str
    question_type: str
    answers: tuple[str, ...] = ()
    """Every human answer when a benchmark has several (VQAv2's ten); empty: ``answer`` alone."""

    @property
    def references(self) -> tuple[str, ...]:
        return self.answers or (self.answer,)


class QuestionSet(ABC):
    """A held-out understanding set (``UnderstandingAccuracyCallback`` asks it)."""

    @abstractmethod
    def questions(self, image_size: int) -> list[Question]:
        """The questions in a fixed order; ``image_size`` is the model's (a set that renders its
        images may draw them at that size; the training transform resizes any other)."""
