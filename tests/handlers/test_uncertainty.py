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


def test_coefficient_of_variation_known_values():
    samples = torch.tensor([1.0, 2.0, 3.0]).reshape(3, 1, 1, 1)
    mean, u = coefficient_of_variation(samples, floor=0.1)
    assert mean.item() == pytest.approx(2.0)
    assert u.item() == pytest.approx(0.5)  # sample std 1 (N - 1), |mu| 2


def test_floor_guards_zero_mean():
    samples = torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1)
    _, u = coefficient_of_variation(samples, floor=2.0)
    assert u.item() == pytest.approx(math.sqrt(2) / 2.0)
    still = torch.zeros(4, 1, 1, 8)  # still background: mean 0, std 0 -> not uncertain
    _, u0 = coefficient_of_variation(still, floor=0.5)
    assert torch.equal(u0, torch.zeros_like(u0))


@pytest.mark.parametrize(
    "samples,floor,match",
    [(torch.zeros(1, 1, 1), 0.1, "At least 2"), (torch.zeros(3, 1, 1), 0.0, "floor"), (torch.zeros(3), 0.1, "shape")],
)
def test_ill_args(samples, floor, match):
    with pytest.raises(ValueError, match=match):
        coefficient_of_variation(samples, floor)


def _run(handler: MCUncertaintyHandler, moving: torch.Tensor, fixed: torch.Tensor) -> dict:
    engine = Engine(lambda e, b: (e.fire_event(RegistrationEvents.TEACHER_PASS), e.state.output)[1])
    engine.register_events(*RegistrationEvents)

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


def test_no_dropout_no_uncertainty():
    net = MCVoxelMorph(dropout=0.0, **SMALL).eval()
    out = _run(MCUncertaintyHandler(net, num_samples=3), torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    # identical samples: zero up to the rounding of their mean
    assert out["u_phi"].max() < 1e-5 and out["u_image"].max() < 1e-5


def test_ill_opts():
    net = MCVoxelMorph(**SMALL)
    with pytest.raises(ValueError, match="num_samples"):
        MCUncertaintyHandler(net, num_samples=1)
    with pytest.raises(ValueError, match="ddf_floor"):
        MCUncertaintyHandler(net, ddf_floor=0)
    with pytest.raises(TypeError, match="network"):
        MCUncertaintyHandler("net")
