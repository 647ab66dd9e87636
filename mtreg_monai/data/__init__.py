"""Data: the synthetic abdominal CT-MR phantom and datalist helpers."""

from __future__ import annotations

from .datalist import DATALIST_SECTIONS, load_registration_datalist
from .phantom import CT_INTENSITIES, MR_INTENSITIES, make_phantom_dataset, make_phantom_pair
from .phantom_anatomy import BREATHING_WEIGHTS, ORGAN_LABELS, ORGANS, TISSUES

__all__ = [
    "BREATHING_WEIGHTS",
    "CT_INTENSITIES",
    "DATALIST_SECTIONS",
    "MR_INTENSITIES",
    "ORGANS",
    "ORGAN_LABELS",
    "TISSUES",
    "load_registration_datalist",
    "make_phantom_dataset",
    "make_phantom_pair",
]
