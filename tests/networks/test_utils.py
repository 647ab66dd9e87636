from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from mtreg_monai.networks import MCDropout, mc_dropout_layers, mc_dropout_mode


def test_mc_dropout_mode_restores_flags_after_error():
    net = nn.Sequential(nn.Linear(4, 4), MCDropout(0.5), nn.BatchNorm1d(4), MCDropout(0.5)).eval()
    with pytest.raises(RuntimeError, match="boom"):
        with mc_dropout_mode(net):
            assert all(m.mc_active for m in mc_dropout_layers(net))
            raise RuntimeError("boom")
    assert not any(m.mc_active for m in mc_dropout_layers(net))
    assert not net.training and not net[2].training


def test_mc_dropout_mode_leaves_norm_layers_in_eval():
    net = nn.Sequential(nn.Linear(4, 8), MCDropout(0.5), nn.BatchNorm1d(8)).eval()
    running = net[2].running_mean.clone()
    with torch.no_grad(), mc_dropout_mode(net):
        net(torch.randn(16, 4))
    torch.testing.assert_close(net[2].running_mean, running)  # BN statistics untouched


def test_mc_dropout_statistics():
    drop = MCDropout(0.25).eval()
    x = torch.ones(200_000)
    torch.testing.assert_close(drop(x), x)
    with mc_dropout_mode(drop):
        y = drop(x)
    assert abs((y == 0).float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(y[y > 0], torch.full_like(y[y > 0], 1 / 0.75))


def test_ill_type():
    with pytest.raises(TypeError, match="nn.Module"):
        with mc_dropout_mode("net"):
            pass


def test_channelwise_mc_dropout_drops_whole_channels():
    drop = MCDropout(0.5, channelwise=True).eval()
    x = torch.ones(4, 64, 3, 3, 3)
    with mc_dropout_mode(drop):
        y = drop(x)
    per_channel = y.reshape(4, 64, -1)
    assert torch.equal(per_channel.amin(-1), per_channel.amax(-1))  # one value per channel
    assert set(per_channel[..., 0].unique().tolist()) == {0.0, 2.0}
    with pytest.raises(ValueError, match="channel-wise"):
        with mc_dropout_mode(drop):
            drop(torch.ones(5))
