from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mtreg_monai.transforms import CheckImaged, check_finite


def _img(shape=(1, 8, 8, 8), affine=None, fill=None) -> MetaTensor:
    data = torch.rand(shape) if fill is None else torch.full(shape, fill)
    aff = torch.eye(4, dtype=torch.float64) if affine is None else torch.as_tensor(affine, dtype=torch.float64)
    return MetaTensor(data, affine=aff, meta={"filename_or_obj": "vol.nii.gz"})


def test_valid_passes_unchanged():
    img = _img()
    out = CheckImaged(keys="fixed_image")({"fixed_image": img})
    assert out["fixed_image"] is img


ZERO_SPACING = np.diag([1.0, 0.0, 1.0, 1.0])

ILL_CASES = [
    # (image, kwargs, exception, message)
    (_img((1, 8, 8)), {}, ValueError, r"2 spatial dims after the channel"),
    (_img((3, 8, 8, 8)), {}, ValueError, "has 3 channels"),
    (_img((1, 8, 0, 8)), {}, ValueError, "empty spatial axis"),
    (_img(affine=ZERO_SPACING), {}, ValueError, "invalid affine"),
    (_img(fill=float("nan")), {}, ValueError, r"'fixed_image' \(file 'vol.nii.gz'\) has 512 non-finite"),
    (_img(fill=0.5), {"integer_valued": True}, ValueError, "non-integer values"),
    (torch.zeros(1, 4, 4, 4, dtype=torch.complex64), {}, TypeError, "complex"),
    ("fixed.nii.gz", {}, TypeError, "must be a loaded channel-first image"),
]


@pytest.mark.parametrize("img, kwargs, exc, match", ILL_CASES)
def test_ill_image(img, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        CheckImaged(keys="fixed_image", **kwargs)({"fixed_image": img})


def test_options():
    CheckImaged(keys="x", channels=None)({"x": _img((3, 8, 8, 8))})  # any channel count
    CheckImaged(keys="x", check_finite=False)({"x": _img(fill=float("nan"))})
    CheckImaged(keys="x", integer_valued=True)({"x": _img(fill=3.0)})
    CheckImaged(keys="x", allow_missing_keys=True)({})
    with pytest.raises(ValueError, match="spatial_dims"):
        CheckImaged(keys="x", spatial_dims=4)
    with pytest.raises(ValueError, match="channels"):
        CheckImaged(keys="x", channels=0)


def test_check_finite_integer_dtype_is_skipped():
    check_finite(torch.zeros(4, dtype=torch.int64), "label")
    with pytest.raises(ValueError, match="'x' has 1 non-finite voxel"):
        check_finite(np.array([0.0, np.inf]), "x")
