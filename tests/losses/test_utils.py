"""The losses' shared reduction helpers: known reductions, the one error message."""

from __future__ import annotations

import pytest
import torch
from monai.utils import LossReduction

from mtreg_monai.losses import MINDSSCLoss, SmoothnessLoss, check_reduction, reduce_loss


@pytest.mark.parametrize(
    "reduction,expected", [("mean", torch.tensor(2.5)), (LossReduction.SUM, torch.tensor(10.0)), ("none", None)]
)
def test_reduce_loss(reduction, expected):
    values = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = reduce_loss(values, reduction)
    torch.testing.assert_close(got, values if expected is None else expected)


def test_check_reduction():
    assert check_reduction(LossReduction.MEAN) == "mean" and check_reduction("none") == "none"
    for loss in (MINDSSCLoss, SmoothnessLoss, lambda reduction: check_reduction(reduction)):  # one message for all
        with pytest.raises(ValueError, match=r"Expecting reduction in \['none', 'mean', 'sum'\].*reduction='avg'"):
            loss(reduction="avg")
