"""Shared names and small helpers for the pair-level transforms.

The keys of a registration pair (``fixed_image``, ``moving_image``, ``fixed_label``, ``moving_label``) are
defined once here (:class:`PairKeys`) and used by the datalist reader, the transforms, the fail-safe dataset, the
engines (whose :class:`~mtreg_monai.engines.RegistrationKeys` takes them over as its first members) and handlers.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path

import torch
from monai.data import MetaTensor
from monai.utils import ImageMetaKey, StrEnum

__all__ = ["PairKeys", "IMAGE_KEYS", "LABEL_KEYS", "PAIR_KEYS", "describe_source", "affine_of"]


class PairKeys(StrEnum):
    """Dictionary keys of one fixed/moving registration pair (datalist items and transform dictionaries)."""

    FIXED_IMAGE = "fixed_image"
    MOVING_IMAGE = "moving_image"
    FIXED_LABEL = "fixed_label"
    MOVING_LABEL = "moving_label"


IMAGE_KEYS: tuple[str, str] = (PairKeys.FIXED_IMAGE.value, PairKeys.MOVING_IMAGE.value)
LABEL_KEYS: tuple[str, str] = (PairKeys.FIXED_LABEL.value, PairKeys.MOVING_LABEL.value)
PAIR_KEYS: tuple[str, str, str, str] = IMAGE_KEYS + LABEL_KEYS


def describe_source(img: object, key: Hashable) -> str:
    """Name a dictionary entry for an error message: the key and, when the metadata has one, the file name.

    Args:
        img: the entry, usually a ``MetaTensor`` loaded by ``LoadImaged``.
        key: its key in the data dictionary.

    Returns:
        ``"'moving_image' (file 'ct.nii.gz')"`` or ``"'moving_image'"`` when no file name is known.
    """
    fname = None
    if isinstance(img, MetaTensor):
        fname = img.meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    if isinstance(fname, (str, Path)) and str(fname):
        return f"'{key}' (file '{fname}')"
    return f"'{key}'"


def affine_of(img: torch.Tensor) -> torch.Tensor:
    """The 4x4 voxel-to-world (RAS, mm) affine of a channel-first image, float64 on the CPU.

    A ``MetaTensor`` gives its (pending) affine; a plain tensor has none and, as in MONAI's
    ``ResampleToMatch``, is treated as having the identity affine (1 mm voxels, origin at 0).

    Args:
        img: channel-first image ``(C, H, W, D)``.

    Returns:
        the affine, shape ``(4, 4)``, dtype float64.
    """
    if isinstance(img, MetaTensor):
        aff = img.peek_pending_affine()
        return torch.as_tensor(aff, dtype=torch.float64, device="cpu").reshape(aff.shape[-2], aff.shape[-1])
    return torch.eye(4, dtype=torch.float64)
