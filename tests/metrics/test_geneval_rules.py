"""GenEval's scoring rules (djghosh13/geneval evaluation/evaluate_images.py) on hand-built detections."""

import json

import pytest

from jf_lightning.metrics.geneval import (
    GENEVAL_METADATA,
    GENEVAL_TASKS,
    Detection,
    Detector,
    GenEvalOptions,
    evaluate_image,
    group_detections,
    load_geneval_metadata,
    relative_position,
    result_row,
    score_image,
    summarize,
    summary_scores,
)


def det(name, x=10.0, y=10.0, side=10.0, score=0.95, color=None):
    return Detection(name, (x, y, x + side, y + side), score, color)


def spec(tag, include, exclude=None):
    out = {"tag": tag, "include": include, "prompt": "p"}
    if exclude:
        out["exclude"] = exclude
    return out


def test_single_object():
    s = spec("single_object", [{"class": "circle", "count": 1}])
    assert evaluate_image([det("circle")], s) == (True, "")
    ok, why = evaluate_image([det("square")], s)
    assert not ok and "expected circle>=1, found 0" in why
    assert evaluate_image([det("circle"), det("square", x=40)], s)[0]  # extra objects are allowed


def test_confidence_threshold_is_strict_and_tag_dependent():
    s = spec("single_object", [{"class": "circle", "count": 1}])
    assert not evaluate_image([det("circle", score=0.3)], s)[0]  # GenEval keeps score > 0.3
    assert evaluate_image([det("circle", score=0.31)], s)[0]
    counting = spec("counting", [{"class": "circle", "count": 1}])
    assert not evaluate_image([det("circle", score=0.85)], counting)[0]  # counting keeps score > 0.9
    assert evaluate_image([det("circle", score=0.85)], counting, GenEvalOptions(counting_threshold=0.8))[0]


def test_two_object():
    s = spec("two_object", [{"class": "circle", "count": 1}, {"class": "triangle", "count": 1}])
    assert evaluate_image([det("circle"), det("triangle", x=40)], s)[0]
    ok, why = evaluate_image([det("circle"), det("circle", x=40)], s)
    assert not ok and "triangle" in why


def test_counting_is_exact_through_exclude():
    s = spec("counting", [{"class": "square", "count": 3}], exclude=[{"class": "square", "count": 4}])
    three = [det("square", x=x) for x in (0, 20, 40)]
    assert evaluate_image(three, s)[0]
    ok, why = evaluate_image(three[:2], s)
    assert not ok and "expected square>=3, found 2" in why
    ok, why = evaluate_image([*three, det("square", x=60)], s)
    assert not ok and "expected square<4, found 4" in why
    # a fourth square below the counting threshold is not counted
    assert evaluate_image([*three, det("square", x=60, score=0.5)], s)[0]
    # include alone is "at least"
    at_least = spec("counting", [{"class": "square", "count": 3}])
    assert evaluate_image([*three, det("square", x=60)], at_least)[0]


def test_max_objects_caps_per_class_counts():
    s = spec("counting", [{"class": "square", "count": 3}], exclude=[{"class": "square", "count": 4}])
    four = [det("square", x=x) for x in (0, 20, 40, 60)]
    assert not evaluate_image(four, s)[0]
    assert evaluate_image(four, s, GenEvalOptions(max_objects=3))[0]


def test_nms_off_by_default_and_optional():
    dup = [det("circle", score=0.99), det("circle", x=11, score=0.98)]
    assert len(group_detections(dup, "single_object")["circle"]) == 2
    assert len(group_detections(dup, "single_object", GenEvalOptions(nms_threshold=0.5))["circle"]) == 1
    grouped = group_detections(
        [det("circle", score=0.5), det("circle", score=0.9), det("circle", score=0.1)], "x"
    )
    assert [d.score for d in grouped["circle"]] == [0.9, 0.5]  # sorted, thresholded


def test_colors():
    s = spec("colors", [{"class": "circle", "count": 1, "color": "red"}])
    assert evaluate_image([det("circle", color="red")], s)[0]
    ok, why = evaluate_image([det("circle", color="blue")], s)
    assert not ok and "expected red circle>=1, found 0 red" in why
    assert not evaluate_image([det("circle", color=None)], s)[0]
    # only the most confident circle is checked: a red one with lower confidence does not help
    both = [det("circle", color="blue", score=0.99), det("circle", x=40, color="red", score=0.9)]
    assert not evaluate_image(both, s)[0]
    assert not evaluate_image(both[::-1], s)[0]  # the order is by score, not by input


def test_color_attr():
    s = spec(
        "color_attr",
        [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "green"}],
    )
    assert evaluate_image([det("circle", color="red"), det("square", x=40, color="green")], s)[0]
    ok, why = evaluate_image([det("circle", color="green"), det("square", x=40, color="red")], s)
    assert not ok and why.count("\n") == 1  # both clauses fail, both are reported


