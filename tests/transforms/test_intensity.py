from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mtreg_monai.transforms import DEFAULT_CT_WINDOW, ScaleIntensityByModality, ScaleIntensityByModalityd

# HU -> expected value with the default window (-200, 300): linear in between, clipped outside
CT_CASES = [(-1000.0, 0.0), (-200.0, 0.0), (-100.0, 0.2), (50.0, 0.5), (300.0, 1.0), (3000.0, 1.0)]


def test_ct_window():
    assert DEFAULT_CT_WINDOW == (-200.0, 300.0)
    hu = torch.tensor([c[0] for c in CT_CASES]).reshape(1, 1, 1, -1)
    out = ScaleIntensityByModality("CT")(hu)
    np.testing.assert_allclose(out.flatten().numpy(), [c[1] for c in CT_CASES], atol=1e-6)
    assert out.dtype == torch.float32


def test_ct_custom_window_no_clip():
    out = ScaleIntensityByModality("ct", ct_window=(0, 100), clip=False)(torch.tensor([[[[-50.0, 0.0, 150.0]]]]))
    np.testing.assert_allclose(out.flatten().numpy(), [-0.5, 0.0, 1.5], atol=1e-6)


def test_mr_percentiles():
    # 0..1000: the 0.5th percentile is 5, the 99.5th is 995 (linear interpolation)
    img = torch.arange(1001, dtype=torch.float32).reshape(1, 7, 11, 13)
    out = ScaleIntensityByModality("mr")(img).flatten()
    np.testing.assert_allclose(out[[0, 5, 500, 995, 1000]].numpy(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    out2 = ScaleIntensityByModality("unknown", percentiles=(10, 90))(img).flatten()
    np.testing.assert_allclose(out2[[100, 500, 900]].numpy(), [0.0, 0.5, 1.0], atol=1e-6)


@pytest.mark.parametrize("a, b", [(3.0, 0.0), (0.01, -50.0), (250.0, 1000.0)])
def test_mr_affine_invariance(a, b):
    rng = np.random.default_rng(0)
    img = torch.tensor(rng.gamma(2.0, 100.0, size=(1, 16, 16, 16)), dtype=torch.float32)
    scale = ScaleIntensityByModality("mr")
    ref = scale(img)
    torch.testing.assert_close(scale(a * img + b), ref, atol=1e-4, rtol=0)


def test_dict_per_key_modality_and_meta():
    fixed = MetaTensor(torch.arange(64.0).reshape(1, 4, 4, 4), meta={"filename_or_obj": "mr.nii.gz"})
    moving = MetaTensor(torch.full((1, 4, 4, 4), 50.0))
    out = ScaleIntensityByModalityd(keys=("fixed_image", "moving_image"), modality=("mr", "ct"))(
        {"fixed_image": fixed, "moving_image": moving}
    )
    np.testing.assert_allclose(out["moving_image"].numpy(), 0.5, atol=1e-6)
    assert float(out["fixed_image"].min()) == 0.0 and float(out["fixed_image"].max()) == 1.0
    assert isinstance(out["fixed_image"], MetaTensor) and out["fixed_image"].meta["filename_or_obj"] == "mr.nii.gz"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_raises(bad):
    img = MetaTensor(torch.rand(1, 8, 8, 8), meta={"filename_or_obj": "/data/ct_0001.nii.gz"})
    img[0, 1, 2, 3] = bad
    xform = ScaleIntensityByModalityd(keys="moving_image", modality="ct")
    with pytest.raises(ValueError, match=r"'moving_image' \(file '/data/ct_0001.nii.gz'\) has 1 non-finite voxel"):
        xform({"moving_image": img})
    with pytest.raises(ValueError, match="'image' has 1 non-finite"):
        ScaleIntensityByModality("mr")(img.as_tensor())


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"modality": "pet"}, ValueError, "pet"),
        ({"modality": 3}, TypeError, "modality must be a string"),
        ({"ct_window": (300, -200)}, ValueError, "ct_window"),
        ({"ct_window": (0,)}, ValueError, "ct_window must be two numbers"),
        ({"percentiles": (-1, 99)}, ValueError, "percentiles"),
        ({"percentiles": (50, 50)}, ValueError, "percentiles"),
    ],
)
def test_ill_opts(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ScaleIntensityByModality(**kwargs)


def test_ill_modality_count():
    with pytest.raises(ValueError, match="one per key"):
        ScaleIntensityByModalityd(keys=("a", "b"), modality=("mr", "ct", "ct"))


def test_constant_mr_maps_to_zero():
    with pytest.warns(Warning, match="Divide by zero"):
        out = ScaleIntensityByModality("mr")(torch.full((1, 4, 4, 4), 7.0))
    assert torch.count_nonzero(out) == 0
