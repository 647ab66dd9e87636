from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mtreg_monai.metrics import (
    CalibrationCurve,
    UncertaintyErrorMetric,
    calibration_curve,
    rank_average,
    registration_error,
    spearman_correlation,
)

scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is the reference for the rank correlation")

LOGGER = "mtreg_monai.metrics.uncertainty_error"

# (uncertainty from error, expected rho): analytic answers of monotone transforms
MONOTONE_CASES = [
    (lambda e: e, 1.0),
    (lambda e: torch.exp(3 * e) + 2, 1.0),
    (lambda e: e**3, 1.0),
    (lambda e: -e, -1.0),
    (lambda e: 1.0 / (1.0 + e), -1.0),
]

# (uncertainty shape, error shape, mask shape or None, message)
ILL_SHAPES = [
    ((2, 3, 8, 8, 8), (2, 1, 8, 8, 7), None, "error of shape"),
    ((2, 3, 8, 8, 8), (1, 1, 8, 8, 8), None, "error of shape"),
    ((2, 1, 8, 8, 8), (2, 1, 8, 8), None, "error of shape"),
    ((8, 8), (8, 8), None, "uncertainty of shape"),
    ((2, 1, 8, 8, 8), (2, 1, 8, 8, 8), (2, 2, 8, 8, 8), "mask of shape"),
    ((2, 1, 8, 8, 8), (2, 1, 8, 8, 8), (3, 1, 8, 8, 8), "mask of shape"),
    ((2, 1, 8, 8, 8), (2, 1, 8, 8, 8), (2, 1, 8, 8, 4), "mask of shape"),
]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("transform, expected", MONOTONE_CASES)
def test_monotone(transform, expected):
    err = torch.rand(2, 1, 12, 10, 8, generator=_gen(), dtype=torch.float64)
    rho = spearman_correlation(transform(err), err)
    assert rho.shape == (2,) and rho.dtype == torch.float64
    torch.testing.assert_close(rho, torch.full((2,), expected, dtype=torch.float64))


def test_independent_small():
    g = _gen(1)
    u, err = torch.rand(3, 1, 32, 32, 24, generator=g), torch.rand(3, 1, 32, 32, 24, generator=g)
    assert spearman_correlation(u, err).abs().max() < 0.02  # ~ 1 / sqrt(24576) = 0.0064 per item


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_match_scipy(seed):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 5, size=(2, 3, 6, 5, 4)).astype(np.float32)  # heavy ties, 3 channels
    err = np.where(rng.random((2, 1, 6, 5, 4)) < 0.5, 0.0, rng.integers(1, 4, size=(2, 1, 6, 5, 4)))
    rho = spearman_correlation(torch.from_numpy(u), torch.from_numpy(err), channel_reduction="mean")
    for b in range(2):
        expected = scipy_stats.spearmanr(u[b].mean(axis=0).ravel(), err[b, 0].ravel()).statistic
        assert rho[b].item() == pytest.approx(expected, abs=1e-12)


def test_rank_average_matches_scipy():
    values = torch.tensor([3.0, 1.0, 3.0, 0.0, 0.0, 0.0, float("inf"), 2.0, 3.0])
    np.testing.assert_allclose(rank_average(values).numpy(), scipy_stats.rankdata(values.numpy()))


def test_channel_reduction_norm():
    g = _gen(2)
    u_phi = torch.randn(1, 3, 8, 8, 8, generator=g, dtype=torch.float64)
    err = torch.rand(1, 1, 8, 8, 8, generator=g, dtype=torch.float64)
    expected = scipy_stats.spearmanr(u_phi[0].norm(dim=0).ravel().numpy(), err.ravel().numpy()).statistic
    assert spearman_correlation(u_phi, err).item() == pytest.approx(expected, abs=1e-12)
    assert spearman_correlation(u_phi.norm(dim=1, keepdim=True), err).item() == pytest.approx(expected, abs=1e-12)


