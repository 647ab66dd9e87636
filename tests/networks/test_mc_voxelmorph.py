from __future__ import annotations

import pytest
import torch

from mtreg_monai.networks import MCDropoutVoxelMorphUNet, MCVoxelMorph, mc_dropout_mode

SIZE = (32, 32, 16)
SMALL = {
    "encoder_channels": (4, 8, 8, 8),
    "decoder_channels": (8, 8, 8, 8),
    "refine_channels": (8,),
    "final_channels": (4, 4),
}

TEST_CASES_SHAPE = [
    ({}, (1, 2, *SIZE), (1, 3, *SIZE)),
    ({"dropout": 0.3, "dropout_scope": "all"}, (2, 2, *SIZE), (2, 3, *SIZE)),
    ({"integration_steps": 5, "dropout": 0.1, "dropout_scope": "decoder"}, (1, 2, *SIZE), (1, 3, *SIZE)),
    ({"spatial_dims": 2}, (1, 2, 32, 48), (1, 2, 32, 48)),
]


@pytest.mark.parametrize("kwargs,in_shape,out_shape", TEST_CASES_SHAPE)
def test_shape_and_near_zero_init(kwargs, in_shape, out_shape):
    net = MCVoxelMorph(**kwargs).eval()
    with torch.no_grad():
        ddf = net(torch.rand(in_shape))
    assert ddf.shape == out_shape
    # head weights ~ N(0, 1e-5): the initial displacement is far below a voxel
    assert ddf.abs().max() < 1e-2


def test_paper_layout():
    net = MCDropoutVoxelMorphUNet()
    strides = [layer[0].conv.stride for layer in net.encoder]
    assert strides == [(2, 2, 2)] * 4
    assert [layer[0].conv.out_channels for layer in net.encoder] == [16, 32, 32, 32]
    assert [layer[0].conv.out_channels for layer in net.decoder] == [32, 32, 32, 32]
    assert net.head.out_channels == 3


@pytest.mark.parametrize("scope", ["all", "decoder", "head"])
def test_mc_sample_equals_full_passes(scope):
    """Shared-prefix sampling draws the same masks, in the same order, as N full forward passes."""
    net = MCVoxelMorph(dropout=0.3, dropout_scope=scope, **SMALL).eval()
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad(), mc_dropout_mode(net):
        torch.manual_seed(7)
        shared = net.mc_sample(x, 4)
        torch.manual_seed(7)
        full = torch.stack([net(x) for _ in range(4)])
    assert shared.shape == (4, 1, 3, *SIZE)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-9)
    # the samples are not all the same
    assert (shared.std(0) > 0).float().mean() > 0.5


@pytest.mark.parametrize("scope", ["decoder", "head"])
def test_head_is_float32_under_autocast(scope):
    """Under bfloat16 autocast the trunk computes in bfloat16 but the displacement (the head) stays float32, for
    forward and for the shared-prefix MC samples, and is close to the float32 network's."""
    torch.manual_seed(0)
    net = MCVoxelMorph(dropout=0.3, dropout_scope=scope, **SMALL).eval()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 0.05)
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad():
        reference = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ddf = net(x)
            with mc_dropout_mode(net):
                samples = net.mc_sample(x, 3)
    assert ddf.dtype == torch.float32 and samples.dtype == torch.float32
    assert not torch.equal(ddf, reference)  # the trunk did run in bfloat16
    torch.testing.assert_close(ddf, reference, rtol=0.1, atol=0.02 * reference.abs().max().item())


def test_diffeomorphic_mc_sample_matches_forward():
    net = MCVoxelMorph(integration_steps=4, dropout=0.3, **SMALL).eval()
    x = torch.rand(2, 2, *SIZE)
    with torch.no_grad(), mc_dropout_mode(net):
        torch.manual_seed(3)
        shared = net.mc_sample(x, 3)
        torch.manual_seed(3)
        full = torch.stack([net(x) for _ in range(3)])
    assert shared.shape == (3, 2, 3, *SIZE)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    "scope,stochastic_parts",
    [("head", ()), ("decoder", ("decoder", "refine", "final")), ("all", ("encoder", "decoder", "refine", "final"))],
)
def test_passes_differ_only_where_dropout_acts(scope, stochastic_parts):
    net = MCDropoutVoxelMorphUNet(dropout=0.5, dropout_scope=scope, **SMALL).eval()
    outputs: dict[str, list[torch.Tensor]] = {}
    for part in ("encoder", "decoder", "refine", "final"):
        for i, layer in enumerate(getattr(net, part)):
            name = f"{part}.{i}"
            layer.register_forward_hook(lambda m, inp, out, name=name: outputs.setdefault(name, []).append(out))
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad(), mc_dropout_mode(net):
        net(x)
        net(x)
    for name, (first, second) in outputs.items():
        same = torch.equal(first, second)
        assert same != name.startswith(stochastic_parts or ("none",)), name


