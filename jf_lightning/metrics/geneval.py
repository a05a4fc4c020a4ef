"""GenEval's scoring rules as pure functions: detections + a prompt's metadata -> correct or not.

Our own implementation of the rules in djghosh13/geneval, ``evaluation/evaluate_images.py``
(``evaluate_image``, ``evaluate``, ``relative_position``; read at commit af4902f) and
``evaluation/summary_scores.py`` (the overall score). The detector is not here: any :class:`Detector`
(Mask2Former + CLIP colours for real images, the shapes world's classical detector) yields the
:class:`Detection` objects these rules score; a :class:`GenEvalPrompts` names the prompts to score.

The rules, in short:

* Per class, detections are kept when ``score > threshold`` (0.3; 0.9 for the ``counting`` task),
  most confident first, at most ``max_objects`` (16) per class, then greedy NMS at ``nms_threshold``
  (GenEval's default 1.0 switches NMS off).
* ``include`` clauses are ANDed. A clause takes the ``count`` most confident objects of its class and
  fails when fewer were found (so include alone is "at least count"). With ``color``, all of those
  objects must have that colour. With ``position: [relation, i]``, every one of them must stand in
  ``relation`` to every object matched by include clause ``i`` (which must itself have matched).
* ``exclude`` clauses are ORed: a clause fails the image when ``count`` or more objects of its class
  were found. The counting task pairs ``include count=N`` with ``exclude count=N+1``: exactly N.
* ``overall`` is the mean of the per-task accuracies, not the mean over images.
* Colour is asked of a detector only for the objects a colour clause checks (the top ``count`` of its
  class, once the count holds): :func:`score_image` calls :meth:`Detector.colorize` on just those, as
  GenEval classifies colour lazily inside ``evaluate``; the position test runs only when the colour held.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

GENEVAL_METADATA = Path(__file__).parent / "geneval_data" / "evaluation_metadata.jsonl"
"""GenEval's 553 prompts, shipped with the package (GenEval's MIT licence next to it)."""
GENEVAL_TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
RELATIONS = ("left of", "right of", "above", "below")
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
"""The colours GenEval's CLIP classifier chooses among, in its order (ties go to the first)."""
COLOR_TEMPLATES = (
    "a photo of a {color} {object}",
    "a photo of a {color}-colored {object}",
    "a photo of a {color} object",
)
"""GenEval's three zero-shot prompts per colour (their text embeddings are averaged)."""

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object, in the pixel coordinates of the scored image."""

    class_name: str
    box: Box
    """(x0, y0, x1, y1) in pixels, y pointing down."""
    score: float
    """Detector confidence in [0, 1]."""
    color: str | None = None
    """Colour name (GenEval's vocabulary), or None when the detector does not classify colour."""
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    """Optional boolean instance mask, H x W."""


class Detector(ABC):
    """Finds GenEval objects in an RGB image. ``classes`` names what it can find."""

    classes: Sequence[str]

    @abstractmethod
    def detect(self, image: Image.Image | np.ndarray) -> list[Detection]:
        """Detections in the pixel coordinates of ``image`` (PIL image or H x W x 3 uint8 array)."""

    def colorize(self, image: Image.Image | np.ndarray, detections: list[Detection]) -> list[Detection]:
        """``detections`` (of one class) with ``color`` set. This default keeps the colours ``detect``
        gave; a detector whose colour model is costly (CLIP) classifies here, only what a clause checks."""
        return detections


class GenEvalPrompts(ABC):
    """A GenEval prompt set: metadata dicts (``tag``, ``include``, optional ``exclude``, ``prompt``)."""

    @abstractmethod
    def specs(self) -> list[dict[str, Any]]:
        """The prompt specs, in a fixed order (image ``i`` is drawn with noise seed ``seed + i``)."""


class GenEvalMetadataFile(GenEvalPrompts):
    """Prompts from a GenEval ``evaluation_metadata.jsonl``: every line, or the first ``n_per_task`` of
    each task (in file order)."""

    def __init__(self, path: str | None = None, n_per_task: int | None = None):
        """``path``: null reads GenEval's 553 prompts shipped with the package."""
        if n_per_task is not None and n_per_task < 1:
            raise ValueError(f"n_per_task={n_per_task} must be >= 1 (or null for every prompt)")
        self.path, self.n_per_task = path or GENEVAL_METADATA, n_per_task

    def specs(self) -> list[dict[str, Any]]:
        specs = load_geneval_metadata(self.path)
        if self.n_per_task is None:
            return specs
        taken: dict[str, int] = {}
        out = []
        for spec in specs:
            if taken.get(spec["tag"], 0) < self.n_per_task:
                taken[spec["tag"]] = taken.get(spec["tag"], 0) + 1
                out.append(spec)
        return out


@dataclass(frozen=True)
class GenEvalOptions:
    """The thresholds of GenEval's ``--options`` (its defaults)."""

    threshold: float = 0.3
    """Keep a detection when its score is strictly above this."""
    counting_threshold: float = 0.9
    """The same, for prompts tagged ``counting`` (GenEval is stricter there)."""
    max_objects: int = 16
    """At most this many detections per class, most confident first."""
    nms_threshold: float = 1.0
    """Drop a detection whose IoU with a kept one of its class is >= this; 1.0 disables NMS."""
    position_threshold: float = 0.1
    """Margin of the relative-position test, as a fraction of the two boxes' summed sizes."""


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes with exclusive ends (GenEval adds 1 to widths: inclusive ends)."""
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def group_detections(
    detections: Iterable[Detection], tag: str, options: GenEvalOptions = GenEvalOptions()
) -> dict[str, list[Detection]]:
    """Per class: threshold, sort by confidence, cap at ``max_objects``, then greedy NMS."""
    threshold = options.counting_threshold if tag == "counting" else options.threshold
    by_class: dict[str, list[Detection]] = {}
    for det in detections:
        if det.score > threshold:
            by_class.setdefault(det.class_name, []).append(det)
    grouped = {}
    for name, dets in by_class.items():
        # stable sort: equal scores keep detector order, as numpy's argsort would not promise
        candidates = sorted(dets, key=lambda d: -d.score)[: options.max_objects]
        kept: list[Detection] = []
        for det in candidates:
            if options.nms_threshold >= 1.0 or all(
                box_iou(det.box, k.box) < options.nms_threshold for k in kept
            ):
                kept.append(det)
        grouped[name] = kept
    return grouped


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1) -> set[str]:
    """Relations of A relative to B ("left of", "right of", "above", "below"); possibly none or two.

    The centre offset shrinks, per axis, by ``margin`` times the summed box sizes on that axis (objects
    must clear each other by a fraction of their size); a relation holds when its shrunken component
    is over half the length of the raw offset, i.e. the direction is within about 60 degrees of it.
    """
    a = np.asarray(box_a[:4], dtype=np.float64).reshape(2, 2)  # rows: (x0, y0), (x1, y1)
    b = np.asarray(box_b[:4], dtype=np.float64).reshape(2, 2)
    offset = a.mean(axis=0) - b.mean(axis=0)  # (dx, dy) centre to centre
    sizes = np.abs(a[1] - a[0]) + np.abs(b[1] - b[0])  # (w_a + w_b, h_a + h_b)
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - margin * sizes, 0.0)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def _check_include(
    req: Mapping[str, Any], found: list[Detection], groups: list[list[Detection] | None], margin: float
) -> str | None:
    """Why one include clause fails on its ``found`` objects (the top ``count``), or None if it holds."""
    name, count = req["class"], int(req["count"])
    if len(found) < count:
        return f"expected {name}>={count}, found {len(found)}"
    if "color" in req:
        colors = [d.color for d in found]
        n_right = colors.count(req["color"])
        if n_right < count:
            seen = ", ".join(f"{colors.count(c)} {c}" for c in dict.fromkeys(colors))
            return f"expected {req['color']} {name}>={count}, found {n_right} {req['color']}; and {seen}"
    if "position" in req:
        relation, target = req["position"]
        if not 0 <= int(target) < len(groups) or groups[int(target)] is None:
            return f"no target for {name} to be {relation}"
        for obj in found:
            for tgt in groups[int(target)]:
                rels = relative_position(obj.box, tgt.box, margin)
                if relation not in rels:
                    got = " and ".join(sorted(rels)) or "no relation to"
                    return f"expected {name} {relation} target, found {got} target"
    return None


def evaluate_image(
    detections: Iterable[Detection], spec: Mapping[str, Any], options: GenEvalOptions = GenEvalOptions()
) -> tuple[bool, str]:
    """Score one image against one GenEval metadata dict: (correct, newline-joined failure reasons)."""
    objects = group_detections(detections, spec["tag"], options)
    reasons = []
    groups: list[list[Detection] | None] = []  # per include clause: its matched objects, or None
    for req in spec.get("include", []):
        found = objects.get(req["class"], [])[: int(req["count"])]
        why = _check_include(req, found, groups, options.position_threshold)
        groups.append(found if why is None else None)
        if why is not None:
            reasons.append(why)
    for req in spec.get("exclude", []):
        n = len(objects.get(req["class"], []))
        if n >= int(req["count"]):
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return not reasons, "\n".join(reasons)


def score_image(
    detector: Detector,
    image: Image.Image | np.ndarray,
    spec: Mapping[str, Any],
    options: GenEvalOptions = GenEvalOptions(),
    detections: list[Detection] | None = None,
) -> tuple[bool, str, dict[str, list[Detection]]]:
    """Detect (unless ``detections`` of ``image`` are given), colour what the spec's colour clauses
    check, and score: (correct, reasons, the kept detections per class, most confident first, as
    GenEval's ``details`` lists them)."""
    detections = detector.detect(image) if detections is None else detections
    grouped = group_detections(detections, spec["tag"], options)
    for req in spec.get("include", []):
        found = grouped.get(req["class"], [])
        n = int(req["count"])
        if "color" in req and len(found) >= n and any(d.color is None for d in found[:n]):
            grouped[req["class"]] = detector.colorize(image, found[:n]) + found[n:]
    # the grouped lists are already thresholded, capped and sorted: score them with no threshold left
    detections = [d for dets in grouped.values() for d in dets]
    ok, why = evaluate_image(detections, spec, replace_thresholds(options))
    return ok, why, grouped


def replace_thresholds(options: GenEvalOptions) -> GenEvalOptions:
    """``options`` that keep every detection (for detections already grouped under ``options``)."""
    return GenEvalOptions(-math.inf, -math.inf, options.max_objects, 1.0, options.position_threshold)


def summarize(results: Iterable[tuple[str, bool]]) -> dict[str, float]:
    """Per-task accuracy and ``overall``, the mean over the tasks present (GenEval's "avg. over tasks").

    Keys: each tag seen (GenEval's six in their usual order first, others after) and ``overall``;
    an empty input gives an empty dict.
    """
    hits: dict[str, list[bool]] = {}
    for tag, correct in results:
        hits.setdefault(tag, []).append(bool(correct))
    order = [t for t in GENEVAL_TASKS if t in hits] + sorted(t for t in hits if t not in GENEVAL_TASKS)
    scores = {tag: sum(hits[tag]) / len(hits[tag]) for tag in order}
    if scores:
        scores["overall"] = math.fsum(scores.values()) / len(scores)
    return scores


def load_geneval_metadata(path: str | Path) -> list[dict[str, Any]]:
    """Read GenEval's ``evaluation_metadata.jsonl`` (one prompt spec per line; blank lines skipped)."""
    specs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                spec = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(spec, dict) or "tag" not in spec or "include" not in spec:
                raise ValueError(f"{path}:{lineno}: a GenEval spec needs 'tag' and 'include' keys")
            specs.append(spec)
    return specs


def result_row(
    filename: str, spec: Mapping[str, Any], correct: bool, reason: str, grouped: Mapping[str, list[Detection]]
) -> dict[str, Any]:
    """One line of GenEval's per-image results JSONL, with its fields: ``details`` lists the kept
    boxes per class as ``[x0, y0, x1, y1, score]``; ``metadata`` is the spec as a JSON string."""
    details = {
        name: [[*map(float, d.box), float(d.score)] for d in dets] for name, dets in grouped.items() if dets
    }
    return {
        "filename": filename,
        "tag": spec["tag"],
        "prompt": spec.get("prompt", ""),
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(spec),
        "details": json.dumps(details),
    }


def summary_scores(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What GenEval's ``summary_scores.py`` prints, as a dict: image and prompt counts, the share of
    correct images and of prompts with at least one correct image, per-task accuracy, and ``overall``
    (the mean over tasks)."""
    by_prompt: dict[str, bool] = {}
    for row in rows:
        by_prompt[row["metadata"]] = by_prompt.get(row["metadata"], False) or bool(row["correct"])
    n = len(rows)
    return {
        "images": n,
        "prompts": len(by_prompt),
        "correct_images": sum(bool(r["correct"]) for r in rows) / n if n else 0.0,
        "correct_prompts": sum(by_prompt.values()) / len(by_prompt) if by_prompt else 0.0,
        "tasks": summarize((r["tag"], bool(r["correct"])) for r in rows),
    }
