"""The reference (conv-kernel) MIND-SSC implementation, kept to verify and benchmark the fast one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mind_ssc_reference"]


def mind_ssc_reference(img: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """
    The straightforward MIND-SSC of ConvexAdam, TransMorph and uniGradICON (12 shift convolutions, an
    ``avg_pool3d`` box, autograd), transcribed to check :func:`mind_ssc` against and to benchmark it.

    It keeps the reference's behaviour: the clamp uses the batch's global mean, and a constant image gives NaN.
    Use :func:`mind_ssc` in practice.

    Args:
        img: (B, 1, H, W, D) image.
        radius: patch radius r (box of (2r+1)^3).
        dilation: neighbour distance d.

    Returns:
        (B, 12, H, W, D) descriptor, channels in the order of :func:`mind_ssc`.
    """
    six = torch.tensor([[0, 1, 1], [1, 1, 0], [1, 0, 1], [1, 1, 2], [2, 1, 1], [1, 2, 1]])
    dist = ((six[:, None, :] - six[None, :, :]) ** 2).sum(-1)
    x, y = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    mask = (x > y).reshape(-1) & (dist == 2).reshape(-1)
    idx1 = six.unsqueeze(1).repeat(1, 6, 1).reshape(-1, 3)[mask]
    idx2 = six.unsqueeze(0).repeat(6, 1, 1).reshape(-1, 3)[mask]
    k1 = torch.zeros(12, 1, 3, 3, 3, dtype=img.dtype, device=img.device)
    k2 = torch.zeros_like(k1)
    ar = torch.arange(12)
    k1.view(-1)[ar * 27 + idx1[:, 0] * 9 + idx1[:, 1] * 3 + idx1[:, 2]] = 1
    k2.view(-1)[ar * 27 + idx2[:, 0] * 9 + idx2[:, 1] * 3 + idx2[:, 2]] = 1
    p = F.pad(img, (dilation,) * 6, mode="replicate")
    diff = F.conv3d(p, k1, dilation=dilation) - F.conv3d(p, k2, dilation=dilation)
    ssd = F.avg_pool3d(F.pad(diff**2, (radius,) * 6, mode="replicate"), 2 * radius + 1, stride=1)
    mind = ssd - torch.min(ssd, 1, keepdim=True)[0]
    var = torch.mean(mind, 1, keepdim=True)
    var = torch.clamp(var, (var.mean() * 0.001).item(), (var.mean() * 1000).item())
    mind = torch.exp(-(mind / var))
    return mind[:, [6, 8, 1, 11, 2, 10, 0, 7, 9, 4, 5, 3]]
