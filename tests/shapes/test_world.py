"""The shapes world: sampling, rendering, GenEval specs and texts, checked against the scene objects."""

import itertools
import math
import re
from collections import Counter

import numpy as np
import pytest

from jf_lightning.metrics.geneval import GENEVAL_TASKS
from jf_lightning.shapes import geneval_specs, language
from jf_lightning.shapes import world as W


def _scenes(n, seed=0):
    rng = np.random.default_rng(seed)
    return [W.sample_scene(rng) for _ in range(n)]


def _components(mask):
    """8-connected components of a boolean mask: list of (ys, xs) arrays (dependency-free BFS)."""
    seen = np.zeros_like(mask)
    out = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        stack, pts = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pts.append((y, x))
            for dy, dx in itertools.product((-1, 0, 1), repeat=2):
                v, u = y + dy, x + dx
                if 0 <= v < mask.shape[0] and 0 <= u < mask.shape[1] and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack.append((v, u))
        out.append(tuple(np.array(c) for c in zip(*pts)))
    return out


def test_palette_constants():
    assert W.SHAPES == ("circle", "square", "triangle")
    assert set(W.COLORS) == {"red", "green", "blue", "yellow", "purple", "black"}
    assert W.COLORS["red"] == (220, 30, 30) and W.COLORS["black"] == (20, 20, 20)
    rgb = np.array(list(W.COLORS.values()) + [W.BACKGROUND], float)
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(dists) > 100  # well separated for colour segmentation


def test_sampling_is_deterministic_by_seed():
    a, b, c = _scenes(20, seed=1), _scenes(20, seed=1), _scenes(20, seed=2)
    assert a == b
    assert a != c
    r1, r2 = np.random.default_rng(5), np.random.default_rng(5)
    assert [language.text_sample(r1) for _ in range(5)] == [language.text_sample(r2) for _ in range(5)]
    assert language.understanding_sample(a[0], np.random.default_rng(3)) == language.understanding_sample(
        b[0], np.random.default_rng(3)
    )
    g1 = [language.generation_sample(np.random.default_rng(i)) for i in range(10)]
    g2 = [language.generation_sample(np.random.default_rng(i)) for i in range(10)]
    assert g1 == g2


def test_scenes_inside_image_and_apart():
    scenes = _scenes(400)
    assert {len(s.shapes) for s in scenes} == {1, 2, 3, 4}
    for scene in scenes:
        for s in scene.shapes:
            assert s.shape in W.SHAPES and s.color in W.COLORS
            low, high = W.SIZE_RANGES[len(scene.shapes)]
            assert low <= s.size <= high
            x0, y0, x1, y1 = s.box
            assert min(x0, y0) >= W.BORDER - 1e-9 and max(x1, y1) <= 1 - W.BORDER + 1e-9
        for a, b in itertools.combinations(scene.shapes, 2):
            gap_x = max(a.box[0], b.box[0]) - min(a.box[2], b.box[2])
            gap_y = max(a.box[1], b.box[1]) - min(a.box[3], b.box[3])
            assert max(gap_x, gap_y) >= W.GAP - 1e-9


def test_constraints_and_bad_counts():
    rng = np.random.default_rng(0)
    scene = W.sample_scene(rng, 3, [{"shape": "triangle", "color": "blue"}, {"color": "red"}])
    assert len(scene.shapes) == 3
    assert any(s.shape == "triangle" and s.color == "blue" for s in scene.shapes)
    assert any(s.color == "red" for s in scene.shapes)
    with pytest.raises(ValueError):
        W.sample_scene(rng, 5)
    with pytest.raises(ValueError):
        W.sample_scene(rng, 1, [{}, {}])


