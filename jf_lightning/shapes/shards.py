"""Write the shapes world as WebDataset shards, with its tokenizer and a manifest.

Layout under ``out_dir`` (``{split}`` is ``train`` or ``val``):

- ``und/{split}-%06d.tar``: ``png`` + ``json`` (LLaVA-style ``conversations``, ``question_type``, ``scene``)
- ``gen/{split}-%06d.tar``: ``png`` + ``txt`` (the prompt) + ``json`` (``scene``; ``spec`` when the prompt
  is a GenEval prompt)
- ``text/{split}-%06d.tar``: ``txt``
- ``tokenizer/``: the shapes tokenizer (``save_pretrained``)
- ``manifest.json``: parameters, counts, shard lists and brace patterns

Every sample is drawn from its own generator seeded by (seed, split, kind, index): shards are
byte-identical for a seed, the validation split is a different stream, and any sample can be
regenerated alone. The directory appears atomically (written beside it, then renamed), and a directory
holding the same manifest is returned as is, so writing it again (``python -m jf_lightning prepare``)
does nothing.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import webdataset as wds
from PIL import Image

from jf_lightning.shapes import language, world
from jf_lightning.shapes.generated_dirs import check_output_dir, read_record, write_output_dir
from jf_lightning.shapes.tokenizer import build_shapes_tokenizer

FORMAT_VERSION = 2  # 2: shape sizes depend on the number of shapes (world.SIZE_RANGES)
KINDS = ("und", "gen", "text")
SPLITS = ("train", "val")
MANIFEST = "manifest.json"
_SPLIT_IDS = {"train": 0, "val": 1}
_KIND_IDS = {"und": 0, "gen": 1, "text": 2}
PARALLEL_MIN_SAMPLES = 2_000  # below this a world is written in-process (tests write small ones)


def sample_rng(seed: int, split: str, kind: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent streams per (seed, split, kind, index)."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], _KIND_IDS[kind], index])


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # fast; flat synthetic images compress well anyway
    return buf.getvalue()


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def make_record(
    seed: int, split: str, kind: str, index: int, image_size: int, mix: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One shard record (``__key__`` plus encoded members) of the given kind; ``mix`` may hold
    ``generation`` task weights, ``questions`` type weights, ``turns`` per understanding image and
    ``image_after_question`` (see ``write_shapes_world``)."""
    mix = mix or {}
    rng = sample_rng(seed, split, kind, index)
    record: dict[str, Any] = {"__key__": f"{split}-{index:08d}"}
    if kind == "und":
        scene = world.sample_scene(rng)
        conv = language.understanding_sample(
            scene, rng, mix.get("questions"), mix.get("turns", 1), mix.get("image_after_question", 0.0)
        )
        record["png"] = png_bytes(world.render_scene(scene, image_size))
        record["json"] = _json_bytes({**conv, "scene": scene.to_dict()})
    elif kind == "gen":
        scene, prompt, spec = language.generation_sample(rng, mix.get("generation"))
        record["png"] = png_bytes(world.render_scene(scene, image_size))
        record["txt"] = prompt.encode("utf-8")
        record["json"] = _json_bytes({"scene": scene.to_dict(), **({"spec": spec} if spec else {})})
    elif kind == "text":
        record["txt"] = language.text_sample(rng).encode("utf-8")
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return record


@dataclass(frozen=True)
class _ShardJob:
    """Samples ``start .. stop - 1`` of one (kind, split), written to shard ``index`` of that split."""

    kind: str
    split: str
    index: int
    start: int
    stop: int

    def relpath(self) -> str:
        return f"{self.kind}/{self.split}-{self.index:06d}.tar"


def _shard_jobs(counts: dict[str, int], per_shard: int) -> list[_ShardJob]:
    return [
        _ShardJob(kind, split, i, start, min(start + per_shard, counts[split]))
        for kind in KINDS
        for split in SPLITS
        for i, start in enumerate(range(0, counts[split], per_shard))
    ]


def _write_shard(root: Path, job: _ShardJob, seed: int, image_size: int, mix: dict | None) -> None:
    path = root / job.relpath()
    path.parent.mkdir(exist_ok=True)
    with wds.TarWriter(str(path), encoder=False, mtime=0) as sink:  # mtime 0: reproducible tar headers
        for i in range(job.start, job.stop):
            sink.write(make_record(seed, job.split, job.kind, i, image_size, mix))


def _write_shards(root: Path, jobs: list[_ShardJob], seed: int, image_size: int, mix: dict | None) -> None:
    """Every shard, in a process per core when there are enough samples to repay the processes
    (tiny.yaml's world of 3 x 20,256 samples: 24 s in one process, 12 s in two; experiments/tiny.md).
    Every sample comes from its own seeded generator, so the shards are the same bytes either way."""
    write = partial(_write_shard, root, seed=seed, image_size=image_size, mix=mix)
    workers = min(len(jobs), os.cpu_count() or 1)
    if workers < 2 or sum(job.stop - job.start for job in jobs) < PARALLEL_MIN_SAMPLES:
        for job in jobs:
            write(job)
        return
    # fork: the workers need only what is already imported (the world, PIL, webdataset), not a fresh
    # interpreter that imports transformers again
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(write, jobs))  # list(): a worker's exception is raised here


