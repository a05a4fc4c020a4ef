"""What ``jf generate``, ``jf chat`` and ``jf eval und`` share: the model options (a fit checkpoint or a
released-layout directory, its tokenizer and template, device and precision) and the process split
of a ``torchrun`` launch (``RANK`` / ``WORLD_SIZE``), without Lightning."""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import dataclass

import torch

from jf_lightning.data.templates import Templater
from jf_lightning.inference.checkpoint import LoadedModel, load_model
from jf_lightning.inputs import UserInputError


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--ckpt", required=True, help="a checkpoint written by `fit`, or a released-layout directory"
    )
    group.add_argument(
        "--weights", choices=("ema", "raw"), default="ema", help="a fit checkpoint's EMA or raw weights"
    )
    group.add_argument("--tokenizer", help="hub id or directory (default: the one the checkpoint recorded)")
    group.add_argument(
        "--template",
        choices=("pretrain", "sft"),
        help="prompt template (default: the checkpoint's, else pretrain)",
    )
    group.add_argument(
        "--preset", default="janusflow-1.3b", help="model preset of a released-layout directory"
    )
    group.add_argument("--ablation", help="ablation of a released-layout directory")
    group.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a model-config key, e.g. siglip.source=data/smoke/shapes-siglip (repeatable)",
    )
    group.add_argument("--device", help="cuda, cuda:1, cpu (default: this process's GPU when there is one)")
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast")


@dataclass
class Launch:
    """This process's place among the processes a launcher (``torchrun``) started: rank, world size."""

    rank: int
    world_size: int

    @classmethod
    def from_env(cls) -> Launch:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        if not 0 <= rank < world:
            raise UserInputError(f"RANK={rank} is outside WORLD_SIZE={world}")
        return cls(rank, world)

    def share(self, n: int) -> list[int]:
        """This process's items among ``n``, strided (every process gets near-equal work)."""
        return list(range(self.rank, n, self.world_size))


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserInputError(f"--override {pair!r}: write KEY=VALUE, e.g. siglip.source=path/to/siglip")
        out[key] = None if value.lower() in ("null", "none") else value
    return out


def device_for(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def precision(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def load_for_inference(args: argparse.Namespace) -> tuple[LoadedModel, Templater, torch.device]:
    """The model on its device and a Templater like its training data's."""
    loaded = load_model(args.ckpt, args.weights, parse_overrides(args.override), args.preset, args.ablation)
    tokenizer_source = args.tokenizer or loaded.tokenizer
    if tokenizer_source is None:
        raise UserInputError(
            f"{args.ckpt} does not record its tokenizer: give --tokenizer (hub id or directory)"
        )
    from transformers import AutoTokenizer  # heavy import, only once a model is loaded

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    except OSError as err:
        raise UserInputError(
            f"--tokenizer {tokenizer_source!r} could not be loaded: {str(err).splitlines()[0]}"
        ) from None
    device = device_for(args.device)
    cfg = loaded.model.cfg
    style = args.template or loaded.template or "pretrain"
    loaded.model.to(device)
    return loaded, Templater(tokenizer, cfg.num_und_tokens, cfg.num_gen_tokens, style), device
