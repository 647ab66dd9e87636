"""The training bundle end to end on a tiny phantom: every variant, checkpoints, weights, mean teacher, resume."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.handlers import StatsHandler

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed


def _workflow(tmp_path: Path, method: str, epochs: int = 1, **overrides) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id="training",
        bundle_root=str(tmp_path / "bundle"),
        phantom_dir=str(tmp_path / "phantom"),
        spatial_size=[32, 32, 32],
        **{"phantom#num_pairs": 4, "phantom#num_val": 1, "phantom#num_test": 1},
        method=method,
        epochs=epochs,
        val_interval=1,
        log_every=1,
        num_mc_samples=3,
        learning_rate=1e-3,
        **SMALL_NET,
        **overrides,
    )
    wf.initialize()
    return wf


def _weights_csv(tmp_path: Path) -> list[dict[str, float]]:
    with open(tmp_path / "bundle" / "outputs" / "weights.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


FIXED = {"vm": (3.0, 0.5), "dif_vm": (3.0, 0.5), "s_tc": (3.0, 0.5), "cir_dm": (None, 0.5)}


@pytest.mark.parametrize("method", ["vm", "dif_vm", "as", "s_tc", "as_tc", "as_atc", "cir_dm"])
def test_every_variant_trains(tmp_path, method, caplog):
    wf = _workflow(tmp_path, method)
    stats = [
        h
        for h in wf.parser.get_parsed_content("train#common_handlers")
        + wf.parser.get_parsed_content("validate#handlers")
        if isinstance(h, StatsHandler)
    ]
    for h in stats:  # MONAI's stats loggers do not propagate to the root logger that caplog watches
        h.logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO):
        wf.run()
    wf.finalize()
    for h in stats:
        h.logger.removeHandler(caplog.handler)
    models = tmp_path / "bundle" / "models"
    assert (models / "model.pt").is_file() and (models / "model_final.pt").is_file()
    ckpt = torch.load(models / "model_final.pt", weights_only=True)
    assert {"model", "optimizer", "trainer", "lr_scheduler"} <= set(ckpt)
    assert ("teacher" in ckpt) == (method in ("as", "s_tc", "as_tc", "as_atc"))
    rows = _weights_csv(tmp_path)
    assert len(rows) == 2  # 2 training pairs, 1 epoch
    k1, k2 = 5.0, 1.0
    for row in rows:
        if method in ("as", "as_tc", "as_atc"):
            assert 0.0 <= row["lambda_phi"] <= k1
        elif method == "cir_dm":
            assert 0.0 <= row["lambda_phi"] <= 10.0  # sampled per step in cir_weight_range
        else:
            assert row["lambda_phi"] == FIXED[method][0]
        if method == "as_atc":
            assert 0.0 <= row["lambda_c"] <= k2
        elif method in ("s_tc", "as_tc"):
            assert row["lambda_c"] == 0.5  # the fixed consistency weight
        else:
            assert row["lambda_c"] == 0.0  # no consistency term: weight 0, not the unused fixed value
    assert "lambda_phi" in caplog.text and "dice_liver" in caplog.text  # logged by the StatsHandlers
    outputs = tmp_path / "bundle" / "outputs"
    assert (outputs / "weights.png").is_file() and (outputs / "validation_pair.png").is_file()


def test_teacher_is_ema_of_student_and_gets_no_gradient(tmp_path):
    wf = _workflow(tmp_path, "as_atc", epochs=2, alpha=0.9)
    trainer = wf.parser.get_parsed_content("train#trainer")
    student = wf.parser.get_parsed_content("network")
    teacher = wf.parser.get_parsed_content("train#teacher").teacher
    expected = [p.detach().clone() for p in student.parameters()]  # the teacher starts as a copy of the student

    def ema(engine):
        for e, p in zip(expected, student.parameters()):
            e.mul_(0.9).add_(p.detach(), alpha=0.1)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, ema)
    wf.run()
    assert trainer.state.iteration == 4
    for t, e in zip(teacher.parameters(), expected):
        torch.testing.assert_close(t, e)
        assert not t.requires_grad and t.grad is None
    assert any(not torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_resume_continues_epochs_and_teacher(tmp_path):
    wf = _workflow(tmp_path, "as_atc", epochs=1)
    wf.run()
    wf.finalize()
    saved = torch.load(tmp_path / "bundle" / "models" / "as_atc_checkpoint_epoch=1.pt", weights_only=True)

    wf2 = _workflow(tmp_path, "as_atc", epochs=2)
    trainer = wf2.parser.get_parsed_content("train#trainer")
    teacher = wf2.parser.get_parsed_content("train#teacher").teacher
    seen = {}

    @trainer.on(Events.ITERATION_STARTED(once=3))
    def _check(engine):  # first iteration after resuming: state restored from the checkpoint
        seen["epoch"] = engine.state.epoch
        seen["teacher"] = {k: v.clone() for k, v in teacher.state_dict().items()}

    wf2.run()
    assert seen["epoch"] == 2 and trainer.state.iteration == 4 and trainer.state.epoch == 2
    for k, v in saved["teacher"]["ema_model"].items():
        torch.testing.assert_close(seen["teacher"][k], v)


def test_datalist_base_dir_confines_paths(tmp_path):
    outside = tmp_path / "outside.nii.gz"
    outside.write_bytes(b"")
    data = tmp_path / "data"
    data.mkdir()
    item = {
        "fixed_image": "../outside.nii.gz",
        "moving_image": "m.nii.gz",
        "fixed_label": "a.nii.gz",
        "moving_label": "b.nii.gz",
    }
    (data / "datalist.json").write_text(json.dumps({"training": [item], "validation": [], "test": []}))
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        logging_file=False,
        workflow_type=None,
        bundle_root=str(tmp_path / "bundle"),
        datalist=str(data / "datalist.json"),
        datalist_base_dir=str(data),
    )
    with pytest.raises(RuntimeError, match="load_registration_datalist") as info:
        wf.parser.get_parsed_content("train#dataset#data")
    cause = info.value.__cause__  # MONAI wraps the reader's error
    assert isinstance(cause, ValueError) and "outside.nii.gz" in str(cause) and "base_dir" in str(cause)


def test_rerun_keeps_the_best_checkpoint_and_methods_do_not_mix(tmp_path):
    """Running the command again resumes without re-validating the untrained network over ``model.pt``;
    another ``--method`` in the same folder starts its own training instead of resuming this one."""
    # no validation before training here, so that model.pt comes from a trained epoch
    wf = _workflow(tmp_path, "as_atc", epochs=2, **{"train#validation#exec_at_start": False})
    wf.run()
    wf.finalize()
    best = tmp_path / "bundle" / "models" / "model.pt"
    before = torch.load(best, weights_only=True)
    wf2 = _workflow(tmp_path, "as_atc", epochs=2)  # nothing left to train: resumes at the end
    wf2.run()
    wf2.finalize()
    after = torch.load(best, weights_only=True)
    assert after["trainer"]["iteration"] == before["trainer"]["iteration"] > 0
    for k, v in before["model"].items():
        assert torch.equal(after["model"][k], v)
    wf3 = _workflow(tmp_path, "vm", epochs=1)
    trainer = wf3.parser.get_parsed_content("train#trainer")
    wf3.run()
    assert trainer.state.iteration == 2  # vm trained its own epoch, it did not resume as_atc's checkpoint