@pytest.mark.parametrize("size", [32, 64])
def test_render_palette_components_and_shapes(size):
    palette = {tuple(v): k for k, v in W.COLORS.items()}
    fill_ratio = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}
    for scene in _scenes(60, seed=size):
        img = W.render_scene(scene, size)
        assert img.mode == "RGB" and img.size == (size, size)
        arr = np.asarray(img)
        colors = {tuple(c) for c in arr.reshape(-1, 3)}
        assert colors <= set(palette) | {W.BACKGROUND}
        found = []
        for rgb, name in palette.items():
            for ys, xs in _components(np.all(arr == rgb, axis=-1)):
                box = (xs.min(), ys.min(), xs.max(), ys.max())
                found.append((name, box, len(ys) / ((box[2] - box[0] + 1) * (box[3] - box[1] + 1)), xs, ys))
        assert len(found) == len(scene.shapes)  # every shape is exactly one component
        for s in scene.shapes:
            match = [f for f in found if f[0] == s.color and f[1] == W.pixel_box(s, size)]
            assert len(match) == 1, (s, found)
            ratio = match[0][2]
            assert min(fill_ratio, key=lambda k: abs(fill_ratio[k] - ratio)) == s.shape
            if s.shape == "triangle":  # apex at the top centre, base along the whole bottom edge
                (x0, y0, x1, y1), xs, ys = match[0][1], match[0][3], match[0][4]
                top, bottom = xs[ys == y0], xs[ys == y1]
                assert abs(top.mean() - (x0 + x1) / 2) <= 1 and len(top) <= 3
                assert (bottom.min(), bottom.max()) == (x0, x1)


def test_patch_labels_name_the_shape_and_colour_under_each_patch():
    # a red square on pixels 8..15 x 8..15 of a 32 px image: exactly patches (2..3, 2..3) of the 8 x 8 grid
    square = W.Shape("square", "red", (0.375, 0.375), 0.25)
    circle = W.Shape("circle", "blue", (0.75, 0.75), 0.25)
    labels = W.patch_labels(W.Scene([square, circle]), size=32, grid=8).reshape(8, 8)
    red_square = 1 + W.SHAPES.index("square") * len(W.COLOR_NAMES) + W.COLOR_NAMES.index("red")
    blue_circle = 1 + W.SHAPES.index("circle") * len(W.COLOR_NAMES) + W.COLOR_NAMES.index("blue")
    assert (labels[2:4, 2:4] == red_square).all()
    assert (labels[5:7, 5:7] == blue_circle).all()  # the circle's box is pixels 20..27: its core patches
    assert set(np.unique(labels)) == {0, red_square, blue_circle}
    assert labels.max() < W.PATCH_LABELS and (labels[:2] == 0).all()
    with pytest.raises(ValueError, match="32 px"):
        W.patch_labels(W.Scene([square]), size=32, grid=6)


def test_places():
    def at(cx, cy):
        return W.Shape("circle", "red", (cx, cy), 0.2)

    assert at(0.2, 0.5).place == "left" and at(0.8, 0.5).place == "right"
    assert at(0.5, 0.2).place == "top" and at(0.5, 0.8).place == "bottom"
    assert at(0.5, 0.5).place == "center" and at(0.2, 0.2).place == "top left"
    assert at(0.8, 0.9).place == "bottom right"
    assert at(0.2, 0.5).phrase() == "a red circle on the left"
    assert at(0.8, 0.2).phrase() == "a red circle at the top right"
    assert at(0.5, 0.5).phrase() == "a red circle in the center"
    scene = W.Scene([at(0.2, 0.5), W.Shape("square", "blue", (0.8, 0.2), 0.2)])
    assert language.caption(scene) == "a red circle on the left and a blue square at the top right"


