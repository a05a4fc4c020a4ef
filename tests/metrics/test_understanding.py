import pytest

from jf_lightning.metrics.understanding import (
    benchmark_scores,
    exact_match_accuracy,
    normalize_answer,
    pope_answer,
    pope_scores,
    vqa_accuracy,
    vqa_normalize,
)


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


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Two.", "2"),
        ("2", "2"),
        ("  The Top-Left! ", "top left"),
        ("a red circle", "red circle"),
        ("twenty", "20"),
        ("Yes", "yes"),
        ("", ""),
    ],
)
def test_normalize_answer(text, normal):
    assert normalize_answer(text) == normal


def test_number_words_and_digits_match_both_ways():
    assert normalize_answer("three") == normalize_answer("3") == normalize_answer("Three!")
    assert normalize_answer("three") != normalize_answer("four")


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Two.", "2"),  # digits, final period
        ("  The dog's bone\n", "dog s bone"),  # an apostrophe between letters becomes a space
        ("1,000", "1000"),  # a number's comma is dropped
        ("yes, it is", "yes it is"),  # punctuation before a space is dropped
        ("hi-there!", "hi-there!"),  # '-' and '!' are not in the official list
        ("3.5", "3.5"),  # a period before a digit stays
        ("none", "0"),
    ],
)
def test_vqa_normalize_follows_the_official_processing(text, normal):
    assert vqa_normalize(text) == normal


def test_vqa_accuracy_leave_one_out_over_ten_answers():
    answers = ["2"] * 3 + ["3"] * 7
    # the 3 subsets that drop a "2" hold two matches (2/3); the 7 others hold three (1)
    assert vqa_accuracy("two", answers) == pytest.approx((3 * 2 / 3 + 7) / 10)
    assert vqa_accuracy("3", answers) == 1.0
    assert vqa_accuracy("4", answers) == 0.0
    one = ["red"] + ["blue"] * 9  # one human agrees: 9 subsets at 1/3, the one without it at 0
    assert vqa_accuracy("Red.", one) == pytest.approx(0.3)
    assert vqa_accuracy("The table", ["table"]) == 1.0 and vqa_accuracy("tables", ["table"]) == 0.0  # GQA


@pytest.mark.parametrize(
    ("text", "label"),
    [("Yes, there is a dog.", "yes"), ("No.", "no"), ("There is not a dog in the image", "no"),
     ("Yes. No dogs were harmed.", "yes"), ("no", "no"), ("I see a cat", "yes")],
)  # fmt: skip
def test_pope_answer_reads_the_first_sentence(text, label):
    assert pope_answer(text) == label


def test_pope_scores_and_benchmark_rules():
    preds = ["yes", "Yes, a cup.", "no", "No.", "yes", "no"]
    labels = ["yes", "yes", "yes", "no", "no", "no"]  # TP 2, FN 1, TN 2, FP 1
    scores = pope_scores(preds, labels)
    assert scores == pytest.approx(
        {"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.5}
    )
    assert benchmark_scores("pope", preds, [[x] for x in labels])[""] == pytest.approx(4 / 6)
    assert benchmark_scores("vqa", ["two", "4"], [["2"] * 10, ["3"]]) == {"": 0.5}
    assert benchmark_scores("exact", ["Red."], [["red"]]) == {"": 1.0}
    assert benchmark_scores("vqa", [], []) == {}
    with pytest.raises(ValueError, match="unknown answer rule"):
        benchmark_scores("bleu", ["a"], [["a"]])
