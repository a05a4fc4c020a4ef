"""Understanding accuracy on a held-out question set at the end of every validation epoch.

Greedy answers through ``JanusFlow.answer``, normalised exact match. Logged: ``val/und_accuracy`` and
``val/und_accuracy/<question_type>``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from jf_lightning.callbacks.evaluation import (
    evaluation_mode,
    gather_rows,
    rank_share,
    templater_for,
)
from jf_lightning.data.templates import Templater, TemplateStyle
from jf_lightning.data.transforms import und_transform
from jf_lightning.inference.prompts import decode_answers, encode_understanding
from jf_lightning.metrics.understanding import Question, QuestionSet, exact_match_accuracy


class UnderstandingAccuracyCallback(Callback):
    """Asks a held-out question set with the EMA weights (swapped in for validation by the EMA
    callback); every rank answers a disjoint share.

    Images go through the training transform (``und_transform``) at the model's image size. Answers are
    decoded greedily for up to ``max_new_tokens`` tokens and cut at EOS.
    """

    def __init__(
        self,
        questions: QuestionSet,
        max_new_tokens: int = 8,
        batch_size: int = 16,
        template: TemplateStyle | None = None,
    ):
        """
        Args:
            questions: The held-out question set.
            max_new_tokens: Longest answer decoded (greedy), in tokens.
            batch_size: Questions answered per decoding call, per rank.
            template: Prompt template (``pretrain`` / ``sft``); null takes the datamodule's.
        """
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("UnderstandingAccuracyCallback needs max_new_tokens >= 1 and batch_size >= 1")
        self.question_set, self.max_new_tokens = questions, max_new_tokens
        self.batch_size, self.template = batch_size, template
        self.questions: list[Question] = []  # drawn at the model's image size on first use

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for name, value in self.evaluate(trainer, pl_module).items():
            pl_module.log(f"val/{name}", value, sync_dist=True)  # identical on every rank already

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """``{"und_accuracy": x, "und_accuracy/<type>": ...}`` over all questions, on every rank."""
        templater = templater_for(trainer, pl_module, self.template)
        if not self.questions:
            self.questions = self.question_set.questions(pl_module.model.cfg.image_size)
        share = rank_share(len(self.questions), trainer.global_rank, trainer.world_size)
        mine = [self.questions[max(i, 0)] for i in share]  # padding redoes question 0, dropped on gather
        with evaluation_mode(pl_module):
            ids = self.answer_ids(trainer, pl_module, templater, mine)  # (k, max_new_tokens)
        ids = gather_rows(trainer, share, ids, len(self.questions))  # (N, max_new_tokens), question order
        predictions = decode_answers(templater.tokenizer, ids, templater.eos)
        return exact_match_accuracy(
            predictions, [q.answer for q in self.questions], [q.question_type for q in self.questions]
        )

    def answer_ids(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        templater: Templater,
        questions: list[Question],
    ) -> torch.Tensor:
        """(k, max_new_tokens) long: greedy answer tokens, EOS-padded (the seam tests replace with an oracle)."""
        model, size = pl_module.model, pl_module.model.cfg.image_size
        out = []
        for i in range(0, len(questions), self.batch_size):
            chunk = questions[i : i + self.batch_size]
            pixels = torch.stack([und_transform(q.image, size) for q in chunk])  # (b, 3, S, S)
            batch = encode_understanding(templater, [q.question for q in chunk], pixels).to(pl_module.device)
            with trainer.precision_plugin.forward_context():
                new = model.answer(
                    batch.input_ids,
                    batch.attention_mask,
                    batch.und_pixels,
                    batch.und_slots,
                    max_new_tokens=self.max_new_tokens,
                    top_p=None,
                    eos_token_id=templater.eos,
                    pad_token_id=templater.pad,
                )  # (b, <= max_new_tokens)
            # EOS-pad to a fixed width: rows gather across ranks as one tensor, and decoding cuts at EOS
            out.append(F.pad(new.cpu(), (0, self.max_new_tokens - new.shape[1]), value=templater.eos))
        return torch.cat(out)
