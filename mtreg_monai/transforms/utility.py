"""Input checks for loaded images: what MONAI lets through silently (NaN voxels, 2-D or 4-D files in a 3-D
pipeline, zero voxel spacing, complex data, non-integer labels)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from mtreg_monai.transforms.utils import affine_of, describe_source

__all__ = ["check_finite", "check_image", "CheckImaged"]


def check_finite(img: torch.Tensor | np.ndarray, key: Hashable) -> None:
    """Raise when an image has a NaN or infinite voxel.

    Args:
        img: any-shaped image.
        key: its dictionary key, used in the message (with the file name from the metadata when known).

    Raises:
        ValueError: when any voxel is NaN or +-inf.
    """
    t = torch.as_tensor(img)
    if t.is_floating_point() or t.is_complex():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            n_bad = int((~finite).sum())
            raise ValueError(
                f"{describe_source(img, key)} has {n_bad} non-finite voxel(s) (NaN or inf) out of {t.numel()}; "
                "expected finite intensities. Fix or mask the source image."
            )


def check_image(
    img: object,
    key: Hashable,
    spatial_dims: int = 3,
    channels: int | None = 1,
    check_finite_values: bool = True,
    integer_valued: bool = False,
) -> None:
    """Check one loaded, channel-first image.

    Args:
        img: the image, ``(C, H, W, D)`` for ``spatial_dims=3``; a ``MetaTensor`` also has its affine checked.
        key: its dictionary key, named in the messages.
        spatial_dims: expected number of spatial dimensions.
        channels: expected number of channels; ``None`` accepts any.
        check_finite_values: refuse NaN and infinite voxels.
        integer_valued: refuse non-integer values (for label maps stored as floats).

    Raises:
        TypeError: not an array or tensor (for example a path that was not loaded), or a complex image.
        ValueError: wrong number of dimensions or channels, an empty axis, a singular or non-finite affine
            (zero voxel spacing), non-finite voxels, or non-integer label values.
    """
    name = describe_source(img, key)
    if not isinstance(img, (torch.Tensor, np.ndarray)):
        raise TypeError(f"{name} must be a loaded channel-first image (tensor or array), got {type(img).__name__}.")
    t = torch.as_tensor(img)
    if t.is_complex():
        raise TypeError(f"{name} has complex dtype {t.dtype}; expected a real-valued image.")
    if t.ndim != spatial_dims + 1:
        raise ValueError(
            f"{name} has shape {tuple(t.shape)} ({t.ndim - 1} spatial dims after the channel); expected a "
            f"channel-first image with {spatial_dims} spatial dims, (C, H, W, D)."
        )
    if channels is not None and t.shape[0] != channels:
        raise ValueError(
            f"{name} has {t.shape[0]} channels (shape {tuple(t.shape)}); expected {channels}. A 4-D file's last "
            "axis becomes the channel axis: pass a single 3-D volume."
        )
    if min(t.shape[1:]) < 1:
        raise ValueError(f"{name} has an empty spatial axis: shape {tuple(t.shape)}.")
    if isinstance(img, MetaTensor):
        aff = affine_of(img)
        spacing = torch.linalg.norm(aff[:spatial_dims, :spatial_dims], dim=0)
        if not bool(torch.isfinite(aff).all()) or bool((spacing <= 0).any()) or abs(float(torch.det(aff))) < 1e-12:
            raise ValueError(
                f"{name} has an invalid affine (voxel spacing {spacing.tolist()} mm):\n{aff.numpy()}\n"
                "expected a finite, invertible affine with non-zero spacing."
            )
    if check_finite_values:
        check_finite(img, key)
    if integer_valued and t.is_floating_point() and not bool((t == torch.round(t)).all()):
        raise ValueError(f"{name} has non-integer values; expected a label map with integer labels.")


class CheckImaged(MapTransform):
    """Refuse loaded images that would pass through MONAI's transforms silently but wrongly.

    Apply after ``LoadImaged`` + ``EnsureChannelFirstd``. Checks the dimensionality (a 2-D file in a 3-D
    pipeline), the channel count (a 4-D file turns its last axis into channels), the affine (zero voxel
    spacing), complex data, non-finite voxels and, for label keys, integer values. Data pass unchanged.

    Args:
        keys: keys of the images to check.
        spatial_dims: expected number of spatial dimensions. Default 3.
        channels: expected number of channels; ``None`` accepts any. Default 1.
        check_finite: refuse NaN and infinite voxels. Default True.
        integer_valued: refuse non-integer values (use for label keys). Default False.
        allow_missing_keys: don't raise if a key is missing.

    Example::

        check = CheckImaged(keys=("fixed_label", "moving_label"), integer_valued=True, allow_missing_keys=True)
    """

    def __init__(
        self,
        keys: KeysCollection,
        spatial_dims: int = 3,
        channels: int | None = 1,
        check_finite: bool = True,
        integer_valued: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels must be a positive int or None, got {channels!r}.")
        self.spatial_dims = spatial_dims
        self.channels = channels
        self.check_finite = check_finite
        self.integer_valued = integer_valued

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        """Check each key; return the data unchanged.

        Raises:
            TypeError, ValueError: see :func:`check_image`.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            check_image(d[key], key, self.spatial_dims, self.channels, self.check_finite, self.integer_valued)
        return d
