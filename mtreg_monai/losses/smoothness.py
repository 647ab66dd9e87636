"""Smoothness regulariser of the displacement field on the paper's scale (voxelmorph's ``Grad('l2')``)."""

from __future__ import annotations

import warnings

import torch
from monai.losses import DiffusionLoss
from monai.utils import LossReduction

from mtreg_monai.losses.utils import check_reduction

__all__ = ["SmoothnessLoss"]


class SmoothnessLoss(DiffusionLoss):
    """Diffusion regulariser (squared displacement gradients) divided by the number of spatial dims.

    MONAI's :class:`~monai.losses.DiffusionLoss` computes, per voxel and displacement channel,
    the *sum* over the N spatial axes of the squared central differences, and averages that over
    batch, channels and interior voxels. Voxelmorph's ``Grad('l2')``, used by the paper's
    (Xu et al., MICCAI 2022) VoxelMorph baselines and on whose scale its k1 = 5 and fixed
    lambda in {1, 3, 5} were chosen, *averages* the squared forward differences over the axes.
    For a smooth field the two differ by the factor N (3 in 3-D), so this loss is
    ``DiffusionLoss / N``: a lambda here means what the paper's lambda means.

    For a linear displacement ``u(x) = A x`` both differences are exact and the ``"mean"`` value
    is ``||A||_F**2 / N**2`` (``||A||_F**2 / 9`` in 3-D), the same as voxelmorph's ``Grad('l2')``;
    for smooth fields the two agree up to the difference between central and forward
    differences (a few percent). Nothing else of ``DiffusionLoss`` changes (``normalize``, the
    checks, the ``"none"`` map of shape (B, N, H-2, W-2, D-2)).

    Args:
        normalize: as ``DiffusionLoss``: divide the gradients by the spatial sizes relative to each
            other. Defaults to False (the paper's setting).
        reduction: {``"none"``, ``"mean"``, ``"sum"``}. Defaults to ``"mean"``.

    Example::

        >>> ddf = torch.zeros(1, 3, 32, 32, 32)  # voxel units, channel i along spatial axis i
        >>> SmoothnessLoss()(ddf)
        tensor(0.)
    """

    def __init__(self, normalize: bool = False, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(normalize=normalize, reduction=check_reduction(reduction))

    def forward(self, pred: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: dense displacement field of shape (B, N, H[, W, D]), N spatial dims; voxel units,
                channel i along spatial axis i, sampled on the fixed grid:
                warped(x) = moving(x + ddf(x)). Every spatial size must be > 2.

        Returns:
            ``DiffusionLoss(pred) / N``: a scalar for ``"mean"``/``"sum"``, (B, N, H-2[, W-2, D-2]) for ``"none"``.

        Raises:
            TypeError: When ``pred`` is not a tensor.
            ValueError: When ``pred`` is not 3-, 4- or 5-d, a spatial size is <= 2, or the number
                of channels differs from the number of spatial dims (raised by ``DiffusionLoss``).
        """
        if not isinstance(pred, torch.Tensor):
            raise TypeError(f"Expecting pred to be a torch.Tensor, instead got {type(pred).__name__}.")
        with warnings.catch_warnings():
            # MONAI 1.6.1's spatial_gradient indexes with a list, which torch >= 2.9 warns about at every call;
            # the values are unaffected (the tests compare against hand-computed ones)
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing")
            return super().forward(pred) / (pred.ndim - 2)
