from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtreg_monai.losses import MIND_SSC_CHANNELS, MINDSSCLoss, mind_ssc, mind_ssc_reference


def _rand(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=dtype)


def _phantom(shape=(32, 32, 32), seed=0):
    """Two-modality phantom: soft tissue filling the volume and three blobs.

    The CT -> MR intensity mapping is non-monotonic (every blob's contrast to the tissue is inverted).
    """
    g = torch.Generator().manual_seed(seed)
    axes = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    # (centre, radii, CT value, MR value); tissue: CT 0.3, MR 0.7
    blobs = [
        ((10, 11, 16), (6, 5, 8), 0.6, 0.2),
        ((22, 20, 12), (4, 6, 5), 1.0, 0.1),
        ((20, 10, 22), (5, 4, 4), 0.1, 0.9),
    ]
    ct = torch.full(shape, 0.3)
    mr = torch.full(shape, 0.7)
    for centre, radii, v_ct, v_mr in blobs:
        rho = sum(((a - c) / r) ** 2 for a, c, r in zip(axes, centre, radii)).sqrt()
        inside = torch.sigmoid((1.0 - rho) * 8.0)  # soft edge, about 1 voxel wide
        ct = ct + inside * (v_ct - 0.3)
        mr = mr + inside * (v_mr - 0.7)
    ct = ct + 0.02 * torch.randn(shape, generator=g)
    mr = mr + 0.02 * torch.randn(shape, generator=g)
    return ct[None, None], mr[None, None]


# (radius, dilation, spatial shape)
REFERENCE_CASES = [
    (2, 2, (20, 18, 16)),
    (1, 1, (12, 9, 10)),
    (1, 2, (9, 11, 8)),
    (3, 1, (10, 10, 12)),
    (0, 1, (7, 8, 9)),
    (2, 3, (3, 12, 5)),  # an axis shorter than the neighbour offset: replicate padding only
]


@pytest.mark.parametrize("radius,dilation,shape", REFERENCE_CASES)
def test_matches_reference(radius, dilation, shape):
    img = _rand(1, 1, *shape, dtype=torch.float64)
    expected = mind_ssc_reference(img, radius, dilation)
    out = mind_ssc(img, radius=radius, dilation=dilation)
    assert out.shape == (1, MIND_SSC_CHANNELS, *shape)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # float32 (the training dtype) agrees to float rounding
    out32 = mind_ssc(img.float(), radius=radius, dilation=dilation)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, expected.float(), rtol=0, atol=2e-5)


def _clamped_image(kind: str, shape=(16, 14, 12)) -> torch.Tensor:
    """Images where the variance clamp is active: ``low`` (a near-constant half), ``high`` (a lone spike)."""
    img = _rand(1, 1, *shape, dtype=torch.float64)
    if kind == "low":  # variance of the quiet half ~1e-6 of the other: clamped up to 0.001 x mean
        img[:, :, : shape[0] // 2] *= 1e-3
    elif kind == "high":  # a spike's variance > 1000 x mean: clamped down
        img = 1e-3 * _rand(1, 1, 24, 24, 24, dtype=torch.float64)
        img[0, 0, 8, 7, 6] = 10.0
    return img


@pytest.mark.parametrize(
    "radius,dilation,kind", [(2, 2, "random"), (1, 1, "random"), (0, 2, "random"), (1, 1, "low"), (0, 1, "high")]
)
def test_gradient_matches_reference(radius, dilation, kind):
    img = _clamped_image(kind)
    ours, ref = img.clone().requires_grad_(), img.clone().requires_grad_()
    desc = mind_ssc(ours, radius, dilation)
    torch.testing.assert_close(desc, mind_ssc_reference(img, radius, dilation), rtol=0, atol=1e-12)
    if kind != "random":  # the case really exercises the clamp
        var = (-torch.log(desc.detach())).mean(1)  # mean_c mind_c / V = (mean_c mind_c) / V: 1 where unclamped
        assert ((var - 1.0).abs() > 1e-6).any()
    weights = _rand(1, MIND_SSC_CHANNELS, *img.shape[2:], dtype=torch.float64, seed=1)
    (desc * weights).sum().backward()
    (mind_ssc_reference(ref, radius, dilation) * weights).sum().backward()
    assert ref.grad.abs().max() > 1.0  # a real gradient, not a trivially zero one
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-9, atol=1e-9 * ref.grad.abs().max().item())


def test_gradcheck():
    img = _rand(1, 1, 5, 6, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: mind_ssc(x, radius=1, dilation=2), (img,), fast_mode=True)


@pytest.mark.parametrize("shape", [(1, 1, 16, 16, 16), (2, 1, 8, 12, 10), (3, 1, 1, 5, 7)])
def test_shape(shape):
    out = mind_ssc(_rand(*shape))
    assert out.shape == (shape[0], MIND_SSC_CHANNELS, *shape[2:])
    assert torch.isfinite(out).all() and (out > 0).all() and (out <= 1).all()


