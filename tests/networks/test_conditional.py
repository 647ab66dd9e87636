from __future__ import annotations

import pytest
import torch

from mtreg_monai.networks import MCVoxelMorph
from mtreg_monai.networks.blocks import ConditionalInstanceNorm, WeightMappingNetwork

SMALL = {
    "encoder_channels": (4, 8, 8, 8),
    "decoder_channels": (8, 8, 8, 8),
    "refine_channels": (8,),
    "final_channels": (4, 4),
}
SIZE = (32, 32, 32)  # instance normalisation needs more than one voxel at 1/16 resolution


def _conditional_net() -> MCVoxelMorph:
    torch.manual_seed(0)
    net = MCVoxelMorph(conditional=True, condition_dim=8, inference_reg_weight=5.0, **SMALL).eval()
    with torch.no_grad():
        net.backbone.head.weight.normal_(0, 0.1)
        for cin in net.backbone.conditioning:
            cin.affine.weight.normal_(0, 0.5)
    return net


def test_cin_identity_at_init():
    cin = ConditionalInstanceNorm(4, 8)
    x = torch.randn(2, 4, 6, 6, 6)
    torch.testing.assert_close(cin(x, torch.randn(2, 8)), torch.nn.functional.instance_norm(x))


def test_mapping_shape():
    assert WeightMappingNetwork(16, num_layers=2)(torch.tensor([0.0, 1.0, 5.0])).shape == (3, 16)


def test_weight_changes_output_and_default_is_inference_weight():
    net = _conditional_net()
    x = torch.rand(2, 2, *SIZE)
    with torch.no_grad():
        low, high = net(x, torch.tensor([0.0, 0.0])), net(x, 10.0)
        default, five = net(x), net(x, torch.tensor([5.0, 5.0]))
    assert low.shape == (2, 3, *SIZE)
    assert not torch.allclose(low, high)
    torch.testing.assert_close(default, five)
    assert net.backbone.conditioning and len(net.backbone.conditioning) == 4 + 1 + 2


def test_gradient_reaches_mapping_network():
    net = _conditional_net().train()
    net(torch.rand(1, 2, *SIZE), torch.tensor([3.0])).pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.mapping.parameters() if p.ndim == 2)


def test_ill_args():
    x = torch.rand(2, 2, *SIZE)
    with pytest.raises(ValueError, match="reg_weight"):
        MCVoxelMorph(**SMALL)(x, 1.0)
    with pytest.raises(ValueError, match="reg_weight"):
        _conditional_net()(x, torch.ones(3))
    with pytest.raises(ValueError, match="condition_dim"):
        MCVoxelMorph(conditional=True, condition_dim=0, **SMALL)
    with pytest.raises(ValueError, match="latent_dim"):
        WeightMappingNetwork(0)


def test_smallest_accepted_input():
    """16^3 (1 voxel at the coarsest level) works, as the bundle metadata's 16*n promises (verify_net_in_out)."""
    net = MCVoxelMorph(conditional=True, condition_dim=8, **SMALL).eval()
    with torch.no_grad():
        assert net(torch.rand(1, 2, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
