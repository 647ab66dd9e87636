from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Events
from monai.losses import DiffusionLoss

from mtreg_monai.engines import RegistrationEvents, RegistrationTrainer, loss_terms, per_pair
from mtreg_monai.networks import MCVoxelMorph

SMALL = {
    "encoder_channels": (4, 8, 8, 8),
    "decoder_channels": (8, 8, 8, 8),
    "refine_channels": (8,),
    "final_channels": (4, 4),
}
SIZE = (16, 16, 16)


def _pairs(n: int, nan_at: int | None = None) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    pairs = []
    for i in range(n):
        fixed = torch.rand(1, 1, *SIZE, generator=g)
        moving = torch.rand(1, 1, *SIZE, generator=g)
        if i == nan_at:
            moving[0, 0, 0, 0, 0] = float("nan")
        pairs.append({"fixed_image": fixed, "moving_image": moving})
    return pairs


def _trainer(data, handlers=(), consistency=True, **kwargs) -> RegistrationTrainer:
    torch.manual_seed(0)
    net = MCVoxelMorph(**SMALL)
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 1e-2)
    mse = torch.nn.MSELoss(reduction="none")
    return RegistrationTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-3),
        similarity_loss=mse,
        smoothness_loss=DiffusionLoss(reduction="none"),
        consistency_loss=mse if consistency else None,
        train_handlers=list(handlers),
        **kwargs,
    )


def test_per_pair():
    torch.testing.assert_close(per_pair(torch.arange(6.0).reshape(2, 3), 2), torch.tensor([1.0, 4.0]))
    torch.testing.assert_close(per_pair(torch.tensor(2.0), 3), torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="shape"):
        per_pair(torch.zeros(3, 2), 2)


def test_loss_is_weighted_sum_of_terms():
    """lambda values set by a handler at REG_WEIGHTING are the ones in the loss; fixed ones otherwise."""
    trainer = _trainer(_pairs(2), lambda_phi=0.0, lambda_c=0.0)

    @trainer.on(RegistrationEvents.TEACHER_PASS)
    def _teacher(engine):
        engine.state.output["teacher_warped_image"] = torch.zeros(1, 1, *SIZE)

    @trainer.on(RegistrationEvents.REG_WEIGHTING)
    def _weights(engine):
        engine.state.output["lambda_phi"] = torch.tensor([2.0])

    records = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: records.append(loss_terms(e.state.output)))
    trainer.run()
    for r in records:
        assert r["lambda_phi"] == 2.0 and r["lambda_c"] == 0.0
        assert r["loss"] == pytest.approx(r["loss_sim"] + 2.0 * r["loss_smooth"], rel=1e-5)
        assert r["loss_cons"] > 0  # computed (the teacher output is there) but weighted by lambda_c = 0


def test_fixed_weights_and_no_consistency():
    trainer = _trainer(_pairs(1), consistency=False, lambda_phi=3.0, lambda_c=0.5)
    trainer.run()
    out = trainer.state.output
    # no consistency term: its weight is 0 (the configured 0.5 is unused and not reported)
    assert out["lambda_phi"].tolist() == [3.0] and out["lambda_c"].tolist() == [0.0]
    assert out["loss_cons"].item() == 0.0
    assert out["ddf"].shape == (1, 3, *SIZE) and not out["ddf"].requires_grad


def test_training_reduces_loss():
    data = _pairs(1) * 30
    trainer = _trainer(data, lambda_phi=0.01)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert losses[-1] < losses[0]


def test_cpu_mixed_precision_needs_no_scaler(recwarn):
    """amp on a CPU: bfloat16 autocast, no (CUDA) gradient scaler and no warning about one; the loss still falls
    and the displacement is float32."""
    data = _pairs(1) * 20
    trainer = _trainer(data, lambda_phi=0.01, amp=True)
    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert trainer.scaler is None
    assert not [w for w in recwarn if "GradScaler" in str(w.message)]
    assert trainer.state.output["ddf"].dtype == torch.float32
    assert losses[-1] < losses[0]


def test_nonfinite_loss_skips_update(caplog):
    trainer = _trainer(_pairs(1, nan_at=0), max_nonfinite_steps=3)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    flags = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: flags.append(bool(e.state.output["nonfinite"])))
    with caplog.at_level(logging.WARNING):
        trainer.run()
    assert flags == [True]
    for a, b in zip(before, trainer.network.parameters()):
        assert torch.equal(a, b)
    assert "Non-finite loss" in caplog.text


def test_too_many_nonfinite_losses_stop():
    trainer = _trainer(_pairs(1, nan_at=0) * 3, max_nonfinite_steps=1)
    with pytest.raises(RuntimeError, match="non-finite losses in a row"):
        trainer.run()


def test_ill_args():
    with pytest.raises(ValueError, match="lambda_phi"):
        _trainer(_pairs(1), lambda_phi=-1.0)
    with pytest.raises(ValueError, match="max_nonfinite_steps"):
        _trainer(_pairs(1), max_nonfinite_steps=-1)
    trainer = _trainer([{"fixed_image": torch.zeros(1, 1, *SIZE), "moving_image": torch.zeros(1, 1, 16, 16, 32)}])
    with pytest.raises(ValueError, match="same shape"):
        trainer.run()