def test_batch_samples_independent():
    """Normalisation is per sample: a sample's descriptor does not depend on the rest of the batch."""
    a = _clamped_image("low").float()  # its descriptor depends on the clamp bounds
    b = 100.0 * a  # batch-wide bounds would be ~1e4 times a's own
    both = mind_ssc(torch.cat([a, b]))
    torch.testing.assert_close(both[:1], mind_ssc(a))
    torch.testing.assert_close(both[1:], mind_ssc(b))


@pytest.mark.parametrize("scale,offset", [(2.5, 0.0), (0.3, 7.0), (-1.7, 0.2), (-1.0, 0.0), (1e-4, -3.0)])
def test_affine_intensity_invariance(scale, offset):
    img = _rand(1, 1, 14, 12, 10, dtype=torch.float64)
    torch.testing.assert_close(mind_ssc(scale * img + offset), mind_ssc(img), rtol=0, atol=1e-8)


def test_affine_intensity_invariance_float32():
    img = _rand(1, 1, 14, 12, 10)
    torch.testing.assert_close(mind_ssc(3.0 * img + 0.5), mind_ssc(img), rtol=0, atol=1e-4)
    torch.testing.assert_close(mind_ssc(-img), mind_ssc(img), rtol=0, atol=1e-6)


def test_zero_loss_for_identical_images():
    img = _rand(2, 1, 12, 12, 12)
    assert MINDSSCLoss()(img, img.clone()).item() == 0.0
    assert MINDSSCLoss(reduction="none")(img, img).abs().max().item() == 0.0


def test_loss_properties():
    a, b = _rand(1, 1, 12, 12, 12), _rand(1, 1, 12, 12, 12, seed=1)
    loss = MINDSSCLoss()
    value = loss(a, b)
    assert 0.0 < value.item() < 1.0
    torch.testing.assert_close(loss(b, a), value)  # symmetric
    expected = ((mind_ssc_reference(a) - mind_ssc_reference(b)) ** 2).mean()
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("shift", [(2, 0, 0), (0, 3, 0), (0, 0, -3), (2, 2, 0)])
def test_multimodal_phantom(shift):
    """MIND prefers the aligned CT-MR pair; MSE (inverted contrast) prefers the misaligned one."""
    ct, mr = _phantom()
    mr_shifted = torch.roll(mr, shifts=shift, dims=(2, 3, 4))
    loss = MINDSSCLoss()
    mind_aligned, mind_shifted = loss(mr, ct).item(), loss(mr_shifted, ct).item()
    mse_aligned, mse_shifted = F.mse_loss(mr, ct).item(), F.mse_loss(mr_shifted, ct).item()
    assert mind_aligned < 0.9 * mind_shifted
    assert mse_shifted < mse_aligned


CONSTANT_CASES = [
    ("zeros", torch.zeros(1, 1, 10, 10, 10)),
    ("constant", torch.full((2, 1, 8, 9, 10), 3.7)),
    ("half_constant", torch.cat([torch.zeros(1, 1, 5, 10, 10), _rand(1, 1, 5, 10, 10)], dim=2)),
    ("single_voxel", F.pad(torch.ones(1, 1, 1, 1, 1), (4, 5, 4, 5, 4, 5))),
    ("tiny_scale", 1e-6 * _rand(1, 1, 10, 10, 10)),
]


@pytest.mark.parametrize("name,image", CONSTANT_CASES)
def test_degenerate_input_finite(name, image):
    desc = mind_ssc(image)
    assert torch.isfinite(desc).all(), name
    if name in ("zeros", "constant"):
        assert (desc == 1.0).all()  # the guarded value exp(0) where the reference gives 0/0 = NaN
        assert torch.isnan(mind_ssc_reference(image)).all()
    target = _rand(*image.shape, seed=3)
    for pred, tgt in ((image, target), (target, image), (image, image)):
        pred = pred.clone().requires_grad_()
        value = MINDSSCLoss()(pred, tgt)
        value.backward()
        assert torch.isfinite(value), name
        assert torch.isfinite(pred.grad).all(), name


def test_underflow_finite_gradient():
    """A lone spike: its variance is clamped to 1000x the mean, exp(-z) underflows to 0; the gradient stays finite."""
    img = 1e-3 * _rand(1, 1, 64, 64, 64)
    img[0, 0, 20, 20, 20] = 1e3
    pred = img.requires_grad_()
    loss = MINDSSCLoss(radius=0, dilation=1)
    assert (loss.descriptor(pred.detach()) == 0).any()
    loss(pred, _rand(1, 1, 64, 64, 64, seed=1)).backward()
    assert torch.isfinite(pred.grad).all()


def test_constant_input_has_zero_gradient():
    pred = torch.full((1, 1, 8, 8, 8), 2.0, requires_grad=True)
    MINDSSCLoss()(pred, _rand(1, 1, 8, 8, 8)).backward()
    assert pred.grad.abs().max().item() == 0.0


def test_gradient_flows_to_pred_only():
    pred = _rand(1, 1, 12, 12, 12).requires_grad_()
    target = _rand(1, 1, 12, 12, 12, seed=1)
    MINDSSCLoss()(pred, target).backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad != 0).float().mean() > 0.9
    assert target.grad is None


