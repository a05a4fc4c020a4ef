"""Held-out understanding benchmarks in the LLaVA shard layout (the ``und`` layout of
:mod:`jf_lightning.data.sources`: an image + a ``json`` with ``conversations``), as question sets.

Each record's first human turn is the question and the first assistant turn the reference answer. The
``json`` may add ``answers`` (every human answer, e.g. VQAv2's ten, scored by the VQA rule's
leave-one-out accuracy) and ``question_type`` (reported under it). ``jf shards llava`` writes this
layout from a LLaVA-style JSON and an image folder, so VQAv2, GQA or POPE exports become shards.
"""

from __future__ import annotations

import json

from jf_lightning.data.sources import decode, expand_urls, iter_members
from jf_lightning.metrics.understanding import Question, QuestionSet


class ShardQuestions(QuestionSet):
    """The questions of one benchmark's shards, in shard order (the first ``limit`` of them)."""

    def __init__(self, urls: str | list[str], limit: int | None = None):
        """
        Args:
            urls: Shard pattern(s) of the benchmark (brace patterns, globs).
            limit: Ask only the first this many questions; null: all.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"ShardQuestions: limit={limit} must be >= 1 or null")
        self.urls, self.limit = urls, limit

    def questions(self, image_size: int) -> list[Question]:
        out: list[Question] = []
        for url in expand_urls(self.urls):
            for sample in iter_members(url, "und"):
                raw = decode(sample, "und", image_size)
                if not raw.turns:
                    raise ValueError(
                        f"shard {url} key {raw.key}: a benchmark record needs a json conversation"
                    )
                meta = json.loads(sample["json"].decode("utf-8"))
                answers = meta.get("answers") or ()
                if not isinstance(answers, list | tuple) or not all(isinstance(a, str) for a in answers):
                    raise ValueError(f"shard {url} key {raw.key}: 'answers' must be a list of strings")
                human, reference = raw.turns[0]
                qtype = str(meta.get("question_type", "all"))
                out.append(Question(raw.image, human, reference, qtype, tuple(answers)))
                if self.limit is not None and len(out) >= self.limit:
                    return out
        return out
