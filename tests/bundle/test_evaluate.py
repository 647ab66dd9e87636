"""The evaluate bundle (train.json + evaluate.json) on a tiny phantom: per-pair CSV, summary, overrides, no training."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundle" / "configs"
SMALL_NET = json.loads((Path(__file__).parent / "small_network.json").read_text())  # a tiny network, for speed
ORGANS = ["liver", "spleen", "right_kidney", "left_kidney"]


CHECKPOINT_COLUMNS = ["checkpoint", "checkpoint_epoch", "checkpoint_run_identity"]  # which model made the row


def _columns(organs: list[str]) -> list[str]:
    dice, asd = [f"dice_{o}" for o in organs], [f"asd_{o}" for o in organs]
    metrics = [*dice, "dice_mean", *asd, "asd_mean", "folding_percent", "jacobian_std", "seconds"]
    return ["fixed", "moving", *CHECKPOINT_COLUMNS, *metrics]


def _workflow(root: Path, run_id: str, **overrides) -> ConfigWorkflow:
    files = [CONFIGS / "train.json"] + ([CONFIGS / "evaluate.json"] if run_id == "evaluating" else [])
    wf = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id=run_id,
        workflow_type="infer" if run_id == "evaluating" else "train",
        bundle_root=str(root / "bundle"),
        phantom_dir=str(root / "phantom"),
        spatial_size=[32, 32, 32],
        **{"phantom#num_pairs": 5, "phantom#num_val": 1, "phantom#num_test": 2},
        method="vm",
        epochs=1,
        val_interval=1,
        **SMALL_NET,
        **overrides,
    )
    wf.initialize()
    assert wf.check_properties() == []  # MONAI's evaluation (infer) and train workflows accept the combination
    return wf


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch of training (2 pairs): ``bundle/models/model.pt`` and the phantom dataset.

    The best checkpoint of so short a run may be the initial weights (validation runs before training too), which
    the evaluation's freshly seeded network equals anyway: shift its weights by 1e-4 so that loading shows.
    """
    root = tmp_path_factory.mktemp("evaluate")
    wf = _workflow(root, "training")
    wf.run()
    wf.finalize()
    path = root / "bundle" / "models" / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k: v + 1e-4 if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _section(root: Path, name: str) -> list[tuple[str, str]]:
    with open(root / "phantom" / "dataset.json") as f:
        items = json.load(f)[name]
    return [(os.path.basename(i["fixed_image"]), os.path.basename(i["moving_image"])) for i in items]


def test_evaluate_test_section(trained, caplog):
    models = trained / "bundle" / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    wf = _workflow(trained, "evaluating")
    network = wf.parser.get_parsed_content("network")
    with caplog.at_level(logging.INFO, logger="mtreg_monai.handlers.report"):
        wf.run()
    wf.finalize()

    # the best checkpoint was loaded into the network, and nothing was trained or saved
    saved = torch.load(models / "model.pt", weights_only=True)["model"]
    for k, v in network.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    assert {p.name: p.stat().st_mtime_ns for p in models.iterdir()} == before

    out = trained / "bundle" / "outputs" / "eval"
    rows = _read_csv(out / "metrics.csv")
    assert list(rows[0]) == _columns(ORGANS)
    assert [(r["fixed"], r["moving"]) for r in rows] == _section(trained, "test")  # one row per test pair, in order
    assert {r["checkpoint"] for r in rows} == {str(models / "model.pt")}
    values = {c: np.array([float(r[c]) for r in rows]) for c in _columns(ORGANS)[2 + len(CHECKPOINT_COLUMNS) :]}
    for c, v in values.items():
        if c.startswith("dice_"):
            assert np.all((v >= 0) & (v <= 1)), c
        elif c == "folding_percent":
            assert np.all((v >= 0) & (v <= 100))
        else:
            assert np.all(np.isfinite(v) & (v >= 0)), c
    assert np.all(values["seconds"] > 0)
    np.testing.assert_allclose(values["dice_mean"], np.mean([values[f"dice_{o}"] for o in ORGANS], axis=0), rtol=1e-5)
    assert values["dice_mean"].mean() > 0.5  # the phantom's organs overlap by ~80 % before registration

    summary = (out / "summary.md").read_text()
    for c, label, scale in (("dice_liver", "Dice liver (%)", 100), ("asd_mean", "ASD mean (mm)", 1)):
        v = values[c] * scale
        assert f"| {label} | {v.mean():.2f} ± {v.std(ddof=1):.2f} | 2 | 0 | 0 |" in summary
    assert "| pairs | 2 |" in summary and "| section | `test` |" in summary
    assert f"| checkpoint | `{models / 'model.pt'}` |" in summary
    assert "Evaluation summary" in caplog.text and "Dice liver (%)" in caplog.text


def test_evaluate_two_labels_other_section(trained):
    """A dataset with other labels: ``label_names`` gives the columns; ``eval_section`` and ``eval_dir`` overridden."""
    eval_dir = trained / "eval_two_labels"
    wf = _workflow(
        trained,
        "evaluating",
        label_names={"1": "liver", "2": "spleen"},
        eval_section="validation",
        eval_dir=str(eval_dir),
    )
    wf.run()
    wf.finalize()
    rows = _read_csv(eval_dir / "metrics.csv")
    assert list(rows[0]) == _columns(["liver", "spleen"])
    assert [(r["fixed"], r["moving"]) for r in rows] == _section(trained, "validation")
    summary = (eval_dir / "summary.md").read_text()
    assert "| section | `validation` |" in summary and "Dice spleen (%)" in summary and "kidney" not in summary


def test_evaluate_with_refinement(trained):
    """``--refine_steps N`` evaluates the network's displacement refined by the RefinementInferer."""
    rows = {}
    for steps in (0, 3):
        eval_dir = trained / f"eval_refine_{steps}"
        wf = _workflow(trained, "evaluating", refine_steps=steps, eval_dir=str(eval_dir))
        wf.run()
        wf.finalize()
        rows[steps] = _read_csv(eval_dir / "metrics.csv")
        assert f"| refine_steps | {steps} |" in (eval_dir / "summary.md").read_text()
    assert [r["jacobian_std"] for r in rows[0]] != [r["jacobian_std"] for r in rows[3]]
    assert all(float(r["folding_percent"]) == 0.0 for r in rows[3])


def test_evaluate_without_checkpoint(trained, tmp_path):
    wf = _workflow(trained, "evaluating", ckpt_dir=str(tmp_path / "no_models"), eval_dir=str(tmp_path / "eval"))
    with pytest.raises(RuntimeError, match="Failed to evaluate") as err:  # MONAI wraps the error of the run
        wf.run()
    cause = err.value.__cause__
    assert isinstance(cause, FileNotFoundError) and str(tmp_path / "no_models" / "model.pt") in str(cause)
    assert not (tmp_path / "eval").exists()
