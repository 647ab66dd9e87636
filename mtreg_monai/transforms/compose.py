"""The preprocessing chain of a fixed/moving pair, assembled from MONAI transforms and this subpackage's."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data import ImageReader
from monai.transforms import (
    Compose,
    DivisiblePadd,
    EnsureChannelFirstd,
    EnsureTyped,
    Orientationd,
    ResizeWithPadOrCropd,
    Spacingd,
)

from mtreg_monai.transforms.intensity import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MAX_CLIPPED_HIGH,
    DEFAULT_MIN_CLIPPED_LOW,
    DEFAULT_MIN_SPREAD,
    DEFAULT_PERCENTILES,
    Modality,
    ScaleIntensityByModalityd,
)
from mtreg_monai.transforms.io import CheckedLoadImaged
from mtreg_monai.transforms.spatial import MatchPairGeometryd, OnMismatch
from mtreg_monai.transforms.utility import CheckImaged
from mtreg_monai.transforms.utils import PairKeys

__all__ = ["registration_pair_transforms"]


def _check_positive_ints(value: Sequence[int], name: str, n: int = 3) -> tuple[int, ...]:
    vals = tuple(value) if isinstance(value, Sequence) else (value,) * n
    if len(vals) != n or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in vals):
        raise ValueError(f"{name} must be a positive int or {n} positive ints, got {value!r}.")
    return tuple(int(v) for v in vals)


def registration_pair_transforms(
    *,
    fixed_modality: Modality | str = Modality.MR,
    moving_modality: Modality | str = Modality.CT,
    k: int | Sequence[int] = 16,
    spatial_size: int | Sequence[int] | None = None,
    pixdim: Sequence[float] | None = None,
    with_labels: bool = True,
    load: bool = True,
    axcodes: str = "RAS",
    on_mismatch: OnMismatch | str = OnMismatch.RESAMPLE,
    atol: float = 1e-3,
    ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    min_spread: float = DEFAULT_MIN_SPREAD,
    max_clipped_high: float = DEFAULT_MAX_CLIPPED_HIGH,
    min_clipped_low: float = DEFAULT_MIN_CLIPPED_LOW,
    label_dtype: torch.dtype = torch.int64,
    max_voxels: int | None = 512**3,
    reader: type[ImageReader] | str | None = None,
    fixed_image_key: str = PairKeys.FIXED_IMAGE.value,
    moving_image_key: str = PairKeys.MOVING_IMAGE.value,
    fixed_label_key: str = PairKeys.FIXED_LABEL.value,
    moving_label_key: str = PairKeys.MOVING_LABEL.value,
) -> Compose:
    """Preprocessing of a fixed/moving registration pair, from file paths to network-ready tensors.

    The chain (each step a MONAI transform or one of this subpackage's):

    1. ``CheckedLoadImaged`` (``LoadImaged`` whose errors name the file) + ``EnsureChannelFirstd``
       (only when ``load``); images float32.
    2. ``CheckImaged``: 3 spatial dims, 1 channel, valid affine, finite voxels; integer values for labels.
    3. ``Orientationd(axcodes)``: arrays in RAS order (axis 0 left->right, 1 posterior->anterior,
       2 inferior->superior).
    4. ``MatchPairGeometryd``: the moving image (bilinear), moving label and fixed label (nearest) are
       resampled onto the fixed image's grid through the affines when their shape or affine differs
       (``on_mismatch="raise"`` refuses instead); entries already on the grid pass unchanged.
    5. ``ScaleIntensityByModalityd``: each image to [0, 1] by its modality (CT window in HU,
       MR/unknown percentiles), non-finite voxels refused; an image that does not fit its declared modality
       (nearly constant once scaled, or a CT mostly above its window) refused with the file, the key, the
       modality, the intensities seen and the fix (``--fixed_modality``/``--moving_modality``, ``ct_window``).
    6. ``ResizeWithPadOrCropd(spatial_size)`` when given, then ``DivisiblePadd(k)`` (symmetric, zeros),
       so every spatial size is a multiple of ``k``.
    7. ``EnsureTyped``: images float32, labels ``label_dtype``; ``MetaTensor`` kept.

    Every geometric step records itself in the ``MetaTensor``'s ``applied_operations``, so ``Invertd`` with this
    ``Compose`` (or ``Compose.inverse``) restores the original shape and affine of each entry, and brings a
    displacement or segmentation predicted on the fixed grid back to the fixed image's original grid.

    Args:
        fixed_modality: modality of the fixed image: ``"mr"`` (default), ``"ct"`` or ``"unknown"``.
        moving_modality: modality of the moving image. Default ``"ct"``.
        k: every output spatial size is padded to a multiple of ``k`` (16 for a 4-level U-Net); one int or
            one per axis.
        spatial_size: optional ``(H, W, D)`` to pad or crop to (centred) before the divisible padding;
            each entry must be a multiple of the matching ``k``.
        pixdim: optional voxel size in mm ``(sx, sy, sz)``: after the geometry check the whole pair is resampled to
            it on the fixed image's field of view (MONAI ``Spacingd``: bilinear for images, nearest for labels).
            Use it to register images too large for memory at a coarser resolution; it is inverted with the rest,
            so outputs come back on the original fixed grid.
        with_labels: also process ``fixed_label`` and ``moving_label`` when present (missing labels are
            allowed either way); when False, label keys are left untouched.
        load: start from file paths (load + channel-first). When False, entries must already be
            channel-first ``(1, H, W, D)`` tensors, ``MetaTensor`` with affines for geometry to be checked.
        axcodes: orientation of the arrays. Default ``"RAS"`` (the package convention).
        on_mismatch: ``"resample"`` or ``"raise"``, see :class:`MatchPairGeometryd`.
        atol: affine tolerance of the geometry check (mm, mm per voxel).
        ct_window: (low, high) HU window for CT. Default (-200, 300).
        percentiles: (low, high) percentiles in % for MR/unknown. Default (0.5, 99.5).
        min_spread: smallest accepted 1st-99th percentile spread of a scaled image (in [0, 1] units). Default 0.05.
        max_clipped_high: largest accepted fraction of a CT's voxels at or above the window's top. Default 0.25.
        min_clipped_low: warn when fewer of a CT's voxels are at or below the window's bottom. Default 0.01.
        label_dtype: dtype of the output labels. Default ``torch.int64`` (labels are integer class indices).
        max_voxels: largest voxel count accepted from a NIfTI header (``None``: no limit).
        reader: image reader passed to ``LoadImaged`` (``None``: MONAI chooses by suffix).
        fixed_image_key, moving_image_key, fixed_label_key, moving_label_key: dictionary keys.

    Returns:
        a ``monai.transforms.Compose`` taking a dictionary of paths (or tensors) and returning a dictionary of
        ``MetaTensor``: images ``(1, H, W, D)`` float32 in [0, 1], labels ``(1, H, W, D)`` ``label_dtype``,
        all on the padded fixed grid.

    Raises:
        ValueError: ``k`` or ``spatial_size`` are not positive ints, a ``spatial_size`` entry is not a multiple of
            ``k``, a modality/option string is unknown, or an intensity threshold is outside [0, 1].

    Example::

        xform = registration_pair_transforms(fixed_modality="mr", moving_modality="ct", k=16)
        pair = xform({"fixed_image": "mr.nii.gz", "moving_image": "ct.nii.gz"})
        pair["fixed_image"].shape  # (1, 16*i, 16*j, 16*l)
    """
    ks = _check_positive_ints(k, "k")
    if spatial_size is not None:
        size = _check_positive_ints(spatial_size, "spatial_size")
        if any(s % kk for s, kk in zip(size, ks)):
            raise ValueError(f"spatial_size {size} must be a multiple of k={ks} on every axis.")
    if fixed_image_key == moving_image_key:
        raise ValueError(f"fixed_image_key and moving_image_key must differ, got '{fixed_image_key}' for both.")
    images = (fixed_image_key, moving_image_key)
    labels = (fixed_label_key, moving_label_key) if with_labels else ()
    every = images + labels
    xforms: list = []
    if load:
        xforms.append(CheckedLoadImaged(images, reader=reader, dtype=np.float32, max_voxels=max_voxels))
        if labels:
            xforms.append(
                CheckedLoadImaged(
                    labels, reader=reader, dtype=np.float32, max_voxels=max_voxels, allow_missing_keys=True
                )
            )
        xforms.append(EnsureChannelFirstd(every, allow_missing_keys=True))
    xforms.append(CheckImaged(images, spatial_dims=3, channels=1))
    if labels:
        xforms.append(CheckImaged(labels, spatial_dims=3, channels=1, integer_valued=True, allow_missing_keys=True))
    xforms.append(Orientationd(every, axcodes=axcodes, labels=None, allow_missing_keys=True))
    moving = (moving_image_key,) + ((moving_label_key, fixed_label_key) if labels else ())
    xforms.append(
        MatchPairGeometryd(
            moving,
            fixed_key=fixed_image_key,
            mode=("bilinear",) + ("nearest",) * (len(moving) - 1),
            padding_mode=("border",) + ("zeros",) * (len(moving) - 1),
            on_mismatch=on_mismatch,
            atol=atol,
            allow_missing_keys=True,
        )
    )
    if pixdim is not None:
        if isinstance(pixdim, (str, bytes)) or len(pixdim) != 3 or not all(float(p) > 0 for p in pixdim):
            raise ValueError(f"pixdim must be 3 positive voxel sizes in mm, got {pixdim!r}.")
        modes = ("bilinear",) * len(images) + ("nearest",) * len(labels)
        xforms.append(Spacingd(every, pixdim=[float(p) for p in pixdim], mode=modes, allow_missing_keys=True))
    xforms.append(
        ScaleIntensityByModalityd(
            images,
            modality=(fixed_modality, moving_modality),
            ct_window=ct_window,
            percentiles=percentiles,
            min_spread=min_spread,
            max_clipped_high=max_clipped_high,
            min_clipped_low=min_clipped_low,
            modality_options=("fixed_modality", "moving_modality"),
        )
    )
    if spatial_size is not None:
        xforms.append(ResizeWithPadOrCropd(every, spatial_size=size, allow_missing_keys=True))
    xforms.append(DivisiblePadd(every, k=ks, allow_missing_keys=True))
    dtypes = (torch.float32,) * len(images) + (label_dtype,) * len(labels)
    xforms.append(EnsureTyped(every, dtype=dtypes, track_meta=True, allow_missing_keys=True))
    return Compose(xforms)
