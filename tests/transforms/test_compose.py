from __future__ import annotations

import re
from contextlib import contextmanager

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Invertd

from mtreg_monai.transforms import registration_pair_transforms

FIXED_AFFINE = np.array([[1.5, 0, 0, -10.0], [0, 1.5, 0, 5.0], [0, 0, 2.0, 3.0], [0, 0, 0, 1]])


@contextmanager
def raises_in_chain(exc: type[Exception], match: str):
    """MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError("applying transform ...")`` from it:
    expect ``exc`` matching ``match`` in the ``__cause__`` chain."""
    with pytest.raises(Exception) as info:
        yield
    err: BaseException | None = info.value
    while err is not None:
        if isinstance(err, exc) and re.search(match, str(err)):
            return
        err = err.__cause__
    raise AssertionError(f"no {exc.__name__} matching {match!r} in the chain of {info.value!r}")


def _save(path, array, affine) -> str:
    nib.save(nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=np.float64)), str(path))
    return str(path)


def _blob(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000.0 - 500.0).astype(np.float32)


def _ops(x) -> list[str]:
    return [op["class"] for op in x.applied_operations]


def test_round_trip_and_invert(tmp_path):
    shape = (20, 18, 17)
    fixed = _save(tmp_path / "f.nii.gz", _blob(shape, 0), FIXED_AFFINE)
    moving = _save(tmp_path / "m.nii.gz", _blob(shape, 1), FIXED_AFFINE)
    label = np.zeros(shape, dtype=np.uint8)
    label[2:6, 3:9, 4:7] = 2
    flabel = _save(tmp_path / "fl.nii.gz", label, FIXED_AFFINE)
    xform = registration_pair_transforms(fixed_modality="ct", moving_modality="mr", k=16)
    out = xform({"fixed_image": fixed, "moving_image": moving, "fixed_label": flabel})

    for key in ("fixed_image", "moving_image", "fixed_label"):
        assert out[key].shape == (1, 32, 32, 32), key
    assert out["fixed_image"].dtype == torch.float32 and out["fixed_label"].dtype == torch.int64
    assert 0.0 <= float(out["moving_image"].min()) and float(out["moving_image"].max()) <= 1.0
    assert "ResampleToMatch" not in _ops(out["moving_image"])  # same grid: passed through
    # symmetric padding 20->32 puts 6 voxels before axis 0: the origin moves by 6 * 1.5 mm
    assert float(out["fixed_image"].affine[0, 3]) == pytest.approx(-10.0 - 6 * 1.5)
    assert int((out["fixed_label"] == 2).sum()) == 4 * 6 * 3

    # a prediction on the padded fixed grid goes back to the original grid with the fixed image's record
    # (listed before fixed_image: Invertd replaces each key in turn, and the inverted image has no record left)
    out["pred"] = out["fixed_label"].clone()
    inv = Invertd(
        keys=("pred", "fixed_image", "moving_image", "fixed_label"),
        transform=xform,
        orig_keys=("fixed_image", "fixed_image", "moving_image", "fixed_label"),
        nearest_interp=(True, False, False, True),
    )
    back = inv(out)
    for key in ("fixed_image", "moving_image", "fixed_label", "pred"):
        assert back[key].shape == (1, *shape), key
        np.testing.assert_allclose(back[key].affine.numpy(), FIXED_AFFINE, atol=1e-6, err_msg=key)
    np.testing.assert_array_equal(back["pred"][0].numpy(), label)
    # Compose.inverse on the whole dictionary does the same
    again = xform.inverse(xform({"fixed_image": fixed, "moving_image": moving}))
    assert again["fixed_image"].shape == (1, *shape)
    np.testing.assert_allclose(again["fixed_image"].affine.numpy(), FIXED_AFFINE, atol=1e-6)


