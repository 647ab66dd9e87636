from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mtreg_monai.data import make_phantom_pair
from mtreg_monai.transforms import (
    DEFAULT_CT_WINDOW,
    DEFAULT_MAX_CLIPPED_HIGH,
    DEFAULT_MIN_CLIPPED_LOW,
    DEFAULT_MIN_SPREAD,
    ScaleIntensityByModality,
    ScaleIntensityByModalityd,
    check_intensity_fit,
)

# HU -> expected value with the default window (-200, 300): linear in between, clipped outside
CT_CASES = [(-1000.0, 0.0), (-200.0, 0.0), (-100.0, 0.2), (50.0, 0.5), (300.0, 1.0), (3000.0, 1.0)]
NO_CHECK = {"min_spread": 0.0, "max_clipped_high": 1.0, "min_clipped_low": 0.0}  # scaling only, for tiny arrays


def test_ct_window():
    assert DEFAULT_CT_WINDOW == (-200.0, 300.0)
    hu = torch.tensor([c[0] for c in CT_CASES]).reshape(1, 1, 1, -1)
    out = ScaleIntensityByModality("CT", **NO_CHECK)(hu)
    np.testing.assert_allclose(out.flatten().numpy(), [c[1] for c in CT_CASES], atol=1e-6)
    assert out.dtype == torch.float32


