"""Pair-level transforms for fixed/moving registration pairs: what MONAI lacks, plus the preprocessing chain.

See ``docs/transforms.md``.
"""

from __future__ import annotations

from .compose import registration_pair_transforms
from .intensity import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MAX_CLIPPED_HIGH,
    DEFAULT_MIN_CLIPPED_LOW,
    DEFAULT_MIN_SPREAD,
    DEFAULT_PERCENTILES,
    Modality,
    ScaleIntensityByModality,
    ScaleIntensityByModalityd,
    check_intensity_fit,
)
from .io import CheckedLoadImaged, nifti_voxel_count
from .spatial import MatchPairGeometryd, OnMismatch, same_geometry, spatial_shape_of
from .utility import CheckImaged, check_finite, check_image
from .utils import IMAGE_KEYS, LABEL_KEYS, PAIR_KEYS, PairKeys, affine_of, describe_source

__all__ = [
    "registration_pair_transforms",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_PERCENTILES",
    "DEFAULT_MIN_SPREAD",
    "DEFAULT_MAX_CLIPPED_HIGH",
    "DEFAULT_MIN_CLIPPED_LOW",
    "check_intensity_fit",
    "Modality",
    "ScaleIntensityByModality",
    "ScaleIntensityByModalityd",
    "CheckedLoadImaged",
    "nifti_voxel_count",
    "MatchPairGeometryd",
    "OnMismatch",
    "same_geometry",
    "spatial_shape_of",
    "CheckImaged",
    "check_finite",
    "check_image",
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "PAIR_KEYS",
    "PairKeys",
    "affine_of",
    "describe_source",
]