def _brace(paths: list[str]) -> str | None:
    """The WebDataset brace pattern of consecutive shards: ``und/train-{000000..000003}.tar``."""
    if not paths:
        return None
    head, last = paths[0][: -len("000000.tar")], len(paths) - 1
    return f"{head}{{000000..{last:06d}}}.tar" if last else paths[0]


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    return read_record(out_dir, MANIFEST)


def _check_target(out: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The existing manifest when ``out`` already holds this dataset; None when ``out`` is free."""
    return check_output_dir(out, MANIFEST, "params", params, "a shapes world")


def world_params(
    seed: int = 0,
    train_samples: int = 10_000,
    val_samples: int = 500,
    image_size: int = 64,
    samples_per_shard: int = 5_000,
    generation_mix: dict[str, float] | None = None,
    question_mix: dict[str, float] | None = None,
    questions_per_image: int = 1,
    image_after_question: float = 0.0,
) -> dict[str, Any]:
    """The parameters a world's manifest records, checked (one-line ValueErrors).

    ``generation_mix`` weighs the generation prompts over ``caption`` and GenEval's six tasks (default:
    25% captions, the tasks uniform); ``question_mix`` weighs the understanding question types
    (default: uniform over the types a scene supports). ``questions_per_image`` > 1 makes each
    understanding sample a multi-turn conversation of that many different questions.
    ``image_after_question`` is the share of understanding samples that ask first and show the image
    after the question (``language.understanding_sample``)."""
    language.check_weights(generation_mix, language.GENERATION_KINDS, "generation_mix")
    language.check_weights(question_mix, language.QUESTION_TYPES, "question_mix")
    if train_samples < 1 or val_samples < 0 or samples_per_shard < 1 or image_size < 32 or questions_per_image < 1:
        raise ValueError(
            "need train_samples >= 1, val_samples >= 0, samples_per_shard >= 1, image_size >= 32, "
            "questions_per_image >= 1"
        )
    if not 0.0 <= image_after_question <= 1.0:
        raise ValueError(f"image_after_question={image_after_question} must be a share in [0, 1]")
    params = {
        "version": FORMAT_VERSION,
        "seed": int(seed),
        "train_samples": int(train_samples),
        "val_samples": int(val_samples),
        "image_size": int(image_size),
        "samples_per_shard": int(samples_per_shard),
    }
    # Recorded only when not the default, so a world that uses none of these knobs keeps the manifest
    # (and the reuse check) of the base parameters alone.
    if generation_mix is not None:
        params["generation_mix"] = {k: float(v) for k, v in generation_mix.items()}
    if question_mix is not None:
        params["question_mix"] = {k: float(v) for k, v in question_mix.items()}
    if questions_per_image != 1:
        params["questions_per_image"] = int(questions_per_image)
    if image_after_question != 0.0:
        params["image_after_question"] = float(image_after_question)
    return params


def write_shapes_world(out_dir: str | os.PathLike, **params: Any) -> dict[str, Any]:
    """Write a world of :func:`world_params` into ``out_dir``: ``train_samples`` / ``val_samples``
    samples of each kind (und, gen, text), the tokenizer and the manifest; return the manifest. Never
    overwrites: a non-empty ``out_dir`` must already hold a manifest with the same parameters (then
    nothing is written)."""
    params = world_params(**params)
    out = Path(out_dir).absolute()
    existing = _check_target(out, params)
    if existing is not None:
        return existing
    # another process may finish the same dataset first: then its manifest is the answer
    return write_output_dir(out, lambda tmp: _write_all(tmp, params), lambda: _check_target(out, params))


def world_ready(out_dir: str | os.PathLike, **params: Any) -> bool:
    """Whether ``out_dir`` already holds the world of these parameters."""
    return _check_target(Path(out_dir).absolute(), world_params(**params)) is not None


def _write_all(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    counts = {"train": params["train_samples"], "val": params["val_samples"]}
    mix = {
        "generation": params.get("generation_mix"),
        "questions": params.get("question_mix"),
        "turns": params.get("questions_per_image", 1),
        "image_after_question": params.get("image_after_question", 0.0),
    }
    jobs = _shard_jobs(counts, params["samples_per_shard"])
    _write_shards(root, jobs, params["seed"], params["image_size"], mix)
    shards = {
        kind: {split: [job.relpath() for job in jobs if (job.kind, job.split) == (kind, split)] for split in SPLITS}
        for kind in KINDS
    }
    tokenizer = build_shapes_tokenizer()
    tokenizer.save_pretrained(str(root / "tokenizer"))
    manifest = {
        "format": "jf_lightning.shapes_world",
        "params": params,
        "counts": {kind: dict(counts) for kind in KINDS},
        "shards": shards,
        "patterns": {
            kind: {split: _brace(paths) for split, paths in s.items()} for kind, s in shards.items()
        },
        "tokenizer": "tokenizer",
        "vocab_size": len(tokenizer),
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
