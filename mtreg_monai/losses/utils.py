"""The losses' shared reduction helpers: one check of the ``reduction`` argument and one reduction."""

from __future__ import annotations

import torch
from monai.utils import LossReduction, look_up_option

__all__ = ["check_reduction", "reduce_loss"]


def check_reduction(reduction: LossReduction | str) -> str:
    """``reduction`` as a :class:`~monai.utils.LossReduction` value (``"none"``, ``"mean"`` or ``"sum"``).

    Args:
        reduction: a ``LossReduction`` or its string value.

    Returns:
        the string value, e.g. ``"mean"``.

    Raises:
        ValueError: naming ``reduction`` and the allowed values, for any other value.
    """
    try:
        return look_up_option(reduction, LossReduction).value
    except ValueError as err:
        raise ValueError(
            f"Expecting reduction in {[r.value for r in LossReduction]}, instead got reduction={reduction!r}."
        ) from err


def reduce_loss(values: torch.Tensor, reduction: LossReduction | str) -> torch.Tensor:
    """Reduce per-element loss values: ``"mean"``, ``"sum"`` or ``"none"`` (the values themselves).

    Args:
        values: the unreduced loss, any shape.
        reduction: as :func:`check_reduction`.

    Returns:
        a scalar for ``"mean"`` / ``"sum"``, ``values`` for ``"none"``.

    Raises:
        ValueError: for an unknown ``reduction``.
    """
    reducer = {
        LossReduction.MEAN.value: torch.mean,
        LossReduction.SUM.value: torch.sum,
        LossReduction.NONE.value: lambda v: v,
    }[check_reduction(reduction)]
    return reducer(values)
