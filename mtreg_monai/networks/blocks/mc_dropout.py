"""Dropout that can be switched on at inference time for Monte Carlo sampling."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MCDropout"]


class MCDropout(nn.Module):
    """
    Element-wise dropout that is active in training mode **or** when its ``mc_active`` flag is set.

    Plain ``nn.Dropout`` is tied to ``module.training``; Monte Carlo dropout needs the dropout layers
    stochastic while the rest of the network stays in eval mode. ``MCDropout`` keeps the two switches
    apart: ``model.eval()`` leaves it off, and :func:`mtreg_monai.networks.utils.mc_dropout_mode`
    turns it on without touching ``training``.

    Args:
        p: probability of an element to be zeroed, in ``[0, 1)``. Surviving elements are scaled by ``1 / (1 - p)``.
        channelwise: drop whole channels of a (B, C, ...) feature map, as ``nn.Dropout3d`` does, instead of single
            elements. One Bernoulli draw per channel instead of one per voxel, and a displacement head after it is a
            linear combination of per-channel contributions, which :meth:`MCDropoutVoxelMorphUNet.mc_sample`
            exploits.

    Example::

        drop = MCDropout(0.2).eval()
        x = torch.ones(1, 4, 8, 8, 8)
        assert torch.equal(drop(x), x)  # eval mode: identity
        drop.mc_active = True
        y = drop(x)  # stochastic, as in training
    """

    def __init__(self, p: float = 0.1, channelwise: bool = False) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float)):
            raise TypeError(f"p must be a float, got {type(p).__name__}.")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"p must be in [0, 1), got {p}.")
        self.p = float(p)
        self.channelwise = bool(channelwise)
        self.mc_active = False

    @property
    def stochastic(self) -> bool:
        """Whether the next call draws a random mask."""
        return self.p > 0.0 and (self.training or self.mc_active)

    def channel_mask(self, batch_size: int, channels: int, like: torch.Tensor) -> torch.Tensor:
        """
        A (B, C) channel mask as :meth:`forward` draws it: 0 with probability ``p``, else ``1 / (1 - p)``.

        ``forward`` in channel-wise mode multiplies by exactly this draw, so code that needs the masks themselves
        (the shared-prefix MC sampling) consumes the random generator in the same way.
        """
        keep = torch.empty(batch_size, channels, dtype=like.dtype, device=like.device).bernoulli_(1.0 - self.p)
        return keep.div_(1.0 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: any tensor, typically a feature map (B, C, H, W, D).

        Returns:
            ``x`` unchanged when not stochastic, else ``x`` with elements (or whole channels) zeroed with
            probability ``p`` and the rest scaled by ``1 / (1 - p)``.
        """
        if not self.stochastic:
            return x
        if self.channelwise:
            if x.ndim < 2:
                raise ValueError(f"channel-wise dropout needs a (B, C, ...) tensor, got shape {tuple(x.shape)}.")
            mask = self.channel_mask(x.shape[0], x.shape[1], x)
            return x * mask.reshape(*mask.shape, *([1] * (x.ndim - 2)))
        return F.dropout(x, self.p, training=True)

    def extra_repr(self) -> str:
        return f"p={self.p}, channelwise={self.channelwise}"
