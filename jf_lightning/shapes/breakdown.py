"""Where a generator fails on the shapes world's GenEval prompts: every spec of a task, several noise seeds
each, scored prompt by prompt with the reason of every failure.

The validation callback answers "how good" on a fixed prompt set; at 48 prompts per task its readout
moved by about +-0.08 between two trajectories of one config (experiments/tiny.md). This answers "on
what", on noise seeds the callback never uses: which colour or shape fails, and whether a failure is an
empty canvas, another shape, or the wrong colour.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jf_lightning.metrics.geneval import Detector, GenEvalOptions, evaluate_image
from jf_lightning.models.config import apply_overrides, config_from_hparams
from jf_lightning.shapes.geneval_specs import all_geneval_specs
from jf_lightning.stages import AdaptationStage, PretrainingStage, SFTStage

HELD_OUT_SEED = 1000
"""First noise seed: the callback's images use seeds 0 .. 6 * n_per_task - 1."""
SEEDS_PER_SPEC_MAX = 100  # spec i's seeds are HELD_OUT_SEED + 100 i + j: more would reuse spec i+1's


@dataclass(frozen=True)
class Outcome:
    """One generated image, scored."""

    task: str
    prompt: str
    seed: int
    correct: bool
    objects: int  # objects the detector found
    reason: str  # the first failed GenEval rule ("" when correct)


def held_out_items(tasks: Sequence[str], seeds_per_spec: int, seed: int = HELD_OUT_SEED) -> list[tuple[dict, int]]:
    """(spec, noise seed) for every spec of each task and ``seeds_per_spec`` seeds each. The seeds of a
    spec do not depend on the other tasks asked for, so a breakdown of colors alone matches one of all six."""
    if not 1 <= seeds_per_spec <= SEEDS_PER_SPEC_MAX:
        raise ValueError(f"seeds_per_spec={seeds_per_spec} must be within 1..{SEEDS_PER_SPEC_MAX}")
    return [
        (spec, seed + 100 * i + j)
        for task in tasks
        for i, spec in enumerate(all_geneval_specs(task))
        for j in range(seeds_per_spec)
    ]


def score_images(
    items: Sequence[tuple[dict, int]],
    images: torch.Tensor,
    detector: Detector,
    options: GenEvalOptions | None = None,
) -> list[Outcome]:
    """Score (N, 3, H, W) uint8 images against their items' specs with GenEval's rules."""
    options = options or GenEvalOptions()
    if len(items) != images.shape[0]:
        raise ValueError(f"{len(items)} items but {images.shape[0]} images")
    outcomes = []
    for (spec, seed), image in zip(items, images):
        detections = detector.detect(np.ascontiguousarray(image.permute(1, 2, 0).numpy()))
        correct, reasons = evaluate_image(detections, spec, options)
        outcomes.append(Outcome(spec["tag"], spec["prompt"], seed, correct, len(detections), reasons.split("\n")[0]))
    return outcomes


def failure_kind(outcome: Outcome) -> str:
    """``empty`` (nothing detected), ``colour`` (the object is there in another colour) or ``objects``
    (shapes or counts other than asked)."""
    if outcome.objects == 0:
        return "empty"
    # evaluate_image words a colour miss as GenEval does: "expected red circle>=1, found 0 red; and 1 blue"
    return "colour" if "; and " in outcome.reason else "objects"


def summarize_outcomes(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per task: accuracy, images, failures by kind; per prompt: accuracy; and the commonest reasons."""
    by_task: dict[str, list[Outcome]] = collections.defaultdict(list)
    for o in outcomes:
        by_task[o.task].append(o)
    summary: dict[str, Any] = {}
    for task, rows in by_task.items():
        by_prompt: dict[str, list[bool]] = collections.defaultdict(list)
        for o in rows:
            by_prompt[o.prompt].append(o.correct)
        failed = [o for o in rows if not o.correct]
        summary[task] = {
            "accuracy": float(np.mean([o.correct for o in rows])),
            "images": len(rows),
            "failures": dict(collections.Counter(failure_kind(o) for o in failed)),
            "prompts": {p: float(np.mean(v)) for p, v in sorted(by_prompt.items())},
            "reasons": collections.Counter((o.reason, o.objects) for o in failed).most_common(10),
        }
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as text: a line per task, then its prompts and commonest failures."""
    lines = []
    for task, s in summary.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(s["failures"].items())) or "none"
        lines.append(f"{task}: {s['accuracy']:.3f} over {s['images']} images (failures: {kinds})")
        lines += [f"  {p:40s} {a:.2f}" for p, a in s["prompts"].items()]
        lines += [f"  fail x{n}: {reason} ({objects} objects found)" for (reason, objects), n in s["reasons"]]
    return "\n".join(lines)


def outcomes_as_records(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    return [asdict(o) for o in outcomes]


def load_checkpoint_stage(ckpt_path: str | Path, overrides: dict[str, Any] | None = None):
    """The stage a fit checkpoint was written by, with its weights (the EMA's, when the run kept one:
    the EMA callback writes them as the checkpoint's state_dict), in eval mode. ``overrides`` replace
    dotted model-config keys the checkpoint recorded, such as a ``siglip.source`` path relative to
    the directory the run started in."""
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    hparams = dict(state.get("hyper_parameters") or {})
    class_path = hparams.get("_class_path")
    stages = {f"{cls.__module__}.{cls.__name__}": cls for cls in (AdaptationStage, PretrainingStage, SFTStage)}
    stages |= {f"jf_lightning.stages.{cls.__name__}": cls for cls in stages.values()}  # as configs name them
    if class_path not in stages:
        raise ValueError(
            f"{ckpt_path}: its hyper_parameters name stage {class_path!r}, not one of jf_lightning's stages; "
            "was it written by `python -m jf_lightning fit`?"
        )
    stage_class = stages[class_path]
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    kwargs.pop("overrides", None)  # checkpoints of stages that took an overrides dict
    kwargs["config"] = apply_overrides(config_from_hparams(hparams), overrides)
    kwargs["init_from"] = None  # the checkpoint's own weights are loaded below
    stage = stage_class(**kwargs)
    stage.configure_model()
    stage.load_state_dict(state["state_dict"])
    return stage.eval()