def test_ct_custom_window_no_clip():
    scale = ScaleIntensityByModality("ct", ct_window=(0, 100), clip=False, **NO_CHECK)
    out = scale(torch.tensor([[[[-50.0, 0.0, 150.0]]]]))
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
    out = ScaleIntensityByModalityd(keys=("fixed_image", "moving_image"), modality=("mr", "ct"), **NO_CHECK)(
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
        out = ScaleIntensityByModality("mr", min_spread=0.0)(torch.full((1, 4, 4, 4), 7.0))
    assert torch.count_nonzero(out) == 0


# --- does the image fit its declared modality? ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom() -> dict[str, np.ndarray]:
    """One 32^3 phantom pair at the bundle's field of view, and the CT of one with a 400 mm field of view (air)."""
    pair = make_phantom_pair((32, 32, 32), seed=(0, 0))
    wide = make_phantom_pair((32, 32, 32), seed=(0, 0), field_of_view=(400.0, 400.0, 300.0))
    return {
        "ct": pair["moving_image"].astype(np.float32),
        "mr": pair["fixed_image"].astype(np.float32),
        "wide_ct": wide["moving_image"].astype(np.float32),
    }


def _meta(array: np.ndarray, name: str) -> MetaTensor:
    return MetaTensor(torch.as_tensor(array[None]), meta={"filename_or_obj": f"/data/{name}.nii.gz"})


def test_fit_defaults():
    assert (DEFAULT_MIN_SPREAD, DEFAULT_MAX_CLIPPED_HIGH, DEFAULT_MIN_CLIPPED_LOW) == (0.05, 0.25, 0.01)


def test_good_phantom_passes_silently(phantom, caplog):
    with caplog.at_level(logging.WARNING, logger="mtreg_monai"):
        ct = ScaleIntensityByModality("ct")(_meta(phantom["ct"], "ct"), "moving_image")
        mr = ScaleIntensityByModality("mr")(_meta(phantom["mr"], "mr"), "fixed_image")
        ScaleIntensityByModality("ct")(_meta(phantom["wide_ct"], "wide_ct"), "moving_image")
    assert not caplog.records
    assert float(ct.max()) == 1.0 and float(mr.max()) == 1.0


def test_mr_in_unit_range_declared_as_ct_is_refused(phantom):
    mr = phantom["mr"]
    unit = (mr - mr.min()) / (mr.max() - mr.min())  # MR scaled to [0, 1]: the CT window maps it to 0.400-0.402
    xform = ScaleIntensityByModalityd(
        keys=("fixed_image", "moving_image"),
        modality=("mr", "ct"),
        modality_options=("fixed_modality", "moving_modality"),
    )
    with pytest.raises(ValueError) as info:
        xform({"fixed_image": _meta(phantom["mr"], "mr"), "moving_image": _meta(unit, "mr01")})
    msg = str(info.value)
    for part in ("'moving_image' (file '/data/mr01.nii.gz')", "declared as CT", "(nearly) constant",
                 "ct_window (-200, 300) HU", "less than min_spread=0.05", "intensities seen: min 0,", "max 1 HU",
                 "`--moving_modality mr` (bundle)", "`--moving-modality mr` (mtreg-register)"):  # fmt: skip
        assert part in msg, (part, msg)
    spread = float(msg.split("lie within ")[1].split(" ")[0])
    assert 0.0 < spread < 0.005  # measured 0.0017: 1 MR unit of [0, 1] is 1/500 of the window
    # the same image declared as MR is fine
    ScaleIntensityByModality("mr")(_meta(unit, "mr01"), "moving_image")


def test_ct_without_rescale_is_refused(phantom):
    shifted = phantom["ct"] + 1024.0  # stored without its rescale: air at about 24, the body above 300
    with pytest.raises(ValueError) as info:
        ScaleIntensityByModality("ct", modality_option="moving_modality")(_meta(shifted, "ct_raw"), "moving_image")
    msg = str(info.value)
    for part in ("'moving_image' (file '/data/ct_raw.nii.gz')", "declared as CT", "upper bound 300 HU",
                 "more than max_clipped_high=0.25", "0.0% at or below its lower bound -200 HU", "subtract 1024",
                 "`--moving_modality mr`", "ct_window"):  # fmt: skip
        assert part in msg, (part, msg)
    high = float(msg.split("has ")[1].split("%")[0])
    assert 40.0 < high < 50.0  # measured 43.9 %; good CT: 1.3 %
    ScaleIntensityByModality("ct", max_clipped_high=0.5)(_meta(shifted, "ct_raw"))  # the threshold is an option


def test_ct_without_rescale_in_a_wide_field_of_view_warns(phantom, caplog):
    shifted = phantom["wide_ct"] + 1024.0  # mostly air: only ~8 % saturated, but no voxel below the window
    with caplog.at_level(logging.WARNING, logger="mtreg_monai"):
        ScaleIntensityByModality("ct", modality_option="moving_modality")(_meta(shifted, "wide_raw"), "moving_image")
    (record,) = caplog.records
    msg = record.getMessage()
    assert "'moving_image' (file '/data/wide_raw.nii.gz')" in msg and "0.0% of its voxels at or below" in msg
    assert "subtract 1024" in msg and "`--moving_modality mr`" in msg


# (voxels in HU, expected outcome): hand-built CTs of 100 voxels with the default window
FIT_CASES = [
    ([-1000.0] * 40 + [50.0] * 35 + [1000.0] * 25, None),  # 25 % at the top: at the limit, accepted
    ([-1000.0] * 40 + [50.0] * 34 + [1000.0] * 26, "26.0% of its voxels at or above"),
    ([40.0] * 100, "(nearly) constant"),  # spread 0
    ([50.0] * 50 + [60.0] * 50, "(nearly) constant"),  # spread 10 HU = 0.02 < 0.05
    ([50.0] * 50 + [80.0] * 50, None),  # spread 30 HU = 0.06 >= 0.05 (no air: a warning only)
]


@pytest.mark.parametrize("hu, expected", FIT_CASES)
def test_fit_known_answers(hu, expected):
    raw = torch.tensor(hu).reshape(1, 4, 5, 5)
    scaled = (raw.clamp(-200, 300) + 200) / 500
    if expected is None:
        check_intensity_fit(raw, scaled, "moving_image", "ct")
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            check_intensity_fit(raw, scaled, "moving_image", "ct")


def test_constant_mr_is_refused():
    with pytest.warns(Warning, match="Divide by zero"):
        with pytest.raises(ValueError, match=r"'fixed_image', declared as MR, is \(nearly\) constant"):
            ScaleIntensityByModality("mr")(torch.full((1, 4, 4, 4), 7.0), "fixed_image")


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"min_spread": -0.1}, ValueError, "min_spread must be a number in"),
        ({"max_clipped_high": 1.5}, ValueError, "max_clipped_high"),
        ({"min_clipped_low": "0.1"}, ValueError, "min_clipped_low"),
        ({"modality_option": 3}, TypeError, "modality_option"),
    ],
)
def test_ill_fit_opts(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ScaleIntensityByModality("ct", **kwargs)


def test_ill_modality_options():
    with pytest.raises(ValueError, match="modality_options must be one per key"):
        ScaleIntensityByModalityd(keys=("a", "b"), modality_options=("fixed_modality",))