def _holds(rel, a, b):
    """Independent of the GenEval formula: the offset points the right way and is within 60 degrees."""
    dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
    main, other = {"left of": (-dx, dy), "right of": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[rel]
    return main > 0 and main >= abs(other) / math.sqrt(3)


def test_geneval_spec_tables():
    sizes = {t: len(geneval_specs.all_geneval_specs(t)) for t in GENEVAL_TASKS}
    assert sizes == {
        "single_object": 3,
        "two_object": 6,
        "counting": 9,
        "colors": 18,
        "position": 24,
        "color_attr": 180,
    }
    by_prompt = {s["prompt"]: s for t in GENEVAL_TASKS for s in geneval_specs.all_geneval_specs(t)}
    assert by_prompt["a photo of a circle"] == {
        "tag": "single_object",
        "include": [{"class": "circle", "count": 1}],
        "prompt": "a photo of a circle",
    }
    assert by_prompt["a photo of three triangles"] == {
        "tag": "counting",
        "include": [{"class": "triangle", "count": 3}],
        "exclude": [{"class": "triangle", "count": 4}],
        "prompt": "a photo of three triangles",
    }
    assert by_prompt["a photo of a circle left of a square"]["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["left of", 0]},
    ]
    assert by_prompt["a photo of a blue square"]["include"] == [
        {"class": "square", "count": 1, "color": "blue"}
    ]
    assert by_prompt["a photo of a red circle and a green triangle"]["tag"] == "color_attr"
    assert list(by_prompt["a photo of two circles"]) == ["tag", "include", "exclude", "prompt"]


def test_geneval_spec_sampling():
    specs = geneval_specs.geneval_eval_specs(seed=0, n_per_task=8)
    assert specs == geneval_specs.geneval_eval_specs(seed=0, n_per_task=8)
    assert specs != geneval_specs.geneval_eval_specs(seed=1, n_per_task=8)
    assert Counter(s["tag"] for s in specs) == {t: 8 for t in GENEVAL_TASKS}
    many = geneval_specs.geneval_specs(np.random.default_rng(0), 10)
    for task in GENEVAL_TASKS:
        prompts = [s["prompt"] for s in many if s["tag"] == task]
        assert len(set(prompts)) == min(10, len(geneval_specs.all_geneval_specs(task)))  # distinct while possible


@pytest.mark.parametrize("task", GENEVAL_TASKS)
def test_scene_for_spec_satisfies_spec(task):
    rng = np.random.default_rng(7)
    for spec in geneval_specs.all_geneval_specs(task)[:40]:
        scene = geneval_specs.scene_for_spec(spec, rng)
        assert geneval_specs.scene_satisfies_spec(scene, spec)
        # independent check from the scene objects: exactly the included objects, colours, relations
        want = Counter(r["class"] for r in spec["include"] for _ in range(r["count"]))
        assert Counter(s.shape for s in scene.shapes) == want
        for req in spec["include"]:
            objs = scene.of_class(req["class"])
            if "color" in req:
                assert all(o.color == req["color"] for o in objs)
            if "position" in req:
                rel, target = req["position"]
                (tgt,) = scene.of_class(spec["include"][target]["class"])
                assert all(_holds(rel, o, tgt) for o in objs), (spec["prompt"], scene)
        assert spec in geneval_specs.specs_for_scene(scene)


def test_scene_satisfies_spec_rejects():
    def sh(shape, color, cx, cy):
        return W.Shape(shape, color, (cx, cy), 0.2)

    left = W.Scene([sh("circle", "red", 0.2, 0.5), sh("square", "blue", 0.8, 0.5)])
    spec = {s["prompt"]: s for s in geneval_specs.all_geneval_specs("position")}
    assert geneval_specs.scene_satisfies_spec(left, spec["a photo of a circle left of a square"])
    assert not geneval_specs.scene_satisfies_spec(left, spec["a photo of a circle right of a square"])
    assert not geneval_specs.scene_satisfies_spec(left, spec["a photo of a circle above a square"])
    colors = {s["prompt"]: s for s in geneval_specs.all_geneval_specs("colors")}
    assert geneval_specs.scene_satisfies_spec(left, colors["a photo of a red circle"])
    assert not geneval_specs.scene_satisfies_spec(left, colors["a photo of a green circle"])
    count = {s["prompt"]: s for s in geneval_specs.all_geneval_specs("counting")}
    three = W.Scene([sh("circle", "red", x, 0.5) for x in (0.15, 0.5, 0.85)])
    assert geneval_specs.scene_satisfies_spec(three, count["a photo of three circles"])
    assert not geneval_specs.scene_satisfies_spec(three, count["a photo of two circles"])  # exclude: exactly two
    assert not geneval_specs.scene_satisfies_spec(three, count["a photo of four circles"])


def _expected_answer(scene, question):
    """The answer computed from the scene objects, parsing the question independently."""
    if question == language.CAPTION_REQUEST:
        return language.caption(scene)
    words = ["zero", "one", "two", "three", "four"]
    if m := re.fullmatch(r"What color is the (\w+)\?", question):
        (obj,) = scene.of_class(m[1])
        return obj.color
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        (obj,) = [s for s in scene.shapes if s.color == m[1]]
        return obj.shape
    if question == "How many shapes are there?":
        return words[len(scene.shapes)]
    if m := re.fullmatch(r"How many (\w+) shapes are there\?", question):
        return words[sum(s.color == m[1] for s in scene.shapes)]
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return words[sum(s.shape == m[1] for s in scene.shapes)]

    def find(ref):
        parts = ref.split()
        objs = [s for s in scene.shapes if s.shape == parts[-1] and (len(parts) == 1 or s.color == parts[0])]
        assert len(objs) == 1, ref
        return objs[0]

    if m := re.fullmatch(r"Where is the ([\w ]+)\?", question):
        obj = find(m[1])
        cx, cy = obj.center
        col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
        row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
        return f"{row} {col}".strip() or "center"
    if m := re.fullmatch(r"Is the ([\w ]+?) (left of|right of|above|below) the ([\w ]+)\?", question):
        a, b = find(m[1]), find(m[3])
        return "yes" if _holds(m[2], a, b) else "no"
    raise AssertionError(f"unexpected question {question!r}")


def test_answers_match_scene():
    seen = Counter()
    for scene in _scenes(150, seed=3):
        for qtype, question, answer in language.questions_for_scene(scene):
            assert qtype in language.QUESTION_TYPES
            assert answer == _expected_answer(scene, question), (question, scene)
            seen[qtype] += 1
    assert set(seen) == set(language.QUESTION_TYPES)


def test_understanding_sample_format():
    rng = np.random.default_rng(0)
    types = Counter()
    for scene in _scenes(200, seed=4):
        sample = language.understanding_sample(scene, rng)
        human, gpt = sample["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n")
        question = human["value"][len("<image>\n") :]
        assert (sample["question_type"], question, gpt["value"]) in language.questions_for_scene(scene)
        types[sample["question_type"]] += 1
    assert set(types) == set(language.QUESTION_TYPES) and min(types.values()) > 20


def test_image_after_question_places_the_image_after_the_first_question():
    scenes = _scenes(200, seed=4)
    before = [language.understanding_sample(sc, np.random.default_rng(i)) for i, sc in enumerate(scenes)]
    after = [language.understanding_sample(sc, np.random.default_rng(i), image_after_question=1.0) for i, sc in enumerate(scenes)]
    for b, a in zip(before, after):
        question = b["conversations"][0]["value"].removeprefix("<image>\n")
        # the same question and answer (the placement draws nothing at 0 or 1), only the image moves
        assert a["conversations"][0]["value"] == question + "\n<image>"
        assert a["conversations"][1:] == b["conversations"][1:] and a["question_type"] == b["question_type"]
    mixed = [language.understanding_sample(sc, np.random.default_rng(i), image_after_question=0.5) for i, sc in enumerate(scenes)]
    last = [m["conversations"][0]["value"].endswith("\n<image>") for m in mixed]
    assert 60 < sum(last) < 140  # about half of 200
    for m, b in zip(mixed, before):  # the share is drawn after the questions: they stay the same
        assert m["conversations"][0]["value"].replace("\n<image>", "").replace("<image>\n", "") == b[
            "conversations"
        ][0]["value"].removeprefix("<image>\n")
    with pytest.raises(ValueError, match="image_after_question"):
        language.understanding_sample(scenes[0], np.random.default_rng(0), image_after_question=1.5)


def test_multi_turn_conversation_asks_different_questions_about_one_image():
    rng = np.random.default_rng(0)
    for scene in _scenes(100, seed=5):
        qa = language.questions_for_scene(scene)
        sample = language.understanding_sample(scene, rng, turns=4)
        turns = sample["conversations"]
        humans, gpts = turns[0::2], turns[1::2]
        assert [t["from"] for t in humans] == ["human"] * len(humans) and [t["from"] for t in gpts] == ["gpt"] * len(gpts)
        assert len(humans) == min(4, len(qa))  # a one-shape scene may support fewer than 4 questions
        assert humans[0]["value"].startswith("<image>\n")
        assert all("<image>" not in t["value"] for t in turns[1:])  # one image, in the first turn
        asked = [h["value"].removeprefix("<image>\n") for h in humans]
        assert len(set(asked)) == len(asked)
        pairs = {(q, a) for _, q, a in qa}
        assert all((q, g["value"]) in pairs for q, g in zip(asked, gpts))
        assert any(t == sample["question_type"] and q == asked[0] for t, q, _ in qa)


def test_more_turns_extend_the_one_turn_draw():
    # the first turn consumes the same draws as a one-turn sample, so a world keeps its first questions
    # whatever questions_per_image says
    scenes = _scenes(50, seed=6)
    for i, scene in enumerate(scenes):
        one = language.understanding_sample(scene, np.random.default_rng(i))
        four = language.understanding_sample(scene, np.random.default_rng(i), turns=4)
        assert four["conversations"][:2] == one["conversations"]
        assert four["question_type"] == one["question_type"]
    with pytest.raises(ValueError, match="turns=0"):
        language.understanding_sample(scenes[0], np.random.default_rng(0), turns=0)


def test_generation_prompts():
    n_caption = 0
    tags = Counter()
    for i in range(300):
        scene, prompt, spec = language.generation_sample(np.random.default_rng(i))
        if spec is None:
            n_caption += 1
            assert prompt == language.caption(scene)
        else:
            assert prompt == spec["prompt"] and prompt.startswith("a photo of ")
            assert geneval_specs.scene_satisfies_spec(scene, spec)
            tags[spec["tag"]] += 1
    assert 0.15 < n_caption / 300 < 0.35
    assert set(tags) == set(GENEVAL_TASKS)
    rng = np.random.default_rng(0)
    for scene in _scenes(50, seed=5):
        prompt, spec = language.generation_prompt(scene, rng)
        for s in geneval_specs.specs_for_scene(scene):
            assert geneval_specs.scene_satisfies_spec(scene, s) and sum(r["count"] for r in s["include"]) == len(
                scene.shapes
            )
        assert prompt == (spec["prompt"] if spec else language.caption(scene))


def _world_texts(n=200):
    rng = np.random.default_rng(11)
    texts = [language.text_sample(rng) for _ in range(n)]
    for scene in _scenes(n, seed=12):
        texts += [t for qa in language.questions_for_scene(scene) for t in qa[1:]]
    texts += [s["prompt"] for t in GENEVAL_TASKS for s in geneval_specs.all_geneval_specs(t)]
    return texts


def test_all_words_covers_every_text():
    vocab = set(language.all_words())
    words = {w for t in _world_texts() for w in re.findall(r"[A-Za-z]+", t)}
    assert words <= vocab, words - vocab
    assert words >= set(W.SHAPES) | set(W.COLORS) | {"yes", "no", "four", "zero"}


def test_text_samples_are_sentences():
    rng = np.random.default_rng(0)
    texts = [language.text_sample(rng) for _ in range(100)]
    assert all(2 <= t.count(".") <= 4 and t.endswith(".") for t in texts)
    assert len(set(texts)) > 90


def test_generation_and_question_mixes_shift_the_draws():
    rng = np.random.default_rng(0)
    prompts = [language.generation_sample(rng, {"colors": 1.0}) for _ in range(50)]
    assert all(spec is not None and spec["tag"] == "colors" for _, _, spec in prompts)
    rng = np.random.default_rng(0)
    types = [language.understanding_sample(W.sample_scene(rng), rng, {"color": 1.0})["question_type"] for _ in range(60)]
    # colour is asked whenever the scene supports it; other scenes fall back to a uniform choice
    assert types.count("color") > 40


def test_unknown_mix_key_is_refused_in_one_line(tmp_path):
    from jf_lightning.shapes.shards import write_shapes_world

    with pytest.raises(ValueError, match="generation_mix: 'colour'"):
        write_shapes_world(tmp_path / "w", train_samples=2, val_samples=0, generation_mix={"colour": 1.0})
    assert not (tmp_path / "w").exists()
