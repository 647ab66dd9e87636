"""RegistrationMetricsHandler on a RegistrationEvaluator: means over the finite values (as the report's), the ASD
spacing read from the fixed label's affine, the column names for the report."""

from __future__ import annotations

import csv
import logging

import pytest
import torch
from monai.data import MetaTensor, list_data_collate

from mtreg_monai.engines import PrepareRegistrationBatch, RegistrationEvaluator
from mtreg_monai.handlers import RegistrationMetricsHandler, RegistrationReportHandler, summarise_columns
from mtreg_monai.metrics import compute_label_asd

SHAPE = (16, 16, 16)


class ZeroField(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


def _cube(offset: int = 0) -> torch.Tensor:
    lab = torch.zeros(1, *SHAPE, dtype=torch.long)
    lab[:, 4 + offset : 10 + offset, 4:10, 4:10] = 1
    return lab


def _batch(fixed: torch.Tensor, moving: torch.Tensor, affine: torch.Tensor | None = None) -> dict:
    """One collated pair; with ``affine``, MetaTensors carrying it (as loaded from NIfTI files)."""
    item = {"fixed_image": fixed.float(), "moving_image": moving.float(), "fixed_label": fixed, "moving_label": moving}
    if affine is not None:
        item = {k: MetaTensor(v, affine=affine) for k, v in item.items()}
    return list_data_collate([item])


def test_infinite_asd_is_left_out_of_the_means_as_in_the_report(tmp_path, caplog):
    """Pair 1 registers perfectly (Dice 1, ASD 0); pair 2 loses the liver (Dice 0, ASD inf): the logged ASD mean is
    0 over the one finite pair (not inf), the same as the report's, and the infinite value is counted."""
    lost = torch.zeros(1, *SHAPE, dtype=torch.long)
    evaluator = RegistrationEvaluator(
        "cpu",
        [_batch(_cube(), _cube()), _batch(_cube(), lost)],
        ZeroField(),
        key_val_metric={"val_mean_dice": RegistrationMetricsHandler(label_names={1: "liver"})},
        val_handlers=[RegistrationReportHandler(tmp_path, metric_name="val_mean_dice")],
    )
    with caplog.at_level(logging.WARNING, logger="mtreg_monai.handlers.metrics"):
        evaluator.run()
    metrics = evaluator.state.metrics
    assert metrics["asd_liver"] == 0.0 and metrics["asd_mean"] == 0.0  # inf before: the mean kept infinities
    assert metrics["dice_liver"] == pytest.approx(0.5) and metrics["val_mean_dice"] == pytest.approx(0.5)
    details = evaluator.state.metric_details["val_mean_dice"]
    columns = evaluator.state.metric_columns["val_mean_dice"]
    assert details[1, columns.index("asd_liver")].item() == float("inf")  # the per-pair value stays inf
    assert "{'asd_liver': 1, 'asd_mean': 1}" in caplog.text
    for stats in summarise_columns(details.double().numpy(), columns):  # the report's means are the logged ones
        assert stats["mean"] / (100.0 if stats["name"].startswith("dice") else 1.0) == pytest.approx(
            metrics[stats["name"]]
        )
    assert "| ASD liver (mm) | 0.00 ± – | 1 | 0 | 1 |" in (tmp_path / "summary.md").read_text()
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["asd_liver"] for r in csv.DictReader(f)] == ["0", "inf"]


def test_spacing_from_the_fixed_label_affine():
    """A 1-voxel shift along axis 0 with 2 x 3 x 4 mm voxels: every surface distance lies along axis 0, so the
    ASD is twice the one in voxels; the handler's own ``spacing`` (1 mm) is used only without an affine."""
    in_voxels = compute_label_asd(_cube()[None], _cube(1)[None], {1: "liver"}, spacing=1.0).item()
    assert in_voxels > 0
    for affine, expected in ((torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])), 2 * in_voxels), (None, in_voxels)):
        evaluator = RegistrationEvaluator(
            "cpu",
            [_batch(_cube(1), _cube(), affine)],
            ZeroField(),
            prepare_batch=PrepareRegistrationBatch(keep_meta=True),
            key_val_metric={"val_mean_dice": RegistrationMetricsHandler(label_names={1: "liver"}, spacing=1.0)},
        )
        evaluator.run()
        assert evaluator.state.metrics["asd_liver"] == pytest.approx(expected, rel=1e-6)
