"""Initial weights of a stage from elsewhere: a ``fit`` checkpoint of another stage, a directory in the
released JanusFlow-1.3B layout, or a hub repository in that layout.

Only the weights are taken: the optimizer, the learning-rate schedule, the step and the data position
of the new run start fresh (resuming a run is ``--ckpt_path``). The tensors must cover the model:
a fit checkpoint every tensor (its frozen VAE included), the released layout all but the parts it
does not hold (the REPA head, trained anew, and the VAE, loaded from its own source). Anything else
is one :class:`UserInputError` naming the source, the counts and the first names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed.checkpoint as dcp
from huggingface_hub import snapshot_download
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, TensorStorageMetadata

from jf_lightning.inference.checkpoint import pick_weights
from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import config_from_hparams
from jf_lightning.models.weights import _OURS_ONLY_PREFIXES, from_release

InitWeights = Literal["ema", "raw"]
ARG = "model.init_args.init_from"
_MODEL_PREFIX = "model."  # the stage's attribute holding the JanusFlow model
_LIVE = "current_model_state"  # the live weights beside the EMA's (callbacks/ema.py)
_SHOWN = 3  # names shown per kind of mismatch
_CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth", ".safetensors")


def load_initial_weights(
    model: nn.Module,
    source: str,
    weights: InitWeights = "ema",
    expected: dict[str, Any] | None = None,
) -> str:
    """Load ``source``'s tensors into ``model`` and return a short description for a log line.

    ``source`` is, checked in this order, an existing file (a Lightning checkpoint written by ``fit``,
    or one ``*.safetensors`` file in the released layout), a checkpoint directory written by ``fit``
    under FSDP2 (read whole, in one process), an existing directory in the released layout, or a hub id (``owner/name``) downloaded in that layout. ``weights`` picks a fit
    checkpoint's EMA (its ``state_dict``) or raw weights (``current_model_state``). ``expected``
    holds this stage's ``preset``, ``ablation`` and ``config``: a checkpoint that recorded other
    ones is named as the likely cause when its tensors do not fit."""
    if weights not in ("ema", "raw"):
        raise UserInputError(f"model.init_args.init_weights is {weights!r}: use ema or raw")
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".safetensors":
        return _load_release(model, source, [path])
    if path.is_file():
        return _load_checkpoint(model, source, path, weights, expected or {})
    if (path / ".metadata").is_file():  # a sharded checkpoint written by `fit` under FSDP2
        return _load_sharded(model, source, path, weights, expected or {})
    if path.is_dir():
        return _load_release(model, source, _safetensors_in(source, path))
    if _hub_id_like(source):
        directory = _download(source)
        return _load_release(model, source, _safetensors_in(source, Path(directory)))
    raise UserInputError(
        f"{ARG} {source!r} is neither an existing file or directory nor a hub id: give a checkpoint "
        "written by `fit`, a directory of *.safetensors in the released JanusFlow layout, or a hub "
        "id such as deepseek-ai/JanusFlow-1.3B"
    )


# ------------------------------------------------------------------------------------- sources


def _hub_id_like(source: str) -> bool:
    owner, _, name = source.partition("/")
    return (
        source.count("/") == 1
        and bool(owner)
        and bool(name)
        and not source.startswith((".", "~"))
        and not source.endswith(_CHECKPOINT_SUFFIXES)  # a checkpoint path that is missing, not a repo
    )


def _download(repo_id: str) -> str:
    try:
        return snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.json"])
    except Exception as err:  # offline, no such repository, gated: one line naming the argument
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserInputError(
            f"{ARG} {repo_id!r} is no local path, and fetching it from the hub failed "
            f"({type(err).__name__}: {reason})"
        ) from err


def _safetensors_in(source: str, directory: Path) -> list[Path]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise UserInputError(
            f"{ARG} {source!r}: no *.safetensors files in {directory}; a directory must hold the "
            "released JanusFlow layout"
        )
    return files


# -------------------------------------------------------------------------------------- loading


def _load_release(model: nn.Module, source: str, files: list[Path]) -> str:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    state = from_release(state)
    loaded = _load_checked(
        model, state, source, optional=_OURS_ONLY_PREFIXES,
        cause="the released layout is the janusflow-1.3b preset's final design (ablation F): check "
        "model.init_args.preset, ablation and config",
    )  # fmt: skip
    kept = sorted({name.split(".")[0] for name in model.state_dict() if name.startswith(_OURS_ONLY_PREFIXES)})
    fresh = f"; {', '.join(kept)} as initialised" if kept else ""
    return f"initial weights from {source} (released layout, {loaded} tensors{fresh})"


def _load_checkpoint(model: nn.Module, source: str, path: Path, weights: str, expected: dict) -> str:
    try:
        checkpoint = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # not a torch file, or one that would need unpickling arbitrary objects
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserInputError(
            f"{ARG} {source!r} is not a checkpoint written by `fit` that loads without unpickling "
            f"objects ({type(err).__name__}: {reason})"
        ) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserInputError(f"{ARG} {source!r} has no state_dict: is it a checkpoint written by `fit`?")
    state, which = pick_weights(checkpoint, weights, f"{ARG} {source!r}", fix="set model.init_args.init_weights: ema")
    # keys outside the model attribute keep their names and so count as unexpected
    ours = {k.removeprefix(_MODEL_PREFIX): v for k, v in state.items()}
    loaded = _load_checked(model, ours, source, optional=(), cause=_checkpoint_cause(checkpoint, expected))
    step = checkpoint.get("global_step")
    at = f" at step {step}" if step is not None else ""
    return f"initial weights from {source} ({which} of a fit checkpoint{at}, {loaded} tensors)"


def _load_sharded(model: nn.Module, source: str, path: Path, weights: str, expected: dict) -> str:
    """The EMA (the module state) or live weights (``current_model_state`` inside it) of a distributed
    checkpoint directory, read whole into this unsharded model in this one process."""
    meta = _sharded_meta(path)
    stored = FileSystemReader(str(path)).read_metadata().state_dict_metadata  # flattened key -> metadata
    live = any(key.startswith(f"state_dict.{_LIVE}.") for key in stored)
    if weights == "raw" and not live:
        raise UserInputError(f"{ARG} {source!r} holds one weight set only: set model.init_args.init_weights: ema")
    prefix = f"state_dict.{_LIVE}.{_MODEL_PREFIX}" if weights == "raw" else f"state_dict.{_MODEL_PREFIX}"
    names = [
        key.removeprefix(prefix)
        for key, meta in stored.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
        and (weights == "raw" or not key.startswith(f"state_dict.{_LIVE}."))
    ]  # fmt: skip
    own = model.state_dict()
    # (empty) tensors of the stored shapes: names and shapes are checked before anything is read
    shaped = {n: torch.empty(tuple(stored[prefix + n].size), dtype=own[n].dtype if n in own else None) for n in names}
    _check_fits(model, shaped, source, (), _checkpoint_cause(meta, expected))
    target = {prefix + name: tensor for name, tensor in shaped.items()}
    dcp.load(target, checkpoint_id=str(path), no_dist=True)
    model.load_state_dict({n: target[prefix + n] for n in names}, strict=False)  # covered: checked above
    loaded = len(names)
    which = "raw weights" if weights == "raw" else ("EMA weights" if live else "weights")
    at = f" at step {meta['global_step']}" if meta.get("global_step") is not None else ""
    return f"initial weights from {source} ({which} of a sharded fit checkpoint{at}, {loaded} tensors)"


def _sharded_meta(path: Path) -> dict:
    """What Lightning saves beside the shards (``meta.pt``: hyperparameters, step), or {} when it is
    absent or would need unpickling objects (the tensor names must then say what does not fit)."""
    try:
        meta = torch.load(path / "meta.pt", weights_only=True, map_location="cpu")
    except Exception:  # noqa: BLE001 - missing or not weights-only: the error loses its hint, nothing else
        return {}
    return meta if isinstance(meta, dict) else {}


def _checkpoint_cause(checkpoint: dict, expected: dict) -> str:
    recorded = checkpoint.get("hyper_parameters") or {}
    differ = [
        f"{key} {recorded[key]!r} (this stage: {expected[key]!r})"
        for key in ("preset", "ablation")
        if key in recorded and key in expected and (recorded[key] or "F") != (expected[key] or "F")
    ]
    try:
        theirs = _leaves(dataclasses.asdict(config_from_hparams(recorded)))
    except ValueError:  # a config this version cannot read: the tensor names above must do
        theirs = {}
    if theirs and isinstance(expected.get("config"), dict):
        ours = _leaves(expected["config"])
        keys = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        differ += [f"config.{k} {theirs.get(k)!r} (this stage: {ours.get(k)!r})" for k in keys[:_SHOWN]]
    if differ:
        return "the checkpoint was trained with " + ", ".join(differ)
    return "the checkpoint is likely of another preset, ablation or model config than this stage"


def _leaves(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"llm": {"num_layers": 4}}`` -> ``{"llm.num_layers": 4}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def _load_checked(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, optional: tuple[str, ...], cause: str
) -> int:
    """Load ``state`` into ``model`` if it covers every tensor (but those under ``optional``) with the
    right shapes and holds nothing else; otherwise one error with counts and first names."""
    _check_fits(model, state, source, optional, cause)
    model.load_state_dict(state, strict=False)  # only the optional tensors can be absent (checked above)
    return len(state)


def _check_fits(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, optional: tuple[str, ...], cause: str
) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or reshaped:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("of another shape", reshaped)):
            if names:
                shown = ", ".join(
                    f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" if label == "of another shape" else k
                    for k in names[:_SHOWN]
                )
                parts.append(f"{len(names)} {label} ({shown}{', ...' if len(names) > _SHOWN else ''})")
        raise UserInputError(f"{ARG} {source!r} does not fit this model: {'; '.join(parts)}; {cause}")
