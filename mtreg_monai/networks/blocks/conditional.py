"""Conditional instance normalisation driven by a regularisation weight (Mok and Chung, MICCAI 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["WeightMappingNetwork", "ConditionalInstanceNorm"]


class WeightMappingNetwork(nn.Module):
    """
    Maps a scalar regularisation weight per pair to a latent code: an MLP with LeakyReLU(0.2) activations.

    Args:
        latent_dim: width of the hidden layers and of the code.
        num_layers: number of linear layers, >= 1.

    Example::

        mapping = WeightMappingNetwork(64)
        code = mapping(torch.tensor([0.5, 5.0]))  # (2, 64)
    """

    def __init__(self, latent_dim: int = 64, num_layers: int = 4) -> None:
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}.")
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}.")
        layers: list[nn.Module] = []
        c = 1
        for _ in range(num_layers):
            layers += [nn.Linear(c, latent_dim), nn.LeakyReLU(0.2)]
            c = latent_dim
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """
        Args:
            weight: (B,) or (B, 1) regularisation weights.

        Returns:
            (B, latent_dim) codes.
        """
        return self.net(weight.reshape(-1, 1))


class ConditionalInstanceNorm(nn.Module):
    """
    Instance normalisation whose scale and shift are predicted from a latent code: ``gamma(z) * IN(x) + beta(z)``.

    Initialised to the identity modulation (``gamma = 1``, ``beta = 0``) for any code.

    Args:
        num_channels: C of the feature map (B, C, H, W, D).
        latent_dim: size of the code z (B, latent_dim).
    """

    def __init__(self, num_channels: int, latent_dim: int) -> None:
        super().__init__()
        self.affine = nn.Linear(latent_dim, 2 * num_channels)
        nn.init.zeros_(self.affine.weight)
        with torch.no_grad():
            self.affine.bias.copy_(torch.cat([torch.ones(num_channels), torch.zeros(num_channels)]))
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: (B, C, H, W, D) features.
            code: (B, latent_dim) codes.

        Returns:
            the modulated features, shape of ``x``.
        """
        gamma, beta = self.affine(code).chunk(2, dim=1)
        shape = (x.shape[0], self.num_channels) + (1,) * (x.ndim - 2)
        # instance normalisation written out (as F.instance_norm, eps 1e-5): F.instance_norm refuses a single voxel,
        # which the coarsest decoder level has for a 16^3 input; here a single voxel normalises to 0
        dims = tuple(range(2, x.ndim))
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)
        return gamma.reshape(shape) * (x - mean) * torch.rsqrt(var + 1e-5) + beta.reshape(shape)
