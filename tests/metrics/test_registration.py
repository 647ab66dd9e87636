from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch

from mtreg_monai.metrics import (
    DEFAULT_LABEL_NAMES,
    RegistrationMetric,
    check_label_maps,
    check_label_names,
    compute_label_asd,
    compute_label_dice,
    compute_label_overlap,
    compute_registration_metrics,
    finite_summary,
    registration_metric_keys,
)

LOGGER = "mtreg_monai.metrics.overlap"
SHAPE = (20, 16, 16)


def _cube(start: tuple[int, ...], size: int, value: int = 1, shape=SHAPE, out=None) -> torch.Tensor:
    """(1, 1, *shape) long label map with a cube of side ``size`` voxels at ``start`` set to ``value``."""
    lab = torch.zeros((1, 1, *shape), dtype=torch.long) if out is None else out
    lab[(0, 0, *[slice(s, s + size) for s in start])] = value
    return lab


def _brute_force_asd(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Definition-level ASD: surface = foreground voxels with a background face-neighbour (outside counts as
    background); mean over both surfaces of the distance (mm) to the nearest surface voxel of the other mask."""

    def surface(m):
        padded = np.pad(m, 1)
        inner = np.ones_like(m)
        for ax in range(m.ndim):
            for step in (-1, 1):
                inner &= np.roll(padded, step, axis=ax)[tuple(slice(1, -1) for _ in range(m.ndim))]
        return np.argwhere(m & ~inner) * np.asarray(spacing)

    sa, sb = surface(a), surface(b)
    d = np.sqrt(((sa[:, None, :] - sb[None, :, :]) ** 2).sum(-1))
    return float(np.concatenate([d.min(1), d.min(0)]).mean())


def test_identical():
    lab = _cube((3, 3, 3), 6, 1)
    _cube((12, 4, 4), 5, 2, out=lab)
    _cube((3, 10, 10), 4, 3, out=lab)
    _cube((12, 10, 10), 3, 4, out=lab)
    dice = compute_label_dice(lab, lab)
    asd = compute_label_asd(lab, lab, spacing=(1.5, 0.7, 2.0))
    assert dice.shape == asd.shape == (1, 4)
    assert dice.tolist() == [[1.0, 1.0, 1.0, 1.0]]
    assert asd.tolist() == [[0.0, 0.0, 0.0, 0.0]]


# (offset of the second cube, expected Dice) for two cubes of side n = 6: overlap (6 - k0)(6 - k1)(6 - k2) / 216
DICE_CASES = [((2, 0, 0), 4 / 6), ((1, 3, 0), 5 * 3 / 36), ((1, 1, 1), 125 / 216), ((6, 0, 0), 0.0)]


@pytest.mark.parametrize("offset,expected", DICE_CASES)
def test_dice_offset_cubes(offset, expected):
    fixed = _cube((2, 2, 2), 6)
    warped = _cube(tuple(2 + o for o in offset), 6)
    assert compute_label_dice(warped, fixed, {1: "liver"}).item() == pytest.approx(expected)


def test_asd_shifted_cube_anisotropic():
    # Cube of side n = 6 shifted by k = 2 voxels along axis 0, spacing (0.5, 2, 3) mm.  A's 152 surface voxels
    # (216 - 64), by layer i along axis 0 (B occupies layers 2..7):
    #   i = 0: 36 voxels, nearest B surface is B's bottom face (layer 2): 2 * 0.5 mm each;
    #   i = 1: 20 ring voxels, 1 * 0.5 mm;   i = 2..4: 20 ring voxels each, on B's side faces too: 0;
    #   i = 5: 20 ring voxels on B's side faces: 0; 16 inner voxels: B's top face (layer 7) is 2 * 0.5 = 1 mm
    #          away, B's side faces >= 2 mm (spacing of axis 1), B's bottom face 3 * 0.5 mm: 1 mm each.
    # Sum = (36 * 2 + 20 * 1 + 16 * 2) * 0.5 = 62 mm over 152 voxels; B -> A is the mirror image, same mean.
    fixed = _cube((4, 4, 4), 6)
    warped = _cube((6, 4, 4), 6)
    expected = 62.0 / 152.0
    assert compute_label_asd(warped, fixed, {1: "liver"}, spacing=(0.5, 2.0, 3.0)).item() == pytest.approx(expected)
    # same pair, brute-force definition with the same spacing
    assert _brute_force_asd(warped[0, 0].numpy() == 1, fixed[0, 0].numpy() == 1, (0.5, 2.0, 3.0)) == pytest.approx(
        expected
    )


def test_asd_against_brute_force():
    g = torch.Generator().manual_seed(0)
    spacing = (0.8, 1.3, 2.1)
    fixed = torch.zeros((1, 1, 16, 14, 12), dtype=torch.long)
    warped = torch.zeros_like(fixed)
    for lab, v in ((fixed, 1), (warped, 1), (fixed, 2), (warped, 2)):  # unions of random boxes
        for _ in range(3):
            lo = torch.randint(1, 7, (3,), generator=g).tolist()
            hi = [a + int(torch.randint(3, 7, (1,), generator=g)) for a in lo]
            lab[0, 0, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = v
    ours = compute_label_asd(warped, fixed, {1: "a", 2: "b"}, spacing=spacing)[0]
    for c, v in enumerate((1, 2)):
        ref = _brute_force_asd(warped[0, 0].numpy() == v, fixed[0, 0].numpy() == v, spacing)
        assert ours[c].item() == pytest.approx(ref, rel=1e-5)


def test_float_labels_and_2d():
    fixed = _cube((2, 2), 6, shape=(12, 12))
    warped = _cube((4, 2), 6, shape=(12, 12))
    assert compute_label_dice(warped.float(), fixed.to(torch.uint8), {1: "x"}).item() == pytest.approx(4 / 6)
    # 2-D analogue of the 3-D hand count: 20 surface pixels of a 6x6 square shifted by 2 along axis 0, spacing
    # (0.5, 2): row 0: 6 px at 1 mm, row 1: 2 px at 0.5 mm, rows 2..4: 0, row 5: 2 side px 0, 4 inner px 1 mm
    expected = (6 * 1.0 + 2 * 0.5 + 4 * 1.0) / 20
    assert compute_label_asd(warped, fixed, {1: "x"}, spacing=(0.5, 2.0)).item() == pytest.approx(expected)


def test_empty_label(caplog):
    fixed = _cube((2, 2, 2), 6, 1)
    warped = _cube((3, 2, 2), 6, 1)
    _cube((12, 8, 8), 3, 3, out=fixed)  # right kidney in the fixed map only
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        out = compute_registration_metrics(warped, fixed, torch.zeros(1, 3, *SHAPE), spacing=1.0)
    assert out["dice_liver"].item() == pytest.approx(5 / 6)
    assert torch.isnan(out["dice_spleen"]).all() and torch.isnan(out["asd_spleen"]).all()
    assert out["dice_right_kidney"].item() == 0.0 and out["asd_right_kidney"].item() == float("inf")
    assert "no foreground for label 2 ('spleen') in warped_label nor fixed_label" in caplog.text
    assert "no foreground for label 3 ('right_kidney') in warped_label (fixed_label has some)" in caplog.text
    assert "no foreground for label 4 ('left_kidney')" in caplog.text
    # the means skip NaN labels; an inf ASD is kept so that a lost organ is not hidden
    assert out["dice_mean"].item() == pytest.approx((5 / 6 + 0.0) / 2)
    assert out["asd_mean"].item() == float("inf")


def test_registration_metrics_keys_and_values():
    keys = registration_metric_keys()
    assert keys == [
        "dice_liver", "dice_spleen", "dice_right_kidney", "dice_left_kidney", "dice_mean",
        "asd_liver", "asd_spleen", "asd_right_kidney", "asd_left_kidney", "asd_mean",
        "folding_percent", "jacobian_std",
    ]  # fmt: skip
    assert list(DEFAULT_LABEL_NAMES.items()) == [(1, "liver"), (2, "spleen"), (3, "right_kidney"), (4, "left_kidney")]
    fixed = _cube((2, 2, 2), 6, 1).repeat(2, 1, 1, 1, 1)
    warped = torch.cat([_cube((4, 2, 2), 6, 1), _cube((2, 2, 2), 6, 1)])
    ddf = torch.zeros(2, 3, *SHAPE)
    ddf[0, 0] = -2.0 * (torch.arange(SHAPE[0]).float().clamp(6, 11) - 6)[:, None, None]  # J<=0 on slices 6..11
    jac_metrics = ["folding_percent", "jacobian_std", "log_jacobian_std"]
    out = compute_registration_metrics(warped, fixed, ddf, {1: "liver"}, (0.5, 2.0, 3.0), jacobian_metrics=jac_metrics)
    assert list(out) == ["dice_liver", "dice_mean", "asd_liver", "asd_mean", *jac_metrics]
    assert all(v.shape == (2,) for v in out.values())
    assert out["dice_liver"].tolist() == pytest.approx([4 / 6, 1.0])
    assert out["asd_liver"].tolist() == pytest.approx([62 / 152, 0.0])
    assert out["folding_percent"].tolist() == pytest.approx([100 * 6 / 20, 0.0])
    assert out["jacobian_std"][1].item() == 0.0 and out["jacobian_std"][0].item() > 0


def test_ill_inputs():
    lab = _cube((2, 2, 2), 4)
    ddf = torch.zeros(1, 3, *SHAPE)
    with pytest.raises(ValueError, match=r"ddf of shape \(1, 2, 20, 16, 16\) must have 3 channels"):
        compute_registration_metrics(lab, lab, torch.zeros(1, 2, *SHAPE))
    with pytest.raises(ValueError, match="ddf must have shape"):
        compute_registration_metrics(lab, lab, torch.zeros(1, 3, 20, 16, 15))
    with pytest.raises(ValueError, match="warped_label and fixed_label must have the same shape"):
        compute_label_dice(lab, lab[..., :-1])
    with pytest.raises(ValueError, match=r"fixed_label must be a label map of shape \(B, 1"):
        compute_label_dice(lab, lab.repeat(1, 2, 1, 1, 1))
    with pytest.raises(ValueError, match="warped_label must hold integer label values.*0.5"):
        compute_label_dice(lab * 0.5, lab)
    with pytest.raises(ValueError, match="spacing must have 3 values"):
        compute_label_asd(lab, lab, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match="spacing must be finite and positive"):
        compute_label_asd(lab, lab, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(TypeError, match="spacing must be a number"):
        compute_label_asd(lab, lab, spacing="1")
    with pytest.raises(TypeError, match="warped_label must be a torch.Tensor"):
        compute_label_dice(lab.numpy(), lab)
    with pytest.raises(TypeError, match="label_names keys must be int"):
        compute_label_dice(lab, lab, {"1": "liver"})
    with pytest.raises(ValueError, match=r"label_names\[1\] must be a name"):
        compute_label_dice(lab, lab, {1: "right kidney"})
    with pytest.raises(ValueError, match="log_jac"):
        compute_registration_metrics(lab, lab, ddf, jacobian_metrics=["log_jac"])


def test_label_overlap_in_one_pass(caplog):
    """``compute_label_overlap`` gives both functions' values and warns once for an empty label."""
    fixed = _cube((2, 2, 2), 6)
    warped = _cube((3, 2, 2), 6)
    names = {1: "liver", 2: "spleen"}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dice, asd = compute_label_overlap(warped, fixed, names, spacing=(2.0, 1.0, 1.0))
    assert sum("no foreground for label 2" in r.message for r in caplog.records) == 1
    torch.testing.assert_close(dice, compute_label_dice(warped, fixed, names), equal_nan=True)
    torch.testing.assert_close(asd, compute_label_asd(warped, fixed, names, (2.0, 1.0, 1.0)), equal_nan=True)
    assert dice[0, 0].item() == pytest.approx(5 / 6) and torch.isnan(dice[0, 1])


def test_check_helpers():
    assert check_label_names(DEFAULT_LABEL_NAMES) == {1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"}
    with pytest.raises(ValueError, match="unique names"):
        check_label_names({1: "liver", 2: "liver"})
    with pytest.raises(TypeError, match="non-empty mapping"):
        check_label_names({})
    check_label_maps(_cube((2, 2, 2), 4), _cube((2, 2, 2), 4).float())
    with pytest.raises(ValueError, match="same shape"):
        check_label_maps(_cube((2, 2, 2), 4), _cube((2, 2, 2), 4, shape=(20, 16, 15)))


def test_finite_summary():
    """NaN and ±inf are left out of mean and sample std, and counted."""
    nan, inf = float("nan"), float("inf")
    got = finite_summary(torch.tensor([1.0, 3.0, nan, inf, -inf, 5.0]))
    assert (got.mean, got.n, got.nan, got.inf) == (3.0, 3, 1, 2)
    assert got.std == pytest.approx(2.0)  # sample std of (1, 3, 5)
    one = finite_summary([2.0, inf])
    assert (one.mean, one.n, one.inf) == (2.0, 1, 1) and np.isnan(one.std)
    assert np.isnan(finite_summary([nan, inf]).mean) and finite_summary([]).n == 0


def test_cumulative_metric(caplog):
    names = {1: "liver", 2: "spleen"}
    metric = RegistrationMetric(names, spacing=(0.5, 2.0, 3.0))
    assert metric.keys == ["dice_liver", "dice_spleen", "dice_mean", "asd_liver", "asd_spleen", "asd_mean",
                           "folding_percent", "jacobian_std"]  # fmt: skip
    fixed = _cube((2, 2, 2), 6, 1)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        rows = metric(_cube((4, 2, 2), 6, 1), fixed, ddf=torch.zeros(1, 3, *SHAPE))
        assert rows.shape == (1, 8)
        # list mode: channel-first items; ddf as a batch tensor is split per item
        metric([fixed[0], fixed[0]], [fixed[0], fixed[0]], ddf=torch.zeros(2, 3, *SHAPE))
    agg = metric.aggregate()
    assert set(agg) == set(metric.keys)
    assert agg["dice_liver"].item() == pytest.approx((4 / 6 + 1 + 1) / 3)
    assert agg["asd_liver"].item() == pytest.approx(62 / 152 / 3)
    assert torch.isnan(agg["dice_spleen"])  # no pair had a spleen: NaN, not MONAI's 0
    none = metric.aggregate("none")
    assert none["dice_liver"].tolist() == pytest.approx([4 / 6, 1.0, 1.0])
    metric.get_not_nans = True
    _, counts = metric.aggregate()
    assert counts["dice_liver"].item() == 3 and counts["dice_spleen"].item() == 0


def test_cumulative_metric_opts():
    fixed = _cube((2, 2, 2), 6, 1)
    with pytest.raises(ValueError, match="needs ddf"):
        RegistrationMetric({1: "liver"})(fixed, fixed)
    overlap_only = RegistrationMetric({1: "liver"}, jacobian_metrics=())
    overlap_only(fixed, fixed)
    assert overlap_only.aggregate() == {"dice_liver": 1.0, "dice_mean": 1.0, "asd_liver": 0.0, "asd_mean": 0.0}
    with pytest.raises(ValueError, match="median"):
        RegistrationMetric(reduction="median")


def test_all_combinations_of_emptiness(caplog):
    # (warped has label, fixed has label) -> (dice, asd)
    expected = {(True, True): (1.0, 0.0), (True, False): (0.0, float("inf")), (False, True): (0.0, float("inf"))}
    for w_has, f_has in itertools.product((True, False), repeat=2):
        warped = _cube((2, 2, 2), 4, 1 if w_has else 0)
        fixed = _cube((2, 2, 2), 4, 1 if f_has else 0)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            d = compute_label_dice(warped, fixed, {1: "liver"}).item()
            a = compute_label_asd(warped, fixed, {1: "liver"}).item()
        if (w_has, f_has) in expected:
            assert (d, a) == expected[(w_has, f_has)]
        else:
            assert np.isnan(d) and np.isnan(a)
            assert "no foreground for label 1 ('liver')" in caplog.text


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda():
    fixed = _cube((4, 4, 4), 6).cuda()
    warped = _cube((6, 4, 4), 6).cuda()
    ddf = torch.zeros(1, 3, *SHAPE, device="cuda")
    out = compute_registration_metrics(warped, fixed, ddf, {1: "liver"}, (0.5, 2.0, 3.0))
    assert all(v.device == fixed.device for v in out.values())
    assert out["asd_liver"].item() == pytest.approx(62 / 152)
    assert out["dice_liver"].item() == pytest.approx(4 / 6)
