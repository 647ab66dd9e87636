from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from mtreg_monai.engines import RegistrationEvents
from mtreg_monai.handlers import AdaptiveWeightHandler, RandomRegWeightHandler, uncertain_fraction


def test_uncertain_fraction_known():
    u = torch.zeros(2, 3, 4, 4, 4)
    u[0, :, :2] = 0.2  # half of pair 0 above 0.1
    u[1] = 0.05
    torch.testing.assert_close(uncertain_fraction(u, 0.1), torch.tensor([0.5, 0.0]))


def _engine(handler, output):
    engine = Engine(lambda e, b: (e.fire_event(RegistrationEvents.REG_WEIGHTING), e.state.output)[1])
    engine.register_events(*RegistrationEvents)
    engine.add_event_handler(Events.ITERATION_STARTED, lambda e: setattr(e.state, "output", dict(output)))
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    return engine.state.output


def test_adaptive_weight():
    u = torch.zeros(1, 1, 8, 8, 8)
    u[..., :2] = 0.5  # a quarter above tau
    out = _engine(
        AdaptiveWeightHandler(k=2.0, tau=0.01, uncertainty_key="u_image", weight_key="lambda_c", fraction_key="frac"),
        {"u_image": u},
    )
    torch.testing.assert_close(out["lambda_c"], torch.tensor([0.5]))
    torch.testing.assert_close(out["frac"], torch.tensor([0.25]))


def test_missing_uncertainty():
    with pytest.raises(KeyError, match="u_phi"):
        _engine(AdaptiveWeightHandler(k=5, tau=0.1), {})


def test_random_weight_in_range():
    torch.manual_seed(0)
    out = _engine(RandomRegWeightHandler(2.0, 3.0), {"fixed_image": torch.zeros(64, 1, 2, 2, 2)})
    w = out["reg_weight"]
    assert w.shape == (64,) and (w >= 2).all() and (w <= 3).all() and w.std() > 0
    assert torch.equal(out["lambda_phi"], w)


@pytest.mark.parametrize("kwargs", [{"k": -1, "tau": 0.1}, {"k": 1, "tau": -0.1}, {"k": "5", "tau": 0.1}])
def test_ill_opts(kwargs):
    with pytest.raises(ValueError):
        AdaptiveWeightHandler(**kwargs)
    with pytest.raises(ValueError, match="low"):
        RandomRegWeightHandler(3.0, 2.0)
