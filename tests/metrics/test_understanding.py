import pytest

from jf_lightning.metrics.understanding import exact_match_accuracy, normalize_answer


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
