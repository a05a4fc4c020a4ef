"""Stage chaining: a stage starts from a fit checkpoint's EMA or raw weights, from the released
JanusFlow layout (a directory, or a hub id fetched into one), with a fresh optimizer; tensors that do
not fit are one error naming init_from, the counts and the likely cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from jf_lightning.callbacks.ema import EMA
from jf_lightning.inputs import UserInputError
from jf_lightning.models.config import resolve_config
from jf_lightning.models.weights import export_safetensors
from jf_lightning.stages import AdaptationStage, PretrainingStage
from jf_lightning.stages import init_from as init_from_module
from jf_lightning.stages.init_from import load_initial_weights
from tests.stages.conftest import built, tiny_batch

PROBE = "model.vision_gen_dec_aligner.weight"  # trained in stage 1
HUB_ID = "deepseek-ai/JanusFlow-1.3B"


def _trainer(root, callbacks, steps: int) -> Trainer:
    return Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=callbacks,
        default_root_dir=root,
    )  # fmt: skip


class SaveAt(Callback):
    """Saves a checkpoint once the given optimizer step is done (before the EMA merges at train end)."""

    def __init__(self, path, step: int):
        self.path, self.step = path, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A stage-1 run of 2 steps with an EMA; its checkpoint, and the loss its EMA weights give on a
    fixed batch (after fit the module holds the averages)."""
    root = tmp_path_factory.mktemp("stage1")
    module = built(AdaptationStage, lr=1e-2, warmup_steps=1)
    batches = [tiny_batch(module.model_config, seed=i, batch_index=i) for i in range(2)]
    ckpt = root / "stage1.ckpt"
    _trainer(root, [EMA(decay=0.5), SaveAt(ckpt, 2)], steps=2).fit(module, DataLoader(batches, batch_size=None))
    module.train()
    with torch.no_grad():
        reference = module.compute_losses(tiny_batch(module.model_config, seed=7, batch_index=5))["loss"]
    return {"ckpt": ckpt, "saved": torch.load(ckpt, weights_only=True), "loss": reference}


def _checkpoint_like_fit(stage, path, **extra) -> str:
    """What a fit checkpoint holds of a stage that ran without an EMA: its state_dict and hyperparameters."""
    torch.save({"state_dict": stage.state_dict(), "hyper_parameters": dict(stage.hparams), "global_step": 0,
                **extra}, path)  # fmt: skip
    return str(path)


def _error(stage_cls=PretrainingStage, **kwargs) -> str:
    with pytest.raises(UserInputError) as info:
        built(stage_cls, **kwargs)
    message = str(info.value)
    assert "\n" not in message and "model.init_args.init_from" in message
    return message


# ---------------------------------------------------------------------------------- fit checkpoints


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_weights_are_the_checkpoints_ema_or_raw_set(stage1, weights):
    stage = built(PretrainingStage, init_from=str(stage1["ckpt"]), init_weights=weights)
    expected = stage1["saved"]["state_dict" if weights == "ema" else "current_model_state"]
    state = stage.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in state)
    ema, raw = stage1["saved"]["state_dict"][PROBE], stage1["saved"]["current_model_state"][PROBE]
    assert not torch.equal(ema, raw)  # the two sets differ, so each test above tells them apart
    # this stage's freeze policy, not stage 1's: the LLM trains now
    assert all(p.requires_grad for p in stage.model.language_model.parameters())