def test_mask():
    err = torch.rand(2, 1, 8, 8, 8, generator=_gen(3))
    u = err.clone()
    mask = torch.zeros(1, 1, 8, 8, 8, dtype=torch.bool)
    mask[..., 2:6, 2:6, 2:6] = True
    u[~mask.expand_as(u)] = 1.0 - u[~mask.expand_as(u)]  # reversed outside the mask: rho 1 only inside it
    torch.testing.assert_close(spearman_correlation(u, err, mask=mask), torch.ones(2, dtype=torch.float64))
    assert (spearman_correlation(u, err) < 0.9).all()
    m2 = torch.stack([mask[0], ~mask[0]])
    torch.testing.assert_close(spearman_correlation(u, err, mask=m2), torch.tensor([1.0, -1.0], dtype=torch.float64))


def test_nan_inputs(caplog):
    err = torch.rand(2, 1, 6, 6, 6, generator=_gen(4))
    u = err.clone()
    u[0, 0, 0, 0, 0] = float("nan")
    u[1, 0, 1, 1, 1] = float("inf")
    err[1, 0, 1, 1, 1] = 2.0  # the largest error has the infinite uncertainty: still a perfect ranking
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rho = spearman_correlation(u, err)
    torch.testing.assert_close(rho, torch.ones(2, dtype=torch.float64))
    assert "NaN uncertainty or error" in caplog.text
    # constant map or empty mask: no ranking
    rho = spearman_correlation(
        torch.ones(2, 1, 6, 6, 6), err, mask=torch.tensor([1, 0]).view(2, 1, 1, 1, 1).expand(2, 1, 6, 6, 6)
    )
    assert torch.isnan(rho).all()


def test_zero_error_everywhere_is_nan():
    u = torch.rand(1, 1, 6, 6, 6, generator=_gen(5))
    assert torch.isnan(spearman_correlation(u, torch.zeros_like(u))).all()


@pytest.mark.parametrize("u_shape, e_shape, m_shape, match", ILL_SHAPES)
def test_ill_shape(u_shape, e_shape, m_shape, match):
    mask = None if m_shape is None else torch.ones(m_shape)
    with pytest.raises(ValueError, match=match):
        spearman_correlation(torch.rand(u_shape), torch.rand(e_shape), mask=mask)
    with pytest.raises(ValueError, match=match):
        calibration_curve(torch.rand(u_shape), torch.rand(e_shape), mask=mask)


def test_ill_opts():
    u = torch.rand(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="channel_reduction"):
        spearman_correlation(u, u, channel_reduction="median")
    with pytest.raises(ValueError, match="num_bins"):
        calibration_curve(u, u, num_bins=0)
    with pytest.raises(TypeError, match="uncertainty must be a torch.Tensor"):
        spearman_correlation(u.numpy(), u)
    with pytest.raises(TypeError, match="real-valued"):
        spearman_correlation(u, u > 0.5)


def test_registration_error():
    pred = torch.zeros(2, 3, 6, 5, 4)
    true = torch.zeros(2, 3, 6, 5, 4)
    pred[:, 0] = 3.0
    pred[:, 1] = 4.0
    err = registration_error(pred, true)
    assert err.shape == (2, 1, 6, 5, 4)
    torch.testing.assert_close(err, torch.full((2, 1, 6, 5, 4), 5.0))
    assert registration_error(true.half(), true).dtype == torch.float32
    assert registration_error(torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)).shape == (1, 1, 4, 4)


@pytest.mark.parametrize(
    "pred_shape, true_shape, match",
    [
        ((2, 3, 6, 5, 4), (2, 3, 6, 5, 5), "ddf_true of shape"),
        ((2, 1, 6, 5, 4), (2, 1, 6, 5, 4), "ddf_pred of shape"),
        ((2, 3, 6, 5), (2, 3, 6, 5), "ddf_pred of shape"),
    ],
)
def test_registration_error_ill_shape(pred_shape, true_shape, match):
    with pytest.raises(ValueError, match=match):
        registration_error(torch.zeros(pred_shape), torch.zeros(true_shape))


