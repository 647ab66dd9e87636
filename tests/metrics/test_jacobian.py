from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtreg_monai.metrics import (
    JacobianMetric,
    compute_folding_percentage,
    compute_jacobian_metric,
    compute_jacobian_std,
    compute_log_jacobian_std,
    jacobian_determinant,
)

LOGGER = "mtreg_monai.metrics.jacobian"

# (spatial shape, dtype, expected output dtype)
IDENTITY_CASES = [
    ((12, 10, 8), torch.float32, torch.float32),
    ((12, 10, 8), torch.float64, torch.float64),
    ((12, 10, 8), torch.float16, torch.float32),
    ((12, 10), torch.float32, torch.float32),
]


def _grid(shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """(n, *shape) voxel coordinates, channel i = index along spatial axis i."""
    return torch.stack(torch.meshgrid(*[torch.arange(s, dtype=dtype) for s in shape], indexing="ij"))


def _smooth_field(shape: tuple[int, ...], amplitude: float, seed: int = 0) -> torch.Tensor:
    """(1, n, *shape) float64 random smooth displacement (coarse noise upsampled with linear interpolation)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn((1, len(shape), *[max(s // 4, 2) for s in shape]), generator=g, dtype=torch.float64)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    return amplitude * F.interpolate(coarse, size=shape, mode=mode, align_corners=True)


def _voxelmorph_reference(disp: np.ndarray) -> np.ndarray:
    """voxelmorph's ``jacobian_determinant`` (channel-last (H, W, D, 3)): np.gradient of identity + disp."""
    shape = disp.shape[:-1]
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), axis=-1)
    dx, dy, dz = np.gradient(disp + grid, axis=(0, 1, 2))  # dx[..., i] = d phi_i / d x_0
    return (
        dx[..., 0] * (dy[..., 1] * dz[..., 2] - dy[..., 2] * dz[..., 1])
        - dx[..., 1] * (dy[..., 0] * dz[..., 2] - dy[..., 2] * dz[..., 0])
        + dx[..., 2] * (dy[..., 0] * dz[..., 1] - dy[..., 1] * dz[..., 0])
    )


def _fold_field(shape=(20, 8, 6), a=6, b=11) -> torch.Tensor:
    """u_0(x) = -2 (clip(x_0, a, b) - a), u_1 = u_2 = 0.

    Central differences give d u_0 / d x_0 = -2 for a < x_0 < b and -1 at x_0 = a and x_0 = b (half the slope on
    each side), 0 elsewhere, so the determinant 1 + d u_0 / d x_0 is -1 inside the fold, 0 on its two faces
    and 1 elsewhere (one-sided differences at the volume border see no slope).
    """
    x0 = _grid(shape)[0]
    ddf = torch.zeros((1, 3, *shape), dtype=torch.float64)
    ddf[0, 0] = -2.0 * (x0.clamp(a, b) - a)
    return ddf


@pytest.mark.parametrize("shape,dtype,out_dtype", IDENTITY_CASES)
def test_identity(shape, dtype, out_dtype):
    ddf = torch.zeros((2, len(shape), *shape), dtype=dtype)
    jac = jacobian_determinant(ddf)
    assert jac.shape == (2, 1, *shape)
    assert jac.dtype == out_dtype
    assert torch.equal(jac, torch.ones_like(jac))
    assert compute_folding_percentage(ddf).tolist() == [0.0, 0.0]
    assert compute_jacobian_std(ddf).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("shape", [(9, 7, 6), (9, 7)])
def test_linear_displacement(shape):
    # u(x) = A x has grad u = A exactly, for central and one-sided differences: det(I + A) on every voxel
    n = len(shape)
    a = torch.tensor([[0.3, -0.2, 0.1], [0.05, -0.4, 0.25], [-0.15, 0.2, 0.6]], dtype=torch.float64)[:n, :n]
    ddf = torch.einsum("ij,j...->i...", a, _grid(shape))[None]
    expected = float(np.linalg.det(np.eye(n) + a.numpy()))
    jac = jacobian_determinant(ddf)
    assert torch.allclose(jac, torch.full_like(jac, expected), atol=1e-12, rtol=0)