def test_moving_other_grid_known_voxel(tmp_path):
    fixed = _save(tmp_path / "f.nii.gz", _blob((16, 16, 16)), np.eye(4))
    t = np.array([4.5, 1.25, -0.5])  # origin shift in mm, no fixed voxel centre equidistant from two moving ones
    moving_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    moving_affine[:3, 3] = t
    moving = _save(tmp_path / "m.nii.gz", _blob((8, 8, 8), 1), moving_affine)
    lab = np.zeros((8, 8, 8), dtype=np.int16)
    lab[3, 3, 3] = 5  # world centre (10.5, 7.25, 5.5) mm
    mlabel = _save(tmp_path / "ml.nii.gz", lab, moving_affine)
    out = registration_pair_transforms(k=16)({"fixed_image": fixed, "moving_image": moving, "moving_label": mlabel})
    assert out["moving_image"].shape == (1, 16, 16, 16) and out["moving_label"].shape == (1, 16, 16, 16)
    assert "ResampleToMatch" in _ops(out["moving_image"])
    np.testing.assert_allclose(out["moving_image"].affine.numpy(), np.eye(4), atol=1e-6)
    found = {tuple(v) for v in np.argwhere(out["moving_label"][0].numpy() == 5).tolist()}
    assert found == {(a, b, c) for a in (10, 11) for b in (7, 8) for c in (5, 6)}
    with raises_in_chain(ValueError, "'moving_image' .* is not on the grid of 'fixed_image'"):
        registration_pair_transforms(on_mismatch="raise")({"fixed_image": fixed, "moving_image": moving})


def test_ras_vs_lps_same_volume(tmp_path):
    n = 16
    vol = _blob((n, n, 12), 3)
    ras = _save(tmp_path / "ras.nii.gz", vol, np.diag([1.0, 1.0, 2.0, 1.0]))
    lps_affine = np.diag([-1.0, -1.0, 2.0, 1.0])
    lps_affine[:2, 3] = n - 1  # same world positions, axes 0 and 1 stored reversed
    lps = _save(tmp_path / "lps.nii.gz", vol[::-1, ::-1, :].copy(), lps_affine)
    xform = registration_pair_transforms(fixed_modality="ct", moving_modality="ct")
    out = xform({"fixed_image": ras, "moving_image": lps})
    assert "ResampleToMatch" not in _ops(out["moving_image"])  # orientation handled by the affines, no resampling
    torch.testing.assert_close(out["moving_image"].as_tensor(), out["fixed_image"].as_tensor(), rtol=0, atol=0)
    swapped = xform({"fixed_image": lps, "moving_image": ras})
    torch.testing.assert_close(swapped["fixed_image"].as_tensor(), out["fixed_image"].as_tensor(), rtol=0, atol=0)
    np.testing.assert_allclose(swapped["fixed_image"].affine.numpy(), out["fixed_image"].affine.numpy())


def test_labels_optional(tmp_path):
    fixed = _save(tmp_path / "f.nii.gz", _blob((16, 16, 16)), np.eye(4))
    moving = _save(tmp_path / "m.nii.gz", _blob((16, 16, 16), 1), np.eye(4))
    out = registration_pair_transforms()({"fixed_image": fixed, "moving_image": moving})
    assert set(out) == {"fixed_image", "moving_image"}
    untouched = registration_pair_transforms(with_labels=False)(
        {"fixed_image": fixed, "moving_image": moving, "fixed_label": "kept.nii.gz"}
    )
    assert untouched["fixed_label"] == "kept.nii.gz"
    with raises_in_chain(FileNotFoundError, "File of 'fixed_image' not found"):
        registration_pair_transforms()({"moving_image": moving, "fixed_image": str(tmp_path / "none.nii.gz")})


def test_nan_and_bad_label(tmp_path):
    fixed = _save(tmp_path / "f.nii.gz", _blob((16, 16, 16)), np.eye(4))
    bad = _blob((16, 16, 16), 1)
    bad[3, 4, 5] = np.nan
    moving = _save(tmp_path / "nan.nii.gz", bad, np.eye(4))
    with raises_in_chain(ValueError, r"'moving_image' \(file '.*nan\.nii\.gz'\) has 1 non-finite voxel"):
        registration_pair_transforms()({"fixed_image": fixed, "moving_image": moving})
    soft = _save(tmp_path / "soft.nii.gz", np.full((16, 16, 16), 0.5, np.float32), np.eye(4))
    with raises_in_chain(ValueError, "'fixed_label' .* non-integer"):
        registration_pair_transforms()({"fixed_image": fixed, "moving_image": fixed, "fixed_label": soft})