@pytest.mark.parametrize(
    "relation, dx, dy",
    [("left of", -30, 0), ("right of", 30, 0), ("above", 0, -30), ("below", 0, 30)],
)
def test_position(relation, dx, dy):
    target, obj = det("square", x=40, y=40), det("circle", x=40 + dx, y=40 + dy)
    s = spec(
        "position",
        [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": [relation, 0]}],
    )
    assert evaluate_image([target, obj], s)[0]
    opposite = det("circle", x=40 - dx, y=40 - dy)
    ok, why = evaluate_image([target, opposite], s)
    assert not ok and f"expected circle {relation} target" in why


def test_position_needs_a_matched_target():
    s = spec(
        "position",
        [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    )
    ok, why = evaluate_image([det("circle")], s)
    assert not ok and "no target for circle to be left of" in why


def test_relative_position_margin_and_diagonals():
    a = (0, 0, 10, 10)
    assert relative_position((30, 0, 40, 10), a) == {"right of"}
    # centres 2 apart, within the margin 0.1 * (10 + 10) = 2: no relation at all
    assert relative_position((2, 0, 12, 10), a) == set()
    # past the margin, the shrunk offset must exceed half the raw one: (4 - 2) / 4 is not > 0.5
    assert relative_position((4, 0, 14, 10), a) == set()
    assert relative_position((5, 0, 15, 10), a) == {"right of"}
    # a clean diagonal holds both relations; a shallow one only the dominant axis
    assert relative_position((30, 30, 40, 40), a) == {"right of", "below"}
    assert relative_position((30, 8, 40, 18), a) == {"right of"}
    assert relative_position((30, -30, 40, -20), a) == {"right of", "above"}


def test_exclude_any_clause_fails():
    s = spec("counting", [{"class": "circle", "count": 1}], exclude=[{"class": "circle", "count": 2}])
    ok, why = evaluate_image([det("circle"), det("circle", x=40)], s)
    assert not ok and "expected circle<2, found 2" in why


def test_summarize_is_a_mean_of_task_means():
    results = (
        [("counting", True)] * 3 + [("counting", False)] + [("colors", True)] * 2 + [("position", False)]
    )
    out = summarize(results)
    assert list(out) == ["counting", "colors", "position", "overall"]
    assert out["counting"] == 0.75 and out["colors"] == 1.0 and out["position"] == 0.0
    assert out["overall"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)  # not 5/7, the image mean
    assert summarize([]) == {}
    assert list(summarize([("zzz", True), ("single_object", False)])) == ["single_object", "zzz", "overall"]


def test_load_reports_file_and_line(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text(json.dumps(spec("colors", [{"class": "a", "count": 1}])) + "\n\n{oops\n")
    with pytest.raises(ValueError, match=r"meta\.jsonl:3: invalid JSON"):
        load_geneval_metadata(path)
    path.write_text('{"tag": "colors"}\n')
    with pytest.raises(ValueError, match=r"meta\.jsonl:1: .*'include'"):
        load_geneval_metadata(path)


def test_shipped_geneval_metadata_loads():
    specs = load_geneval_metadata(GENEVAL_METADATA)
    assert len(specs) == 553
    assert {s["tag"] for s in specs} == set(GENEVAL_TASKS)
    # every position clause points at an earlier include clause
    for s in specs:
        for i, req in enumerate(s["include"]):
            if "position" in req:
                assert 0 <= req["position"][1] < i
    # the real specs run through the rules: nothing detected, nothing correct
    assert not any(evaluate_image([], s)[0] for s in specs)


class ColourOnDemand(Detector):
    """Detections without colour; ``colorize`` paints them and records what it was asked."""

    classes = ("circle", "square")

    def __init__(self, detections, colour):
        self.detections, self.colour, self.asked = detections, colour, []

    def detect(self, image):
        return list(self.detections)

    def colorize(self, image, detections):
        self.asked.append([d.score for d in detections])
        return [Detection(d.class_name, d.box, d.score, self.colour) for d in detections]


def test_score_image_colours_only_the_checked_objects():
    circles = [det("circle", score=0.9), det("circle", x=40, score=0.99), det("circle", x=70, score=0.2)]
    s = spec("colors", [{"class": "circle", "count": 1, "color": "red"}])
    detector = ColourOnDemand(circles, "red")
    ok, why, grouped = score_image(detector, None, s)
    assert ok and detector.asked == [[0.99]]  # the most confident circle above threshold, alone
    assert [d.score for d in grouped["circle"]] == [0.99, 0.9] and grouped["circle"][1].color is None
    detector = ColourOnDemand(circles, "blue")
    ok, why, _ = score_image(detector, None, s)
    assert not ok and why == "expected red circle>=1, found 0 red; and 1 blue"  # GenEval's wording
    # no colour asked when the count already fails, nor for clauses without colour
    two = spec("colors", [{"class": "circle", "count": 3, "color": "red"}, {"class": "square", "count": 1}])
    detector = ColourOnDemand(circles + [det("square")], "red")
    assert not score_image(detector, None, two)[0] and detector.asked == []


def test_result_rows_and_summary_match_genevals_files():
    s1 = spec("colors", [{"class": "circle", "count": 1, "color": "red"}])
    s2 = spec("counting", [{"class": "square", "count": 2}])
    grouped = {"circle": [det("circle", score=0.5)]}
    rows = [
        result_row("a/0000.png", s1, True, "", grouped),
        result_row("a/0001.png", s1, False, "x", grouped),
        result_row("b/0000.png", s2, False, "y", {}),
    ]
    assert rows[0]["details"] == json.dumps({"circle": [[10.0, 10.0, 20.0, 20.0, 0.5]]})
    assert json.loads(rows[0]["metadata"]) == s1 and rows[2]["tag"] == "counting"
    out = summary_scores(rows)
    assert out["images"] == 3 and out["prompts"] == 2
    assert out["correct_images"] == pytest.approx(1 / 3) and out["correct_prompts"] == 0.5
    assert out["tasks"] == {"counting": 0.0, "colors": 0.5, "overall": 0.25}