def test_fold():
    a, b, shape = 6, 11, (20, 8, 6)
    jac = jacobian_determinant(_fold_field(shape, a, b))[0, 0]
    x0 = _grid(shape)[0]
    expected = torch.where((x0 > a) & (x0 < b), -1.0, torch.where((x0 == a) | (x0 == b), 0.0, 1.0))
    assert torch.allclose(jac, expected.to(jac.dtype), atol=1e-12)
    values = expected.flatten().numpy()
    # folding counts |J| <= 0, so the two faces with J = 0 are included: (b - a + 1) of 20 slices
    assert compute_folding_percentage(_fold_field(shape, a, b)).item() == pytest.approx(100.0 * (b - a + 1) / 20)
    assert compute_jacobian_std(_fold_field(shape, a, b)).item() == pytest.approx(float(np.std(values)))
    # Learn2Reg's SDlogJ: std(log(clip(J + 3, 1e-9, 1e9))); J + 3 takes the values 2, 3, 4
    assert compute_log_jacobian_std(_fold_field(shape, a, b)).item() == pytest.approx(float(np.std(np.log(values + 3))))
    # textbook variant: offset 0, folded voxels clipped to 1e-6
    textbook = np.std(np.log(np.clip(values, 1e-6, None)))
    sdlogj = compute_log_jacobian_std(_fold_field(shape, a, b), offset=0.0, clip_min=1e-6)
    assert sdlogj.item() == pytest.approx(textbook)


def test_numpy_reference():
    # voxelmorph's np.gradient-based determinant over the whole volume, borders included
    ddf = _smooth_field((16, 14, 12), amplitude=2.5)
    ours = jacobian_determinant(ddf)[0, 0].numpy()
    ref = _voxelmorph_reference(ddf[0].permute(1, 2, 3, 0).numpy())
    assert (ref <= 0).any() and (ref > 0).any(), "the field should fold somewhere to make the test meaningful"
    np.testing.assert_allclose(ours, ref, atol=1e-10, rtol=0)
    # float32 input: same figures within float32 rounding
    np.testing.assert_allclose(jacobian_determinant(ddf.float())[0, 0].numpy(), ref, atol=1e-4, rtol=0)


def test_simpleitk_reference():
    sitk = pytest.importorskip("SimpleITK", reason="SimpleITK is needed for the reference determinant")
    shape, spacing = (14, 12, 10), (0.8, 1.5, 2.5)
    ddf = _smooth_field(shape, amplitude=2.0, seed=1)
    # SimpleITK index (x, y, z) = our array axes (0, 1, 2), and its array view is (z, y, x, component) with the
    # components in x, y, z order: arr[k, j, i, c] = ddf[c, i, j, k].  SimpleITK wants the displacement in
    # physical units (mm), so component c is scaled by spacing[c]; the determinant must not change.
    arr = (ddf[0] * torch.tensor(spacing, dtype=torch.float64)[:, None, None, None]).permute(3, 2, 1, 0).numpy()
    image = sitk.GetImageFromArray(arr, isVector=True)
    image.SetSpacing(spacing)
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(image)).transpose(2, 1, 0)
    ours = jacobian_determinant(ddf)[0, 0].numpy()
    inner = (slice(1, -1),) * 3  # SimpleITK differs on the outermost voxels only (a different border rule)
    np.testing.assert_allclose(ours[inner], ref[inner], atol=1e-6, rtol=0)


def test_learn2reg_reference():
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy is needed for the Learn2Reg-style reference")
    # Learn2Reg's evaluation: correlate each component with [-0.5, 0, 0.5] along each axis (zero padding), add
    # the identity, keep [2:-2] per axis, determinant; LogJacDetStd = std(log(clip(J + 3, 1e-9, 1e9)))
    shape = (16, 14, 12)
    ddf = _smooth_field(shape, amplitude=2.5, seed=2)
    disp = ddf[0].numpy()
    grad = np.empty((3, 3, *shape))  # grad[i, j] = d disp_j / d x_i
    for i in range(3):
        kernel = np.array([-0.5, 0.0, 0.5]).reshape([3 if a == i else 1 for a in range(3)])
        for j in range(3):
            grad[i, j] = ndimage.correlate(disp[j], kernel, mode="constant", cval=0.0)
    jac = (grad + np.eye(3).reshape(3, 3, 1, 1, 1))[:, :, 2:-2, 2:-2, 2:-2]
    ref = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
    inner = (slice(2, -2),) * 3
    np.testing.assert_allclose(jacobian_determinant(ddf)[0, 0].numpy()[inner], ref, atol=1e-10, rtol=0)
    mask = torch.zeros((1, 1, *shape), dtype=torch.bool)
    mask[(0, 0, *inner)] = True
    ref_sdlogj = np.log(np.clip(ref + 3, 1e-9, 1e9)).std()
    assert compute_log_jacobian_std(ddf, mask=mask).item() == pytest.approx(ref_sdlogj, rel=1e-10)


