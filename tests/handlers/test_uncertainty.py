from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Engine, Events

from mtreg_monai.engines import RegistrationEvents
from mtreg_monai.handlers import MCUncertaintyHandler, coefficient_of_variation
from mtreg_monai.networks import MCVoxelMorph

SMALL = {
    "encoder_channels": (4, 8, 8, 8),
    "decoder_channels": (8, 8, 8, 8),
    "refine_channels": (8,),
    "final_channels": (4, 4),
}


# (samples along the first dim, floor, expected U): analytic answers, sample std with N - 1
CV_CASES = [
    ([1.0, 2.0, 3.0], None, 0.5),  # mu 2, sigma 1: Eq. 4
    ([1.0, 2.0, 3.0], 0.1, 0.5),  # a floor below |mu| changes nothing
    ([-3.0, -2.0, -1.0], None, 0.5),  # |sigma / mu|: the sign of the mean does not matter
    ([-1.0, 1.0], 2.0, math.sqrt(2) / 2.0),  # floored: sigma / floor where |mu| < floor
    ([0.1, 0.2, 0.3], 0.5, 0.2),  # floored although Eq. 4 would give 0.5
]


@pytest.mark.parametrize("values,floor,expected", CV_CASES)
def test_coefficient_of_variation_known_values(values, floor, expected):
    samples = torch.tensor(values).reshape(len(values), 1, 1, 1)
    mean, u = coefficient_of_variation(samples, floor=floor)
    assert mean.item() == pytest.approx(sum(values) / len(values))
    assert u.item() == pytest.approx(expected)


def test_default_is_eq4_exactly():
    torch.manual_seed(0)
    samples = torch.randn(6, 2, 3, 4, 4, 4, dtype=torch.float64) + 3.0  # means far from 0
    mean, u = coefficient_of_variation(samples)
    torch.testing.assert_close(u, (samples.std(dim=0) / samples.mean(dim=0)).abs())
    assert u.shape == mean.shape == (2, 3, 4, 4, 4)


def test_zero_mean_is_large_and_finite():
    samples = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1)  # mu exactly 0, sigma sqrt(2)
    _, u = coefficient_of_variation(samples)
    assert torch.isfinite(u).all()
    assert u.item() == pytest.approx(math.sqrt(2) / 1e-6)
    _, u_eps = coefficient_of_variation(samples, eps=1e-3)
    assert u_eps.item() == pytest.approx(math.sqrt(2) / 1e-3)
    still = torch.zeros(4, 1, 1, 8)  # still background: mean 0, std 0 -> 0, not 0/0
    for floor in (None, 0.5):
        _, u0 = coefficient_of_variation(still, floor=floor)
        assert torch.equal(u0, torch.zeros_like(u0))


def test_half_precision_is_computed_in_float32():
    samples = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1).half()
    mean, u = coefficient_of_variation(samples)
    assert u.dtype == mean.dtype == torch.float32 and torch.isfinite(u).all()  # 1.4e6 > float16 max


@pytest.mark.parametrize(
    "samples,kwargs,match",
    [
        (torch.zeros(1, 1, 1), {}, "At least 2"),
        (torch.zeros(3), {}, "shape"),
        (torch.zeros(3, 1, 1), {"floor": 0.0}, "floor must be None .* got 0.0"),
        (torch.zeros(3, 1, 1), {"floor": -1.0}, "floor"),
        (torch.zeros(3, 1, 1), {"floor": float("inf")}, "floor"),
        (torch.zeros(3, 1, 1), {"floor": "0.5"}, "floor"),
        (torch.zeros(3, 1, 1), {"floor": True}, "floor"),
        (torch.zeros(3, 1, 1), {"eps": 0.0}, "eps"),
    ],
)
def test_ill_args(samples, kwargs, match):
    with pytest.raises(ValueError, match=match):
        coefficient_of_variation(samples, **kwargs)


def _run(handler: MCUncertaintyHandler, moving: torch.Tensor, fixed: torch.Tensor, amp: bool = False) -> dict:
    engine = Engine(lambda e, b: (e.fire_event(RegistrationEvents.TEACHER_PASS), e.state.output)[1])
    engine.register_events(*RegistrationEvents)
    engine.amp, engine.amp_kwargs = amp, {}  # as a RegistrationTrainer has them

    @engine.on(Events.ITERATION_STARTED)
    def _put(e):
        e.state.output = {"moving_image": moving, "fixed_image": fixed}

    handler.attach(engine)
    engine.run([0], max_epochs=1)
    return engine.state.output


