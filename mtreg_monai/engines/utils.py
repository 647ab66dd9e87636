"""Keys, events and batch preparation shared by the registration engines and handlers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import EventEnum
from monai.data import MetaTensor
from monai.utils import StrEnum

from mtreg_monai.transforms.utils import IMAGE_KEYS, LABEL_KEYS, PAIR_KEYS, PairKeys

__all__ = [
    "RegistrationKeys",
    "RegistrationEvents",
    "PrepareRegistrationBatch",
    "per_pair",
    "loss_terms",
    "LOGGED_TERMS",
]


class RegistrationKeys(StrEnum):
    """
    Keys of the batch dictionaries and of ``engine.state.output`` of the registration engines.

    The pair's keys (``FIXED_IMAGE``, ``MOVING_IMAGE``, ``FIXED_LABEL``, ``MOVING_LABEL``) are the members of
    :class:`~mtreg_monai.transforms.PairKeys`, where they are defined; the others are the engines' outputs.
    Images are (B, 1, H, W, D), displacements (B, 3, H, W, D) in voxels (``warped(x) = moving(x + ddf(x))``),
    uncertainties have the shape of what they measure, scalars per pair are (B,) tensors.
    """

    # the pair's keys, copied from PairKeys (the enum "_ignore_" idiom of the Python docs: `key` is no member)
    _ignore_ = "key"
    for key in PairKeys:
        vars()[key.name] = key.value
    DDF = "ddf"
    WARPED_IMAGE = "warped_image"
    WARPED_LABEL = "warped_label"
    TEACHER_DDF = "teacher_ddf"
    TEACHER_WARPED_IMAGE = "teacher_warped_image"
    UNCERTAINTY_PHI = "u_phi"
    UNCERTAINTY_IMAGE = "u_image"
    LOSS = "loss"
    LOSS_SIM = "loss_sim"
    LOSS_SMOOTH = "loss_smooth"
    LOSS_CONS = "loss_cons"
    LAMBDA_PHI = "lambda_phi"
    LAMBDA_C = "lambda_c"
    FRACTION_PHI = "uncertain_fraction_phi"
    FRACTION_IMAGE = "uncertain_fraction_image"
    REG_WEIGHT = "reg_weight"
    NONFINITE = "nonfinite"
    SECONDS = "seconds"


class RegistrationEvents(EventEnum):
    """
    Events fired by :class:`~mtreg_monai.engines.RegistrationTrainer` inside an iteration, before the student's loss.

    - ``TEACHER_PASS``: the batch is on the device (``engine.state.output`` holds the fixed and moving images);
      teacher handlers add their predictions and uncertainty maps to ``engine.state.output``.
    - ``REG_WEIGHTING``: after ``TEACHER_PASS``; weighting handlers add ``lambda_phi`` / ``lambda_c`` (B,) tensors.
      Terms without a handler use the trainer's fixed weights.
    """

    TEACHER_PASS = "teacher_pass"
    REG_WEIGHTING = "reg_weighting"


def per_pair(value: torch.Tensor, batch_size: int) -> torch.Tensor:
    """
    Reduce a loss value to one value per pair.

    Args:
        value: a loss computed with ``reduction="none"`` (B, ...) -> mean over all but the first dim; or a scalar
            (a loss already reduced over the batch) -> repeated ``batch_size`` times.
        batch_size: B.

    Returns:
        (B,) tensor.
    """
    if value.ndim == 0:
        return value.expand(batch_size)
    if value.shape[0] != batch_size:
        raise ValueError(
            f"Expecting a loss of shape (B={batch_size}, ...) or a scalar, got shape {tuple(value.shape)}."
        )
    return value.reshape(batch_size, -1).mean(dim=1)


class PrepareRegistrationBatch:
    """
    Move a fixed/moving pair from a collated batch dictionary to the device.

    Returns a dict with ``fixed_image`` and ``moving_image`` (B, 1, H, W, D) float tensors and, when present in the
    batch, ``fixed_label`` and ``moving_label`` (B, 1, H, W, D). Use it as ``prepare_batch`` of
    :class:`~mtreg_monai.engines.RegistrationTrainer` / :class:`~mtreg_monai.engines.RegistrationEvaluator`.

    Args:
        require_labels: raise when the labels are missing (evaluation); training and inference need none.
        keep_meta: keep MONAI ``MetaTensor`` s (with their affines) instead of plain tensors. Plain tensors are
            faster in the many small operations of a registration step; keep the metadata when writing outputs.
    """

    def __init__(self, require_labels: bool = False, keep_meta: bool = False) -> None:
        self.require_labels = require_labels
        self.keep_meta = keep_meta

    def __call__(
        self,
        batchdata: Mapping[str, Any],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs,
    ) -> dict[str, torch.Tensor]:
        if not isinstance(batchdata, Mapping):
            raise TypeError(f"batchdata must be a dict of tensors, got {type(batchdata).__name__}.")
        required = IMAGE_KEYS + (LABEL_KEYS if self.require_labels else ())
        missing = [k for k in required if k not in batchdata]
        if missing:
            raise ValueError(f"batchdata is missing the keys {missing}; it has {sorted(map(str, batchdata))}.")
        out = {}
        for key in PAIR_KEYS:
            if key in batchdata:
                value = batchdata[key]
                if not self.keep_meta and isinstance(value, MetaTensor):
                    value = value.as_tensor()
                out[str(key)] = torch.as_tensor(value).to(device=device, non_blocking=non_blocking, **kwargs)
        fixed, moving = out[RegistrationKeys.FIXED_IMAGE], out[RegistrationKeys.MOVING_IMAGE]
        if fixed.shape != moving.shape:
            raise ValueError(
                f"fixed_image and moving_image must have the same shape, got {tuple(fixed.shape)} and "
                f"{tuple(moving.shape)}; resample the moving image onto the fixed grid first."
            )
        return out


#: the per-iteration figures of the trainer that :func:`loss_terms` returns, when present.
LOGGED_TERMS = (
    RegistrationKeys.LOSS,
    RegistrationKeys.LOSS_SIM,
    RegistrationKeys.LOSS_SMOOTH,
    RegistrationKeys.LOSS_CONS,
    RegistrationKeys.LAMBDA_PHI,
    RegistrationKeys.LAMBDA_C,
    RegistrationKeys.FRACTION_PHI,
    RegistrationKeys.FRACTION_IMAGE,
)


def loss_terms(output: Mapping[str, Any]) -> dict[str, float]:
    """
    The trainer's loss terms, weights and uncertain fractions as ``{name: float}`` (means over the batch).

    Use as ``output_transform`` of MONAI's ``StatsHandler`` / ``TensorBoardStatsHandler`` to log every term.
    """
    if not isinstance(output, Mapping):
        raise TypeError(f"output must be the trainer's output dict, got {type(output).__name__}.")
    return {str(k): float(torch.as_tensor(output[k]).float().mean()) for k in LOGGED_TERMS if k in output}