def test_mask():
    shape = (20, 8, 6)
    ddf = _fold_field(shape).repeat(2, 1, 1, 1, 1)
    mask = torch.zeros((1, 1, *shape), dtype=torch.bool)
    mask[:, :, :10] = True  # slices 0..9: the fold covers 6..9 (J = 0 at 6, -1 at 7, 8, 9)
    assert compute_folding_percentage(ddf, mask=mask).tolist() == pytest.approx([40.0, 40.0])
    expected_std = np.std([1.0] * 6 + [0.0] + [-1.0] * 3)
    assert compute_jacobian_std(ddf, mask=mask.float()).tolist() == pytest.approx([expected_std] * 2)
    # per-item masks
    mask2 = torch.cat([mask, ~mask])
    assert compute_folding_percentage(ddf, mask=mask2).tolist() == pytest.approx([40.0, 20.0])


def test_empty_mask_and_nan(caplog):
    ddf = torch.zeros(2, 3, 8, 8, 8)
    mask = torch.ones(2, 1, 8, 8, 8)
    mask[1] = 0
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = compute_folding_percentage(ddf, mask=mask)
    assert out[0].item() == 0.0 and torch.isnan(out[1])
    assert "mask has no voxel for batch item(s) [1]" in caplog.text
    caplog.clear()
    ddf[0, 1, 3, 3, 3] = float("nan")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = compute_jacobian_std(ddf)
    assert torch.isnan(out[0]) and out[1].item() == 0.0
    assert "non-finite Jacobian determinant" in caplog.text


def test_jacobian_input():
    jac = jacobian_determinant(_fold_field())
    assert compute_folding_percentage(jac).item() == compute_folding_percentage(_fold_field()).item()
    assert compute_jacobian_metric(jac, "jacobian_std").item() == pytest.approx(compute_jacobian_std(jac).item())


def test_gradient_flows():
    ddf = _smooth_field((8, 8, 8), amplitude=0.5).requires_grad_(True)
    jacobian_determinant(ddf).sum().backward()
    assert ddf.grad is not None and torch.isfinite(ddf.grad).all()


def test_ill_shape():
    with pytest.raises(ValueError, match=r"ddf of shape \(1, 2, 8, 8, 8\) must have 3 channels"):
        jacobian_determinant(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(NotImplementedError, match="ddf must be a 2-D"):
        jacobian_determinant(torch.zeros(1, 1, 8))
    with pytest.raises(ValueError, match="at least 2 voxels"):
        jacobian_determinant(torch.zeros(1, 3, 8, 1, 8))
    with pytest.raises(TypeError, match="ddf must be a torch.Tensor"):
        jacobian_determinant(np.zeros((1, 3, 8, 8, 8)))
    with pytest.raises(ValueError, match="ddf_or_jac of shape .* 1 channel"):
        compute_folding_percentage(torch.zeros(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="mask must have shape"):
        compute_folding_percentage(torch.zeros(2, 3, 8, 8, 8), mask=torch.ones(2, 1, 8, 8, 7))
    with pytest.raises(TypeError, match="mask must be a torch.Tensor"):
        compute_jacobian_std(torch.zeros(1, 3, 8, 8, 8), mask=np.ones((1, 1, 8, 8, 8)))


def test_ill_opts():
    with pytest.raises(ValueError, match="folding"):
        JacobianMetric("folding")
    with pytest.raises(ValueError, match="clip_min"):
        compute_log_jacobian_std(torch.zeros(1, 3, 8, 8, 8), clip_min=0.0)


def test_cumulative_metric():
    metric = JacobianMetric("folding_percent")
    fold = _fold_field().float()
    out = metric(fold)  # 30 %
    assert out.shape == (1, 1)
    metric(torch.zeros(2, 3, 20, 8, 6))  # 0 %, 0 %
    assert metric.aggregate().item() == pytest.approx(10.0)
    assert metric.aggregate("none").flatten().tolist() == pytest.approx([30.0, 0.0, 0.0])
    # list of channel-first items, with masks as y
    metric.reset()
    masks = [torch.ones(1, 20, 8, 6), torch.ones(1, 20, 8, 6)]
    masks[1][:, 10:] = 0
    metric([fold[0], fold[0]], masks)
    assert metric.aggregate("none").flatten().tolist() == pytest.approx([30.0, 40.0])
    std_metric = JacobianMetric("jacobian_std", get_not_nans=True)
    std_metric(torch.zeros(1, 3, 8, 8, 8))
    value, not_nans = std_metric.aggregate()
    assert value.item() == 0.0 and not_nans.item() == 1


def test_all_nan_aggregate(caplog):
    metric = JacobianMetric("jacobian_std")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        metric(torch.full((1, 3, 8, 8, 8), float("nan")))
    assert torch.isnan(metric.aggregate())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    ddf = _fold_field().float().cuda()
    jac = jacobian_determinant(ddf)
    assert jac.device == ddf.device
    assert compute_folding_percentage(ddf).item() == pytest.approx(30.0)
    assert torch.allclose(jac.cpu(), jacobian_determinant(ddf.cpu()))