def test_handler_outputs_and_shapes():
    torch.manual_seed(0)
    net = MCVoxelMorph(dropout=0.3, **SMALL).eval()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 0.05)
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    out = _run(MCUncertaintyHandler(net, num_samples=4), moving, fixed)
    assert out["u_phi"].shape == (1, 3, 16, 16, 16)
    assert out["u_image"].shape == (1, 1, 16, 16, 16)
    assert out["teacher_ddf"].shape == (1, 3, 16, 16, 16)
    assert out["teacher_warped_image"].shape == (1, 1, 16, 16, 16)
    assert (out["u_phi"] > 0).float().mean() > 0.5  # dropout makes the samples disagree
    assert not net.backbone.head_dropout.mc_active  # MC mode switched off again
    assert not any(v.requires_grad for v in out.values())


def test_teacher_pass_follows_the_engine_amp():
    """With ``engine.amp`` the MC passes run under autocast (bfloat16 trunk on a CPU) and the maps stay float32,
    close to the float32 ones."""
    torch.manual_seed(0)
    net = MCVoxelMorph(dropout=0.3, **SMALL).eval()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 0.05)
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    outs = []
    for amp in (False, True):
        torch.manual_seed(3)  # the same dropout masks
        outs.append(_run(MCUncertaintyHandler(net, num_samples=4), moving, fixed, amp=amp))
    for key in ("teacher_ddf", "teacher_warped_image", "u_phi", "u_image"):
        assert outs[1][key].dtype == torch.float32
    assert not torch.equal(outs[0]["teacher_ddf"], outs[1]["teacher_ddf"])
    scale = outs[0]["teacher_ddf"].abs().max().item()
    torch.testing.assert_close(outs[1]["teacher_ddf"], outs[0]["teacher_ddf"], rtol=0.1, atol=0.02 * scale)


def test_no_dropout_no_uncertainty():
    net = MCVoxelMorph(dropout=0.0, **SMALL).eval()
    out = _run(MCUncertaintyHandler(net, num_samples=3), torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    # identical samples: zero up to the rounding of their mean
    assert out["u_phi"].max() < 1e-5 and out["u_image"].max() < 1e-5


def test_floors_default_to_eq4_and_still_work():
    torch.manual_seed(0)
    net = MCVoxelMorph(dropout=0.3, **SMALL).eval()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 0.05)
    assert MCUncertaintyHandler(net).ddf_floor is None and MCUncertaintyHandler(net).image_floor is None
    moving, fixed = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    torch.manual_seed(1)
    eq4 = _run(MCUncertaintyHandler(net, num_samples=4), moving, fixed)
    torch.manual_seed(1)  # the same dropout masks
    floored = _run(MCUncertaintyHandler(net, num_samples=4, ddf_floor=0.5, image_floor=0.1), moving, fixed)
    torch.testing.assert_close(eq4["teacher_ddf"], floored["teacher_ddf"])
    for key in ("u_phi", "u_image"):
        assert torch.isfinite(eq4[key]).all()
        assert (floored[key] <= eq4[key] * (1 + 1e-6)).all()  # a floor only lowers U
    # small displacements (|mu| < 0.5 voxel) are floored: sigma / 0.5 there
    mu = eq4["teacher_ddf"].abs()
    small = mu < 0.5
    assert small.any()
    torch.testing.assert_close(floored["u_phi"][small], (eq4["u_phi"] * mu.clamp_min(1e-6) / 0.5)[small])


def test_ill_opts():
    net = MCVoxelMorph(**SMALL)
    with pytest.raises(ValueError, match="num_samples"):
        MCUncertaintyHandler(net, num_samples=1)
    with pytest.raises(ValueError, match="ddf_floor must be None .* got 0"):
        MCUncertaintyHandler(net, ddf_floor=0)
    with pytest.raises(ValueError, match="image_floor .* got -0.1"):
        MCUncertaintyHandler(net, image_floor=-0.1)
    with pytest.raises(TypeError, match="network"):
        MCUncertaintyHandler("net")
