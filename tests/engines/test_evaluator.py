from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mtreg_monai.engines import PrepareRegistrationBatch, RegistrationEvaluator
from mtreg_monai.handlers import RegistrationMetricsHandler


class ConstantShift(nn.Module):
    """A 'network' that predicts a constant displacement of ``shift`` voxels along axis 0."""

    def __init__(self, shift: float) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ddf = torch.zeros(x.shape[0], 3, *x.shape[2:])
        ddf[:, 0] = self.shift
        return ddf


def _pair(offset: int) -> dict:
    fixed = torch.zeros(1, 1, 24, 24, 24, dtype=torch.long)
    fixed[..., 6:14, 6:14, 6:14] = 1
    moving = torch.roll(fixed, shifts=offset, dims=2)  # the organ sits `offset` voxels further along axis 0
    return {
        "fixed_image": fixed.float(),
        "moving_image": moving.float(),
        "fixed_label": fixed,
        "moving_label": moving,
    }


@pytest.mark.parametrize("shift,expected_dice", [(2.0, 1.0), (0.0, 6 / 8)])
def test_warped_label_and_metrics(shift, expected_dice):
    evaluator = RegistrationEvaluator(
        "cpu",
        [_pair(2)],
        ConstantShift(shift),
        key_val_metric={"val_mean_dice": RegistrationMetricsHandler(label_names={1: "liver"})},
    )
    evaluator.run()
    out = evaluator.state.output
    assert out["warped_label"].dtype == torch.long
    # warped(x) = moving(x + ddf): a shift of +2 along axis 0 brings the moved organ back
    assert evaluator.state.metrics["dice_liver"] == pytest.approx(expected_dice)
    assert evaluator.state.metrics["val_mean_dice"] == pytest.approx(expected_dice)
    assert evaluator.state.metrics["folding_percent"] == 0.0
    assert evaluator.state.metric_details["val_mean_dice"].shape == (1, 6)


def test_labels_required_when_asked():
    with pytest.raises(ValueError, match="moving_label"):
        PrepareRegistrationBatch(require_labels=True)({"fixed_image": torch.zeros(1), "moving_image": torch.zeros(1)})
    with pytest.raises(TypeError, match="dict"):
        PrepareRegistrationBatch()([torch.zeros(1)])
