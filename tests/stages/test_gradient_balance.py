"""Per-loss gradient norms: each loss reaches exactly the parts on its path, unweighted."""

from __future__ import annotations

import pytest

from jf_lightning.stages import SFTStage
from jf_lightning.stages.gradient_balance import loss_gradient_norms
from tests.stages.conftest import built, tiny_batch


def test_each_loss_reaches_only_the_parts_on_its_path():
    stage = built(SFTStage, preset="tiny")
    norms = loss_gradient_norms(stage, [tiny_batch(stage.model_config)])
    assert all(norms["language_model"][k] > 0 for k in ("ar_loss", "rf_loss", "repa_loss"))
    assert norms["vision_gen_dec_model"]["ar_loss"] == 0  # the decoder only serves the velocity
    assert norms["vision_gen_dec_model"]["rf_loss"] > 0
    assert norms["vision_und_enc_model"]["rf_loss"] == 0  # REPA targets are stop-gradient
    assert norms["vision_und_enc_model"]["repa_loss"] == 0
    assert norms["vision_und_enc_model"]["ar_loss"] > 0
    assert norms["repa_head"]["repa_loss"] > 0 and norms["repa_head"]["rf_loss"] == 0


def test_norms_are_of_the_unweighted_losses():
    batch = tiny_batch(built(SFTStage, preset="tiny").model_config)
    plain = loss_gradient_norms(built(SFTStage, preset="tiny"), [batch])
    weighted = loss_gradient_norms(built(SFTStage, preset="tiny", rf_weight=50.0, repa_weight=0.1), [batch])
    for part, row in plain.items():
        for key, value in row.items():
            assert weighted[part][key] == pytest.approx(value, rel=1e-5, abs=1e-12)


def test_refuses_an_empty_batch_list():
    with pytest.raises(ValueError, match="at least one batch"):
        loss_gradient_norms(built(SFTStage, preset="tiny"), [])


def test_the_command_measures_an_experiment_yaml_as_fit_builds_it(tmp_path, monkeypatch, capsys):
    import yaml

    from jf_lightning.cli import main
    from tests.test_cli import TINY

    config = yaml.safe_load(TINY.read_text())
    world, siglip = (item["init_args"] for item in config["prepare"])
    world.update(train_samples=32, val_samples=8)
    siglip.update(steps=2, batch_size=4)
    config["data"].update(batch_size=4, num_workers=0)
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="data/shapes is missing .* make it first with `python -m jf_lightning prepare -c exp.yaml`"):
        main(["gradient-balance", "-c", "exp.yaml", "--batches", "1"])
    main(["prepare", "-c", "exp.yaml"])
    capsys.readouterr()
    main(["gradient-balance", "-c", "exp.yaml", "--batches", "1"])
    rows = {line.split()[0]: line.split()[1:4] for line in capsys.readouterr().out.splitlines()[1:]}
    assert float(rows["language_model"][0]) > 0 and float(rows["language_model"][1]) > 0
    assert float(rows["vision_gen_dec_model"][0]) == 0  # AR never reaches the generation decoder
    assert not (tmp_path / "mlflow.db").exists()  # a measurement, not a run