def test_gradient_descends():
    """A small step against the gradient lowers the loss (the gradient has the right sign)."""
    ct, mr = _phantom(shape=(16, 16, 16))
    pred = torch.roll(mr, shifts=(1, 0, 0), dims=(2, 3, 4)).requires_grad_()
    loss = MINDSSCLoss(radius=1, dilation=1)
    value = loss(pred, ct)
    value.backward()
    with torch.no_grad():
        stepped = loss(pred - 1e-3 * pred.grad / pred.grad.abs().max(), ct)
    assert stepped < value


def test_reductions_consistent():
    a, b = _rand(2, 1, 10, 11, 12), _rand(2, 1, 10, 11, 12, seed=1)
    none = MINDSSCLoss(reduction="none")(a, b)
    assert none.shape == (2, MIND_SSC_CHANNELS, 10, 11, 12)
    torch.testing.assert_close(MINDSSCLoss(reduction="mean")(a, b), none.mean())
    torch.testing.assert_close(MINDSSCLoss(reduction="sum")(a, b), none.sum())
    torch.testing.assert_close(((mind_ssc(a) - mind_ssc(b)) ** 2), none)


def test_precomputed_target_descriptor():
    loss = MINDSSCLoss(radius=1, dilation=2)
    pred, target = _rand(1, 1, 12, 12, 12).requires_grad_(), _rand(1, 1, 12, 12, 12, seed=1)
    with torch.no_grad():
        target_mind = loss.descriptor(target)
    value = loss.forward_descriptors(loss.descriptor(pred), target_mind)
    torch.testing.assert_close(value, loss(pred, target))
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_and_autocast(dtype):
    img = _rand(1, 1, 12, 12, 12)
    expected = mind_ssc(img.to(dtype).float())
    out = mind_ssc(img.to(dtype))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    pred = img.clone().requires_grad_()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = MINDSSCLoss()(pred, _rand(1, 1, 12, 12, 12, seed=1))
    assert value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(pred.grad).all()


def test_integer_input():
    img = (_rand(1, 1, 8, 8, 8) * 100).to(torch.int16)
    torch.testing.assert_close(mind_ssc(img), mind_ssc(img.float()))


ILL_IMAGES = [
    (torch.rand(1, 1, 16, 16), ValueError, "5-d image"),
    (torch.rand(16, 16, 16), ValueError, "5-d image"),
    (torch.rand(1, 2, 8, 8, 8), ValueError, "1 channel"),
    (torch.rand(1, 1, 0, 8, 8), ValueError, "non-empty image"),
    (np.zeros((1, 1, 8, 8, 8), dtype=np.float32), TypeError, "image to be a torch.Tensor"),
    (torch.rand(1, 1, 4, 4, 4, dtype=torch.complex64), TypeError, "real-valued image"),
]


@pytest.mark.parametrize("image,error,match", ILL_IMAGES)
def test_ill_shape(image, error, match):
    with pytest.raises(error, match=match):
        mind_ssc(image)


def test_ill_shape_loss():
    loss = MINDSSCLoss()
    with pytest.raises(ValueError, match="same shape"):
        loss(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 9))
    with pytest.raises(ValueError, match="5-d pred"):
        loss(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="target with 1 channel"):
        loss(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 3, 8, 8, 8))
    with pytest.raises(TypeError, match="target to be a torch.Tensor"):
        loss(torch.rand(1, 1, 8, 8, 8), [0.0])
    with pytest.raises(ValueError, match="pred_descriptor of shape"):
        loss.forward_descriptors(torch.rand(1, 1, 8, 8, 8), torch.rand(1, 12, 8, 8, 8))
    with pytest.raises(ValueError, match="same shape"):
        loss.forward_descriptors(torch.rand(1, 12, 8, 8, 8), torch.rand(2, 12, 8, 8, 8))


ILL_OPTS = [
    ({"radius": -1}, ValueError, "radius >= 0"),
    ({"radius": 1.5}, TypeError, "radius to be an int"),
    ({"radius": True}, TypeError, "radius to be an int"),
    ({"dilation": 0}, ValueError, "dilation >= 1"),
    ({"dilation": "2"}, TypeError, "dilation to be an int"),
]


@pytest.mark.parametrize("kwargs,error,match", ILL_OPTS)
def test_ill_opts(kwargs, error, match):
    with pytest.raises(error, match=match):
        mind_ssc(torch.rand(1, 1, 8, 8, 8), **kwargs)
    with pytest.raises(error, match=match):
        MINDSSCLoss(**kwargs)


def test_ill_reduction():
    with pytest.raises(ValueError, match="reduction="):
        MINDSSCLoss(reduction="average")


@pytest.mark.parametrize("scale", [1e-20, 1e-12, 1e12, 1e19])
def test_extreme_intensity_scales_stay_finite_and_invariant(scale):
    x = torch.rand(1, 1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    expected = mind_ssc(x)
    got = mind_ssc(x * scale)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