def test_spatial_size_and_tensors():
    affine = torch.eye(4, dtype=torch.float64)
    data = {
        "fixed_image": MetaTensor(torch.rand(1, 20, 18, 40), affine=affine),
        "moving_image": MetaTensor(torch.rand(1, 20, 18, 40) * 1000.0 - 500.0, affine=affine),  # CT, HU
        "moving_label": MetaTensor(torch.ones(1, 20, 18, 40), affine=affine),
    }
    out = registration_pair_transforms(load=False, spatial_size=(32, 32, 32), k=16)(data)
    assert out["fixed_image"].shape == (1, 32, 32, 32) and out["moving_label"].shape == (1, 32, 32, 32)
    assert int(out["moving_label"].sum()) == 20 * 18 * 32  # padded with background, cropped along axis 2
    out = registration_pair_transforms(load=False, k=(4, 8, 16))(data)
    assert out["fixed_image"].shape == (1, 20, 24, 48)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"k": 0}, "k must be"),
        ({"k": (16, 16)}, "k must be"),
        ({"spatial_size": (40, 32, 32)}, "multiple of k"),
        ({"fixed_modality": "xray"}, "xray"),
        ({"on_mismatch": "ignore"}, "ignore"),
        ({"fixed_image_key": "a", "moving_image_key": "a"}, "must differ"),
    ],
)
def test_ill_opts(kwargs, match):
    with pytest.raises(ValueError, match=match):
        registration_pair_transforms(**kwargs)


def test_pixdim_option_resamples_and_inverts(tmp_path):
    import nibabel as nib
    import numpy as np
    from monai.transforms import Invertd

    from mtreg_monai.transforms import registration_pair_transforms

    data = np.random.default_rng(0).uniform(0, 100, (32, 32, 32)).astype(np.float32)
    for name in ("f", "m"):
        nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(tmp_path / f"{name}.nii.gz"))
    xform = registration_pair_transforms(fixed_modality="mr", moving_modality="mr", pixdim=(4.0, 4.0, 4.0))
    out = xform({"fixed_image": str(tmp_path / "f.nii.gz"), "moving_image": str(tmp_path / "m.nii.gz")})
    assert tuple(out["fixed_image"].shape) == (1, 16, 16, 16)
    inv = Invertd(keys="fixed_image", transform=xform, orig_keys="fixed_image")(dict(out))
    assert tuple(inv["fixed_image"].shape) == (1, 32, 32, 32)
    with pytest.raises(ValueError, match="pixdim"):
        registration_pair_transforms(pixdim=(1.0, 0.0, 1.0))


@pytest.mark.parametrize("declared", ["moving", "fixed"])
def test_image_not_fitting_its_modality_is_refused(tmp_path, declared):
    mr = _blob((16, 16, 16), 0) + 500.0  # 0..1000 "MR"
    unit = _save(tmp_path / "mr01.nii.gz", mr / 1000.0, np.eye(4))  # MR scaled to [0, 1]
    other = _save(tmp_path / "mr.nii.gz", mr, np.eye(4))
    if declared == "moving":  # the default modalities: fixed MR, moving CT
        pair, kwargs = {"fixed_image": other, "moving_image": unit}, {}
    else:
        pair, kwargs = {"fixed_image": unit, "moving_image": other}, {"fixed_modality": "ct", "moving_modality": "mr"}
    pattern = rf"'{declared}_image' \(file '.*mr01\.nii\.gz'\), declared as CT, is \(nearly\) constant"
    with raises_in_chain(ValueError, pattern + rf"(.|\n)*--{declared}_modality mr"):
        registration_pair_transforms(**kwargs)(pair)
    # declared as what it is, it passes; the thresholds are options of the chain
    registration_pair_transforms(fixed_modality="mr", moving_modality="mr")(pair)
    registration_pair_transforms(min_spread=0.0, **kwargs)(pair)
