"""A model for inference outside training: from a ``fit`` checkpoint (its EMA or raw weights, its model
configuration) or from a directory in the released JanusFlow layout, without Lightning.

A fit checkpoint holds the stage's ``hyper_parameters`` (the model configuration:
:func:`config_from_hparams`) and, when the run kept an EMA, the averages as ``state_dict`` and the live
weights as ``current_model_state`` (what :class:`jf_lightning.callbacks.ema.EMA` writes). It is read with
``weights_only=True``: nothing in it is unpickled as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import apply_overrides, config_from_hparams, resolve_config
from jf_lightning.models.janusflow import JanusFlow, load_janusflow
from jf_lightning.models.weights import load_release_files

Weights = Literal["ema", "raw"]
_MODEL_PREFIX = "model."  # the stage's attribute holding the JanusFlow model


@dataclass
class LoadedModel:
    """A model in eval mode, with what its checkpoint says about the data it was trained on."""

    model: JanusFlow
    tokenizer: str | None
    """The training data's tokenizer (hub id or directory) when the checkpoint recorded it."""
    template: str | None
    """The training data's template style when recorded (``pretrain`` / ``sft``)."""
    description: str


def load_model(
    source: str | Path,
    weights: Weights = "ema",
    overrides: dict[str, Any] | None = None,
    preset: str = "janusflow-1.3b",
    ablation: str | None = None,
) -> LoadedModel:
    """``source``: a fit checkpoint file, or a directory of ``*.safetensors`` in the released layout
    (built as ``preset`` / ``ablation``). ``overrides``: dotted model-config keys replaced, such as a
    ``siglip.source`` path the checkpoint recorded relative to where its run started."""
    path = Path(source).expanduser()
    if path.is_dir():
        cfg = resolve_config(preset, ablation, overrides)
        model = load_janusflow(cfg)
        load_release_files(model, path)
        return LoadedModel(model.eval(), None, None, f"{path} (released layout, preset {preset})")
    if not path.is_file():
        raise UserInputError(f"{source}: no such checkpoint file or released-layout directory")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file, or one that needs unpickling objects
        raise UserInputError(f"{source} is not a checkpoint written by `fit` ({type(err).__name__})") from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserInputError(f"{source} has no state_dict: is it a checkpoint written by `fit`?")
    hparams = dict(checkpoint.get("hyper_parameters") or {})
    cfg = apply_overrides(config_from_hparams(hparams), overrides)
    model = load_janusflow(cfg)
    state, which = pick_weights(checkpoint, weights, str(source))
    ours = {k.removeprefix(_MODEL_PREFIX): v for k, v in state.items() if k.startswith(_MODEL_PREFIX)}
    result = model.load_state_dict(ours, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserInputError(
            f"{source}: its weights do not fit the model its hyper_parameters describe (missing "
            f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}); check --override"
        )
    data = dict(checkpoint.get("datamodule_hyper_parameters") or run_data_config(path))
    step = checkpoint.get("global_step")
    return LoadedModel(
        model.eval(), data.get("tokenizer"), data.get("template"), f"{source} ({which} at step {step})"
    )


def run_data_config(ckpt: Path) -> dict[str, Any]:
    """The ``data`` section of the config the CLI saved in the checkpoint's run directory
    (``<run dir>/config.yaml`` beside ``<run dir>/checkpoints/``), or nothing."""
    config = ckpt.resolve().parent.parent / "config.yaml"
    if not config.is_file():
        return {}
    try:
        data = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError):
        return {}
    return data if isinstance(data, dict) else {}


def pick_weights(
    checkpoint: dict, weights: Weights, source: str, fix: str = "use --weights ema"
) -> tuple[dict, str]:
    """The state dict ``weights`` asks for and what it is, in words: with an EMA the checkpoint's
    ``state_dict`` holds the averages and ``current_model_state`` the live weights. ``fix``: what the
    error for raw weights a checkpoint lacks tells the user to do."""
    if weights not in ("ema", "raw"):
        raise UserInputError(f"--weights {weights!r}: use ema or raw")
    if "current_model_state" in checkpoint:
        if weights == "raw":
            return checkpoint["current_model_state"], "raw weights"
        return checkpoint["state_dict"], "EMA weights"
    # one set only: the EMA's when the run averaged (merged into the model at the end), else the raw
    had_ema = "averaging_state" in checkpoint or any(
        key.split("{")[0] == "EMA" and isinstance(value, dict) and value.get("n_averaged", 0) > 0
        for key, value in (checkpoint.get("callbacks") or {}).items()
    )
    if had_ema and weights == "raw":
        raise UserInputError(f"{source} holds only the EMA weights (no current_model_state): {fix}")
    return checkpoint["state_dict"], ("EMA weights" if had_ema else "weights (the run kept no EMA)")