def test_calibration_increasing():
    g = _gen(6)
    u = torch.rand(2, 3, 16, 16, 16, generator=g)
    # error grows with ||u|| up to noise that is small compared with the spread between deciles
    err = u.norm(dim=1, keepdim=True) ** 2 + 0.01 * torch.rand(2, 1, 16, 16, 16, generator=g)
    curve = calibration_curve(u, err, num_bins=10)
    assert isinstance(curve, CalibrationCurve)
    assert curve.uncertainty.shape == curve.error.shape == curve.count.shape == (2, 10)
    assert curve.edges.shape == (2, 11)
    assert (curve.count.sum(dim=1) == 16**3).all() and (curve.count > 0).all()
    assert (curve.error.diff(dim=1) > 0).all() and (curve.uncertainty.diff(dim=1) > 0).all()
    assert (curve.edges.diff(dim=1) >= 0).all()
    # the bins are deciles: about 10% of the voxels each
    assert (curve.count - 16**3 // 10).abs().max() <= 1
    # the mean uncertainty of each bin lies between its edges
    assert (curve.uncertainty >= curve.edges[:, :-1]).all() and (curve.uncertainty <= curve.edges[:, 1:]).all()
    pooled = calibration_curve(u, err, num_bins=10, pool_batch=True)
    assert pooled.error.shape == (1, 10) and pooled.count.sum() == 2 * 16**3


def test_calibration_ties_and_mask():
    u = torch.zeros(1, 1, 10, 10)
    u[..., 5:, :] = 1.0  # half the voxels tied at 0, half at 1
    err = u * 2.0
    mask = torch.ones(1, 1, 10, 10)
    mask[..., 0, :] = 0
    curve = calibration_curve(u, err, num_bins=4, mask=mask)
    assert curve.count.sum() == 90
    assert curve.count[0].tolist() == [0, 40, 0, 50]  # bin k: q_k <= u < q_k+1, edges (0, 0, 1, 1, 1)
    assert torch.isnan(curve.error[0, [0, 2]]).all()  # empty bins
    assert curve.error[0, 1] == 0.0 and curve.error[0, 3] == 2.0


def test_metric_accumulates():
    metric = UncertaintyErrorMetric(get_not_nans=True)
    err = torch.rand(2, 1, 8, 8, 8, generator=_gen(7))
    metric(err, err)
    metric(-err, err)
    metric(torch.ones(1, 1, 8, 8, 8), err[:1])  # constant uncertainty: NaN, skipped
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(0.0, abs=1e-6) and not_nans.item() == 4
    per_pair, _ = metric.aggregate("none")
    assert per_pair.shape == (5, 1) and torch.isnan(per_pair[4]).all()
    assert per_pair[:2].min() == pytest.approx(1.0) and per_pair[2:4].max() == pytest.approx(-1.0)
    metric.reset()
    with pytest.raises(ValueError, match="no buffered values"):
        metric.aggregate()
    with pytest.raises(ValueError, match="needs y"):
        metric(err)


def test_metric_mask_keyword():
    metric = UncertaintyErrorMetric(channel_reduction="max")
    err = torch.rand(1, 1, 8, 8, 8, generator=_gen(8))
    mask = torch.zeros_like(err)
    mask[..., :4] = 1
    u = torch.cat([err, err, torch.zeros_like(err)], dim=1)
    u[..., 4:] = torch.rand(1, 3, 8, 8, 4, generator=_gen(9))
    metric(u, err, mask=mask)
    assert metric.aggregate().item() == pytest.approx(1.0)


def test_large_volume_memory_sane():
    """96 x 112 x 80 (860k voxels) with heavy ties in well under a second per item on a CPU."""
    g = _gen(10)
    u = torch.rand(1, 3, 96, 112, 80, generator=g)
    err = (torch.rand(1, 1, 96, 112, 80, generator=g) * 4).floor()
    rho = spearman_correlation(u, err)
    assert rho.abs().item() < 0.01
    curve = calibration_curve(u, err)
    assert curve.count.sum() == 96 * 112 * 80
