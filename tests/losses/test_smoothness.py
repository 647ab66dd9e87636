from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.losses import DiffusionLoss

from mtreg_monai.losses import SmoothnessLoss


def voxelmorph_grad_l2(ddf: np.ndarray) -> float:
    """voxelmorph's ``Grad('l2').loss``: per axis, mean squared forward difference; averaged over axes and batch."""
    n_dims = ddf.ndim - 2
    per_axis = [np.mean(np.diff(ddf, axis=ax + 2).reshape(ddf.shape[0], -1) ** 2, axis=-1) for ax in range(n_dims)]
    return float(np.mean(sum(per_axis) / n_dims))


def linear_ddf(matrix: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """u(x) = A x, x in voxels: channel i = sum_j A_ij x_j; every gradient du_i/dx_j = A_ij exactly."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    return torch.from_numpy(np.einsum("ij,j...->i...", matrix, grid)[None])


def smooth_ddf(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A smooth random field: 4 sinusoids per channel, wavelengths 16-40 voxels, amplitude ~2 voxels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    channels = []
    for _ in range(len(shape)):
        field = np.zeros(shape)
        for _ in range(4):
            wave = rng.normal(size=len(shape))
            wave *= 2 * np.pi / rng.uniform(16, 40) / np.linalg.norm(wave)
            field += rng.uniform(0.5, 1.0) * np.sin(np.einsum("j,j...->...", wave, grid) + rng.uniform(0, 2 * np.pi))
        channels.append(field)
    return torch.from_numpy(np.stack(channels)[None])


LINEAR_CASES = [
    (np.array([[0.1, -0.2, 0.05], [0.3, 0.0, -0.1], [0.02, 0.15, -0.25]]), (12, 10, 9)),
    (np.eye(3), (5, 6, 7)),
    (np.array([[0.5, -1.0], [2.0, 0.25]]), (11, 13)),
]


@pytest.mark.parametrize("matrix,shape", LINEAR_CASES)
def test_linear_displacement(matrix, shape):
    """Exact gradients A_ij: mean = ||A||_F^2 / N^2 = voxelmorph's Grad('l2') = DiffusionLoss / N."""
    ddf = linear_ddf(matrix, shape)
    n = len(shape)
    expected = float((matrix**2).sum()) / n**2
    value = SmoothnessLoss()(ddf).item()
    assert value == pytest.approx(expected, rel=1e-9)
    assert value == pytest.approx(voxelmorph_grad_l2(ddf.numpy()), rel=1e-9)
    assert value == pytest.approx(DiffusionLoss()(ddf).item() / n, rel=1e-12)


def test_smooth_field_matches_voxelmorph():
    ddf = smooth_ddf((32, 28, 24))
    vxm = voxelmorph_grad_l2(ddf.numpy())
    ours = SmoothnessLoss()(ddf).item()
    assert ours == pytest.approx(vxm, rel=0.03)
    # without the 1/N, MONAI's DiffusionLoss is about N = 3 times the paper's scale
    assert DiffusionLoss()(ddf).item() / vxm == pytest.approx(3.0, rel=0.05)


def test_zero_and_translation():
    assert SmoothnessLoss()(torch.zeros(2, 3, 8, 8, 8)).item() == 0.0
    assert SmoothnessLoss()(torch.full((1, 3, 8, 8, 8), 2.5)).item() == 0.0


def test_reductions_consistent():
    ddf = smooth_ddf((10, 9, 8), seed=1).float().repeat(2, 1, 1, 1, 1)
    none = SmoothnessLoss(reduction="none")(ddf)
    assert none.shape == (2, 3, 8, 7, 6)
    torch.testing.assert_close(SmoothnessLoss(reduction="mean")(ddf), none.mean())
    torch.testing.assert_close(SmoothnessLoss(reduction="sum")(ddf), none.sum())
    torch.testing.assert_close(none, DiffusionLoss(reduction="none")(ddf) / 3)


def test_gradient_flows():
    ddf = smooth_ddf((8, 8, 8)).float().requires_grad_()
    SmoothnessLoss()(ddf).backward()
    assert torch.isfinite(ddf.grad).all() and ddf.grad.abs().max() > 0


@pytest.mark.parametrize(
    "ddf,error,match",
    [
        (torch.zeros(1, 2, 8, 8, 8), ValueError, "does not match number of spatial dimensions"),
        (torch.zeros(1, 3, 8, 2, 8), ValueError, "must be > 2"),
        (torch.zeros(8, 8), ValueError, "Expecting 3-d, 4-d or 5-d pred"),
        (np.zeros((1, 3, 8, 8, 8)), TypeError, "pred to be a torch.Tensor"),
    ],
)
def test_ill_shape(ddf, error, match):
    with pytest.raises(error, match=match):
        SmoothnessLoss()(ddf)


def test_ill_opts():
    with pytest.raises(ValueError, match="reduction="):
        SmoothnessLoss(reduction="avg")
