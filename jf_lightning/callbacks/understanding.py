"""Understanding scores on held-out question sets, on the shared evaluation machinery (EMA weights,
questions split over ranks and gathered, own cadence, ``val/time/<name>``).

- :class:`UnderstandingBenchmarkCallback`: benchmarks (VQAv2, GQA, POPE, ... in the LLaVA shard layout:
  :class:`jf_lightning.data.questions.ShardQuestions`) each under its own answer rule
  (:func:`jf_lightning.metrics.understanding.benchmark_scores`), logged as ``val/und/<benchmark>`` (and
  POPE's ``val/und/<benchmark>/f1``, ``precision``, ``recall``, ``yes_ratio``);
- :class:`UnderstandingAccuracyCallback`: normalised exact match on one question set, overall and per
  question type, logged as ``val/und_accuracy`` and ``val/und_accuracy/<question_type>``.

Answers are greedy (``JanusFlow.answer``), at most ``max_new_tokens`` tokens, cut at EOS; images go
through the training transform at the model's image size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning.pytorch as pl
import torch

from jf_lightning.callbacks.evaluation import EvaluationCallback, gather_rows, rank_share, templater_for
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.inference.answer import answer_ids
from jf_lightning.inference.prompts import decode_answers
from jf_lightning.metrics.understanding import (
    AnswerRule,
    Question,
    QuestionSet,
    benchmark_scores,
    exact_match_accuracy,
)


class _Answering(EvaluationCallback):
    """Asks question sets: every rank a disjoint share, answers gathered in question order."""

    def __init__(
        self, max_new_tokens: int, batch_size: int, template: TemplateStyle | None, every_n_steps: int | None
    ):
        super().__init__(every_n_steps)
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError(f"{type(self).__name__} needs max_new_tokens >= 1 and batch_size >= 1")
        self.max_new_tokens, self.batch_size, self.template = max_new_tokens, batch_size, template

    def predictions(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, questions: list[Question]
    ) -> list[str]:
        """Every question's decoded answer, on every rank."""
        templater = templater_for(trainer, pl_module, self.template)
        share = rank_share(len(questions), trainer.global_rank, trainer.world_size)
        mine = [questions[max(i, 0)] for i in share]  # padding redoes question 0, dropped on gather
        ids = self.answer_ids(trainer, pl_module, templater, mine)  # (k, max_new_tokens)
        ids = gather_rows(trainer, share, ids, len(questions))  # (N, max_new_tokens), question order
        return decode_answers(templater.tokenizer, ids, templater.eos)

    def answer_ids(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        templater: Templater,
        questions: list[Question],
    ) -> torch.Tensor:
        """(k, max_new_tokens) long: greedy answer tokens, EOS-padded (the seam tests replace with an oracle)."""
        return answer_ids(
            pl_module.model, templater, [q.image for q in questions], [q.question for q in questions],
            self.max_new_tokens, self.batch_size, trainer.precision_plugin.forward_context(),
        )  # fmt: skip


@dataclass
class Benchmark:
    """One held-out understanding benchmark: its name in ``val/und/<name>``, questions and answer rule."""

    name: str
    questions: QuestionSet
    rule: AnswerRule = "vqa"


class UnderstandingBenchmarkCallback(_Answering):
    """Scores understanding benchmarks with the EMA weights, each under its own answer rule."""

    name = "und"

    def __init__(
        self,
        benchmarks: Sequence[Benchmark],
        max_new_tokens: int = 16,
        batch_size: int = 16,
        template: TemplateStyle | None = None,
        every_n_steps: int | None = None,
    ):
        """
        Args:
            benchmarks: The benchmarks (name, questions, rule ``vqa`` / ``pope`` / ``exact``).
            max_new_tokens: Longest answer decoded (greedy), in tokens.
            batch_size: Questions answered per decoding call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            every_n_steps: Run every this many optimizer steps instead of at every validation.
        """
        super().__init__(max_new_tokens, batch_size, template, every_n_steps)
        names = [b.name for b in benchmarks]
        if not names or len(set(names)) != len(names):
            raise ValueError(
                f"UnderstandingBenchmarkCallback: give benchmarks with distinct names, got {names}"
            )
        self.benchmarks = list(benchmarks)
        self._questions: dict[str, list[Question]] = {}  # drawn at the model's image size on first use

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics = {}
        for bench in self.benchmarks:
            if bench.name not in self._questions:
                self._questions[bench.name] = bench.questions.questions(pl_module.model.cfg.image_size)
            questions = self._questions[bench.name]
            predictions = self.predictions(trainer, pl_module, questions)
            scores = benchmark_scores(bench.rule, predictions, [q.references for q in questions])
            metrics |= {f"val/und/{bench.name}" + (f"/{k}" if k else ""): v for k, v in scores.items()}
        return metrics


class UnderstandingAccuracyCallback(_Answering):
    """Normalised exact match on one held-out question set, overall and per question type."""

    name = "und_accuracy"

    def __init__(
        self,
        questions: QuestionSet,
        max_new_tokens: int = 8,
        batch_size: int = 16,
        template: TemplateStyle | None = None,
        every_n_steps: int | None = None,
    ):
        """
        Args:
            questions: The held-out question set.
            max_new_tokens: Longest answer decoded (greedy), in tokens.
            batch_size: Questions answered per decoding call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
            every_n_steps: Run every this many optimizer steps instead of at every validation.
        """
        super().__init__(max_new_tokens, batch_size, template, every_n_steps)
        self.question_set = questions
        self.questions: list[Question] = []  # drawn at the model's image size on first use

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """``{"und_accuracy": x, "und_accuracy/<type>": ...}`` over all questions, on every rank."""
        if not self.questions:
            self.questions = self.question_set.questions(pl_module.model.cfg.image_size)
        predictions = self.predictions(trainer, pl_module, self.questions)
        return exact_match_accuracy(
            predictions, [q.answer for q in self.questions], [q.question_type for q in self.questions]
        )

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        metrics = super().run(trainer, pl_module)
        return {key if key.startswith("val/") else f"val/{key}": value for key, value in metrics.items()}