def test_first_loss_is_the_ema_models_and_the_optimizer_starts_fresh(stage1, tmp_path):
    stage = built(PretrainingStage, init_from=str(stage1["ckpt"]), lr=1e-2, warmup_steps=1)
    seen = {}

    class Record(Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["optimizer"] = trainer.optimizers[0]
            seen["state"] = len(trainer.optimizers[0].state)
            seen["schedule"] = trainer.lr_scheduler_configs[0].scheduler.last_epoch

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen["loss"] = outputs["loss"].detach()

    batch = tiny_batch(stage.model_config, seed=7, batch_index=5)
    _trainer(tmp_path, [Record()], steps=1).fit(stage, DataLoader([batch], batch_size=None))
    assert seen["step"] == 0 and seen["schedule"] == 0
    assert isinstance(seen["optimizer"], torch.optim.AdamW) and seen["state"] == 0
    torch.testing.assert_close(seen["loss"], stage1["loss"], rtol=0, atol=0)


def test_checkpoint_of_another_ablation_is_one_error_with_counts(tmp_path):
    ckpt = _checkpoint_like_fit(built(PretrainingStage, ablation="D"), tmp_path / "d.ckpt")
    own = built(PretrainingStage).state_dict()
    only_f = [k for k in own if k not in built(PretrainingStage, ablation="D").state_dict()]
    message = _error(init_from=ckpt)
    assert ckpt in message and f"{len(only_f)} missing" in message and "unexpected" not in message
    assert only_f[0].removeprefix("model.") in message
    assert "ablation 'D' (this stage: None)" in message
    # the other way round the generation parts are unexpected
    ckpt_f = _checkpoint_like_fit(built(PretrainingStage), tmp_path / "f.ckpt")
    message = _error(init_from=ckpt_f, ablation="D")
    assert f"{len(only_f)} unexpected" in message and "missing" not in message
    assert "ablation 'F'" not in message and "ablation None (this stage: 'D')" in message


def test_checkpoint_of_other_shapes_or_another_preset_names_them(tmp_path):
    narrow = built(PretrainingStage, config=resolve_config("tiny", None, {"llm.intermediate_size": 256}))
    ckpt = _checkpoint_like_fit(narrow, tmp_path / "narrow.ckpt")
    message = _error(init_from=ckpt)
    assert "12 of another shape" in message  # gate, up and down projections of 4 blocks
    assert "(256, 128) vs (384, 128)" in message and "config.llm.intermediate_size 256 (this stage: 384)" in message
    # the same tensors recorded under another preset: the preset is named as the cause
    saved = torch.load(ckpt, weights_only=True)
    saved["hyper_parameters"].update(preset="ablation-256", config=None)
    torch.save(saved, tmp_path / "preset.ckpt")
    message = _error(init_from=str(tmp_path / "preset.ckpt"))
    assert "preset 'ablation-256' (this stage: 'tiny')" in message


def test_single_weight_set_checkpoints(tmp_path):
    source = built(PretrainingStage)
    no_ema = _checkpoint_like_fit(source, tmp_path / "no_ema.ckpt", callbacks={"EMA": {"n_averaged": 0}})
    stage = built(PretrainingStage, init_from=no_ema, init_weights="raw")  # its only set is the raw one
    assert torch.equal(stage.state_dict()[PROBE], source.state_dict()[PROBE])
    merged = _checkpoint_like_fit(source, tmp_path / "merged.ckpt", callbacks={"EMA": {"n_averaged": 3}})
    assert "holds only the EMA weights" in _error(init_from=merged, init_weights="raw")
    built(PretrainingStage, init_from=merged)  # ema loads it


def test_a_checkpoint_needing_unpickling_is_refused(tmp_path):
    torch.save({"state_dict": {}, "hyper_parameters": {"path": tmp_path}}, tmp_path / "pickled.ckpt")
    assert "without unpickling" in _error(init_from=str(tmp_path / "pickled.ckpt"))


# ---------------------------------------------------------------------------------- released layout


def _fresh(**kwargs):
    torch.manual_seed(1)
    stage = PretrainingStage(**kwargs)
    stage.configure_model()
    return stage


@pytest.fixture
def release_dir(tmp_path):
    source = built(AdaptationStage)  # seed 0
    directory = tmp_path / "release"
    directory.mkdir()
    export_safetensors(source.model, directory / "model.safetensors")
    return source, directory


def _assert_loaded_from(stage, source):
    fresh, loaded, wanted = _fresh().state_dict(), stage.state_dict(), source.state_dict()
    assert loaded.keys() == wanted.keys()
    for key in loaded:
        expected = fresh if key.startswith("model.repa_head.") else wanted  # REPA head as initialised
        assert torch.equal(loaded[key], expected[key]), key
    assert any(k.startswith("model.repa_head.") for k in loaded)
    assert not torch.equal(fresh[PROBE], wanted[PROBE])  # seeds 0 and 1 differ: the check means something


def test_released_layout_directory_loads_exactly(release_dir):
    source, directory = release_dir
    _assert_loaded_from(_fresh(init_from=str(directory)), source)
    description = init_from_module.load_initial_weights(_fresh().model, str(directory))
    assert "released layout" in description and "repa_head as initialised" in description


def test_hub_id_is_fetched_then_loaded_as_released_layout(release_dir, monkeypatch):
    source, directory = release_dir
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(directory)

    monkeypatch.setattr(init_from_module, "snapshot_download", fake_snapshot_download)
    _assert_loaded_from(_fresh(init_from=HUB_ID), source)
    assert calls == [(HUB_ID, {"allow_patterns": ["*.safetensors", "*.json"]})]


def test_unreachable_hub_id_is_one_line(monkeypatch):
    def offline(repo_id, **kwargs):
        raise OSError("no network\nmore detail")

    monkeypatch.setattr(init_from_module, "snapshot_download", offline)
    assert "OSError: no network" in _error(init_from="someone/missing-model")


@pytest.mark.parametrize("source", ["no/such/dir/last.ckpt", "missing.ckpt", "runs/last.ckpt", "bad id"])
def test_a_missing_path_that_is_no_hub_id_is_refused(source, monkeypatch):
    monkeypatch.setattr(init_from_module, "snapshot_download", lambda *a, **k: pytest.fail("no download"))
    assert "neither an existing file or directory nor a hub id" in _error(init_from=source)


def test_init_weights_is_checked_at_construction():
    with pytest.raises(ValueError, match="init_weights"):
        PretrainingStage(init_weights="average")


# ------------------------------------------------------------------------ sharded (FSDP2) checkpoints


def _sharded_like_fit(path, ema: dict, live: dict | None, meta: dict | None = None) -> str:
    """The layout ModelParallelStrategy writes with the EMA callback: the module state (the averages)
    under ``state_dict``, the live weights inside it under ``current_model_state``, flattened by DCP;
    the rest of the checkpoint (``meta``) in ``meta.pt``."""
    import torch.distributed.checkpoint as dcp

    state = dict(ema) if live is None else {**ema, "current_model_state": dict(live)}
    dcp.save({"state_dict": state}, checkpoint_id=str(path), no_dist=True)
    if meta is not None:
        torch.save(meta, Path(path) / "meta.pt")
    return str(path)


@pytest.mark.parametrize("weights", ["ema", "raw"])
def test_a_sharded_checkpoint_directory_gives_its_ema_or_raw_weights(tmp_path, weights):
    ema_stage, live_stage = built(PretrainingStage), built(PretrainingStage)
    for p in ema_stage.parameters():
        p.data.add_(1.0)  # the two sets differ everywhere
    ckpt = _sharded_like_fit(tmp_path / "last.ckpt", ema_stage.state_dict(), live_stage.state_dict())
    stage = built(PretrainingStage, init_from=ckpt, init_weights=weights)
    expected = (ema_stage if weights == "ema" else live_stage).state_dict()
    assert stage.state_dict().keys() == expected.keys()
    assert all(torch.equal(v, expected[k]) for k, v in stage.state_dict().items())


def test_a_sharded_checkpoint_of_another_model_is_one_error(tmp_path):
    narrow = built(PretrainingStage, config=resolve_config("tiny", None, {"llm.intermediate_size": 256}))
    ckpt = _sharded_like_fit(tmp_path / "last.ckpt", narrow.state_dict(), None)
    message = _error(init_from=ckpt)
    assert "12 of another shape" in message and "(256, 128) vs (384, 128)" in message
    assert "likely of another preset" in message  # no meta.pt: nothing recorded to name
    assert "init_weights: ema" in _error(init_from=ckpt, init_weights="raw")


def test_a_sharded_checkpoint_names_the_config_key_it_was_trained_with(tmp_path):
    narrow = built(PretrainingStage, config=resolve_config("tiny", None, {"llm.intermediate_size": 256}))
    meta = {"hyper_parameters": dict(narrow.hparams), "global_step": 7}
    ckpt = _sharded_like_fit(tmp_path / "last.ckpt", narrow.state_dict(), None, meta)
    assert "config.llm.intermediate_size 256 (this stage: 384)" in _error(init_from=ckpt)
    stage_meta = {"hyper_parameters": dict(built(PretrainingStage).hparams), "global_step": 7}
    fitting = _sharded_like_fit(tmp_path / "fits.ckpt", built(PretrainingStage).state_dict(), None, stage_meta)
    assert "at step 7" in load_initial_weights(built(PretrainingStage).model, fitting)
