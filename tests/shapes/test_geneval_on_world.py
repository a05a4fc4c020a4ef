"""The bar: ShapesDetector + GenEval's rules score >= 0.98 overall on ground-truth images of the world."""

import numpy as np
import pytest

from jf_lightning.metrics.geneval import GENEVAL_TASKS, evaluate_image, summarize
from jf_lightning.shapes import geneval_specs
from jf_lightning.shapes.detector import ShapesDetector

world = pytest.importorskip("jf_lightning.shapes.world")


@pytest.mark.parametrize("size", [32, 64])
def test_ground_truth_images_score_at_least_098(size):
    detector = ShapesDetector()
    specs = geneval_specs.geneval_eval_specs(seed=0, n_per_task=32)
    rng = np.random.default_rng(size)
    results, failures = [], []
    for spec in specs:
        image = world.render_scene(geneval_specs.scene_for_spec(spec, rng), size)
        correct, reason = evaluate_image(detector.detect(image), spec)
        results.append((spec["tag"], correct))
        if not correct:
            failures.append(f"{spec['prompt']}: {reason}")
    scores = summarize(results)
    assert set(scores) == {*GENEVAL_TASKS, "overall"}
    assert scores["overall"] >= 0.98, (scores, failures[:10])
