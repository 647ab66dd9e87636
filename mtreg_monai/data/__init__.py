"""Data: the synthetic abdominal CT-MR phantom and datalist helpers."""

from __future__ import annotations

from .datalist import DATALIST_SECTIONS, load_registration_datalist, read_json_file
from .dataset import SafeCacheDataset
from .learn2reg import LEARN2REG_PAIR_SECTIONS, convert_learn2reg_datalist, is_learn2reg_datalist, resolve_datalist
from .phantom import CT_INTENSITIES, MR_INTENSITIES, make_phantom_dataset, make_phantom_pair
from .phantom_anatomy import BREATHING_WEIGHTS, ORGAN_LABELS, ORGANS, TISSUES
from .robust import FAILED_KEY, FailSafeDataset, exception_reason, fail_safe_collate, failure_marker, is_failure_marker

__all__ = [
    "BREATHING_WEIGHTS",
    "CT_INTENSITIES",
    "DATALIST_SECTIONS",
    "FAILED_KEY",
    "FailSafeDataset",
    "LEARN2REG_PAIR_SECTIONS",
    "MR_INTENSITIES",
    "ORGANS",
    "ORGAN_LABELS",
    "TISSUES",
    "convert_learn2reg_datalist",
    "exception_reason",
    "fail_safe_collate",
    "failure_marker",
    "is_failure_marker",
    "is_learn2reg_datalist",
    "load_registration_datalist",
    "read_json_file",
    "make_phantom_dataset",
    "make_phantom_pair",
    "resolve_datalist",
    "SafeCacheDataset",
]