def test_dropout_modes():
    net = MCVoxelMorph(dropout=0.5, **SMALL)
    x = torch.rand(1, 2, *SIZE)
    net.eval()
    with torch.no_grad():
        a, b = net(x), net(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # eval: deterministic
        with mc_dropout_mode(net):
            assert not torch.equal(net(x), net(x))  # eval + MC: stochastic
            assert not net.training  # MC mode does not switch to training mode
        torch.testing.assert_close(net(x), a, rtol=0, atol=0)  # restored on exit
        net.train()
        assert not torch.equal(net(x), net(x))  # training: stochastic


def test_no_dropout_layers_when_rate_zero():
    net = MCVoxelMorph(dropout=0.0, **SMALL).eval()
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad(), mc_dropout_mode(net):
        samples = net.mc_sample(x, 3)
    assert torch.equal(samples[0], samples[1])


def test_gradients_reach_every_parameter():
    net = MCVoxelMorph(dropout=0.1, **SMALL).train()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 1e-2)
    net(torch.rand(1, 2, *SIZE)).pow(2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


TEST_CASES_ILL_SHAPE = [
    (torch.rand(1, 1, *SIZE), "shape"),  # one channel
    (torch.rand(1, 2, 32, 32), "shape"),  # 2-D into a 3-D net
    (torch.rand(1, 2, 32, 32, 24), "divisible by 16"),
]


@pytest.mark.parametrize("x,match", TEST_CASES_ILL_SHAPE)
def test_ill_shape(x, match):
    net = MCVoxelMorph(**SMALL)
    with pytest.raises(ValueError, match=match):
        net(x)


TEST_CASES_ILL_OPTS = [
    ({"dropout": 1.0}, ValueError, "p must be in"),
    ({"dropout": "0.1"}, TypeError, "p must be a float"),
    ({"dropout_scope": "encoder"}, ValueError, "encoder"),
    ({"integration_steps": -1}, ValueError, "integration_steps"),
    ({"decoder_channels": (8, 8)}, ValueError, "decoder_channels"),
    ({"encoder_channels": (0, 8)}, ValueError, "encoder_channels"),
    ({"spatial_dims": 4}, ValueError, "spatial_dims"),
    ({"out_channels": 2}, ValueError, "out_channels"),
]


@pytest.mark.parametrize("kwargs,error,match", TEST_CASES_ILL_OPTS)
def test_ill_opts(kwargs, error, match):
    with pytest.raises(error, match=match):
        MCVoxelMorph(**kwargs)


def test_mc_sample_ill_num_samples():
    net = MCVoxelMorph(**SMALL)
    with pytest.raises(ValueError, match="num_samples"):
        net.mc_sample(torch.rand(1, 2, *SIZE), 0)


def test_trace():
    net = MCVoxelMorph(dropout=0.2, **SMALL).eval()
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):
        traced = torch.jit.trace(net, x)
        torch.testing.assert_close(traced(x), net(x))


def test_channelwise_head_samples_drop_whole_channels():
    """With channel-wise head dropout a sample is the head applied to features with whole channels zeroed."""
    net = MCDropoutVoxelMorphUNet(dropout=0.5, dropout_scope="head", **SMALL).eval()
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad(), mc_dropout_mode(net):
        y = net.decode(net.encode(x))
        torch.manual_seed(5)
        samples = net.mc_sample(x, 3)
        torch.manual_seed(5)
        for n in range(3):
            keep = torch.empty(1, y.shape[1]).bernoulli_(0.5) / 0.5
            expected = net.head(y * keep[:, :, None, None, None])
            torch.testing.assert_close(samples[n], expected, rtol=1e-5, atol=1e-7)


def test_channels_last_follows_weights():
    net = MCVoxelMorph(dropout=0.1, **SMALL).eval()
    x = torch.rand(1, 2, *SIZE)
    with torch.no_grad():
        expected = net(x)
        net = net.to(memory_format=torch.channels_last_3d)
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-6)
