"""Utilities for networks with Monte Carlo dropout."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch.nn as nn

from mtreg_monai.networks.blocks.mc_dropout import MCDropout

__all__ = ["mc_dropout_mode", "mc_dropout_layers"]


def mc_dropout_layers(*nets: nn.Module) -> list[MCDropout]:
    """All :class:`MCDropout` modules of ``nets``, in module order."""
    for net in nets:
        if not isinstance(net, nn.Module):
            raise TypeError(f"nets must be torch.nn.Module instances, got {type(net).__name__}.")
    return [m for net in nets for m in net.modules() if isinstance(m, MCDropout)]


@contextmanager
def mc_dropout_mode(*nets: nn.Module, enabled: bool = True) -> Iterator[list[nn.Module]]:
    """
    Make the :class:`MCDropout` layers of ``nets`` stochastic (or deterministic) for the ``with`` block.

    Only the dropout layers change; ``training`` of every module, and therefore normalisation layers,
    stays as it was. The previous flags are restored on exit, also after an exception. This is the
    Monte Carlo dropout counterpart of :func:`monai.networks.utils.eval_mode`; it does not switch
    gradients off (wrap it in ``torch.no_grad()`` for a teacher).

    Args:
        nets: networks whose dropout layers to switch.
        enabled: ``True`` to sample dropout masks; ``False`` clears the Monte Carlo flag, so that a
            network in eval mode makes a deterministic pass (in training mode dropout stays on, as usual).

    Example::

        net.eval()
        with torch.no_grad(), mc_dropout_mode(net):
            samples = net.mc_sample(x, num_samples=6)
    """
    layers = mc_dropout_layers(*nets)
    previous = [m.mc_active for m in layers]
    try:
        for m in layers:
            m.mc_active = enabled
        yield list(nets)
    finally:
        for m, flag in zip(layers, previous):
            m.mc_active = flag
