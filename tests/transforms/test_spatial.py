from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from mtreg_monai.transforms import MatchPairGeometryd, same_geometry

N = 16
# moving grid: 8^3 voxels of 2 mm, origin chosen so that no fixed voxel centre is equidistant from two moving ones
T = np.array([4.5, 1.25, -0.5])
MOVING_AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
MOVING_AFFINE[:3, 3] = T


def _fixed() -> MetaTensor:
    return MetaTensor(torch.zeros(1, N, N, N), affine=torch.eye(4, dtype=torch.float64))


def _moving_linear() -> MetaTensor:
    """Moving image whose value at each voxel is x + 2y + 3z of the voxel centre's world position (mm)."""
    idx = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij")).astype(np.float64)
    world = 2.0 * idx + T[:, None, None, None]
    val = world[0] + 2 * world[1] + 3 * world[2]
    return MetaTensor(torch.tensor(val[None], dtype=torch.float32), affine=torch.tensor(MOVING_AFFINE))


def _moving_label() -> MetaTensor:
    lab = np.zeros((1, 8, 8, 8), dtype=np.int64)
    lab[0, 3, 3, 3] = 7  # world centre (10.5, 7.25, 5.5) mm, covering (9.5..11.5, 6.25..8.25, 4.5..6.5)
    return MetaTensor(torch.tensor(lab), affine=torch.tensor(MOVING_AFFINE))


def test_resample_linear_exact():
    out = MatchPairGeometryd(allow_missing_keys=True)({"fixed_image": _fixed(), "moving_image": _moving_linear()})
    moved = out["moving_image"]
    assert moved.shape == (1, N, N, N)
    np.testing.assert_allclose(moved.affine.numpy(), np.eye(4))
    j = np.stack(np.meshgrid(*[np.arange(N)] * 3, indexing="ij"))
    expected = j[0] + 2 * j[1] + 3 * j[2]
    inside = np.all([(j[a] >= T[a]) & (j[a] <= T[a] + 14) for a in range(3)], axis=0)  # moving field of view
    assert inside.sum() > 1000
    np.testing.assert_allclose(moved[0].numpy()[inside], expected[inside], atol=1e-4)


def test_resample_label_nearest_known_voxel():
    data = {"fixed_image": _fixed(), "moving_image": _moving_linear(), "moving_label": _moving_label()}
    out = MatchPairGeometryd()(data)
    lab = out["moving_label"]
    assert lab.dtype == torch.int64
    found = {tuple(v) for v in np.argwhere(lab[0].numpy() == 7).tolist()}
    expected = {(a, b, c) for a in (10, 11) for b in (7, 8) for c in (5, 6)}
    assert found == expected
    assert set(np.unique(lab.numpy()).tolist()) == {0, 7}


def test_pass_through_same_grid():
    fixed = _fixed()
    moving = MetaTensor(torch.rand(1, N, N, N), affine=torch.eye(4, dtype=torch.float64) + 1e-5)
    before = moving.clone()
    out = MatchPairGeometryd(keys="moving_image", mode="bilinear", padding_mode="border")(
        {"fixed_image": fixed, "moving_image": moving}
    )
    assert out["moving_image"].data_ptr() == moving.data_ptr()  # no copy, no interpolation
    torch.testing.assert_close(out["moving_image"].as_tensor(), before.as_tensor(), rtol=0, atol=0)
    assert [op["class"] for op in out["moving_image"].applied_operations] == ["MatchPairGeometryd"]


def test_inverse():
    xform = MatchPairGeometryd()
    moving, label = _moving_linear(), _moving_label()
    out = xform({"fixed_image": _fixed(), "moving_image": moving, "moving_label": label})
    back = xform.inverse(out)
    for key, orig in (("moving_image", moving), ("moving_label", label)):
        assert back[key].shape == orig.shape
        np.testing.assert_allclose(back[key].affine.numpy(), MOVING_AFFINE)
        assert back[key].applied_operations == []
    assert back["moving_label"].dtype == torch.int64
    assert int((back["moving_label"] == 7).sum()) == 1 and int(back["moving_label"][0, 3, 3, 3]) == 7
    # interior of the moving grid (fully inside the fixed field of view) comes back to the linear values
    interior = (0, slice(1, 5), slice(1, 5), slice(1, 5))
    np.testing.assert_allclose(back["moving_image"][interior].numpy(), moving[interior].numpy(), atol=1e-3)


def test_raise_mode():
    xform = MatchPairGeometryd(keys="moving_image", mode="bilinear", padding_mode="border", on_mismatch="raise")
    with pytest.raises(ValueError, match=r"'moving_image' is not on the grid of 'fixed_image': shapes \(8, 8, 8\)"):
        xform({"fixed_image": _fixed(), "moving_image": _moving_linear()})
    shifted = MetaTensor(torch.rand(1, N, N, N), affine=torch.eye(4, dtype=torch.float64))
    shifted.affine[0, 3] = 0.5  # same shape, origin 0.5 mm away
    with pytest.raises(ValueError, match="affines"):
        xform({"fixed_image": _fixed(), "moving_image": shifted})


def test_same_geometry():
    a = _fixed()
    assert same_geometry(a, a.clone())
    assert not same_geometry(a, _moving_linear())
    b = a.clone()
    b.affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))  # LPS flip, same shape
    assert not same_geometry(a, b)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"on_mismatch": "crop"}, ValueError, "crop"),
        ({"mode": ("bilinear", "nearest", "nearest")}, ValueError, "mode must be one value or one per key"),
        ({"atol": -1.0}, ValueError, "atol"),
        ({"keys": ("moving_image", "fixed_image")}, ValueError, "fixed_key"),
    ],
)
def test_ill_opts(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        MatchPairGeometryd(**kwargs)


def test_missing_fixed_and_missing_label():
    with pytest.raises(KeyError, match="fixed_key 'fixed_image'"):
        MatchPairGeometryd()({"moving_image": _moving_linear()})
    out = MatchPairGeometryd(allow_missing_keys=True)({"fixed_image": _fixed(), "moving_image": _moving_linear()})
    assert "moving_label" not in out and out["moving_image"].shape == (1, N, N, N)
