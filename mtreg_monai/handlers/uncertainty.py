"""Monte Carlo dropout uncertainty of the teacher's displacement and warped image (Xu et al., Eq. 4)."""

from __future__ import annotations

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.networks.blocks import Warp
from monai.networks.utils import eval_mode

from mtreg_monai.engines.utils import RegistrationEvents, RegistrationKeys
from mtreg_monai.networks.utils import mc_dropout_mode

__all__ = ["MCUncertaintyHandler", "coefficient_of_variation", "mc_predictions"]

Keys = RegistrationKeys


def coefficient_of_variation(samples: torch.Tensor, floor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Mean and guarded coefficient of variation ``|sigma / mu|`` over the first dim of ``samples``.

    ``sigma`` is the sample standard deviation (N - 1 in the denominator). The division is guarded by flooring
    the magnitude of the mean: ``U = sigma / max(|mu|, floor)``. Where the mean is far from zero this is the
    paper's ``|sigma / mu|``; where it is near zero (background, no motion) the floor turns it into
    ``sigma / floor``, which is large only if the samples really disagree, so a still background is not counted
    as uncertain merely because its mean is small.

    Args:
        samples: (N, B, C, H, W, D) Monte Carlo samples, N >= 2.
        floor: smallest denominator, > 0, in the unit of the samples (voxels for displacements, normalised
            intensity for images).

    Returns:
        ``(mean, u)``, both (B, C, H, W, D), in float32 or wider.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim < 3:
        raise ValueError(f"Expecting samples of shape (N, B, C, ...), got {getattr(samples, 'shape', type(samples))}.")
    if samples.shape[0] < 2:
        raise ValueError(f"At least 2 samples are needed for a standard deviation, got N={samples.shape[0]}.")
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor!r}.")
    samples = samples.float() if samples.dtype in (torch.float16, torch.bfloat16) else samples
    # written out: torch.std_mean over the sample dim is ~30x slower on a CPU for these shapes
    mean = samples.mean(dim=0)
    std = (samples - mean).square_().sum(dim=0).div_(samples.shape[0] - 1).sqrt_()
    return mean, std.div_(mean.abs().clamp_min(floor))


def mc_predictions(
    network: nn.Module, moving: torch.Tensor, fixed: torch.Tensor, num_samples: int, warp: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    ``num_samples`` MC dropout displacements and warped moving images, without gradients.

    Uses ``network.mc_sample`` (which shares the layers before the first dropout) when the network has it,
    else ``num_samples`` forward passes. The network runs in eval mode (MONAI ``eval_mode``, restored after) with
    only its dropout made stochastic by :func:`~mtreg_monai.networks.utils.mc_dropout_mode`.

    Args:
        network: ``(B, 2, H, W, D) -> ddf (B, 3, H, W, D)``.
        moving: (B, 1, H, W, D) moving image.
        fixed: (B, 1, H, W, D) fixed image.
        num_samples: N.
        warp: a MONAI ``Warp``.

    Returns:
        ``(ddfs, warped)``: (N, B, 3, H, W, D) displacements in voxels and (N, B, 1, H, W, D) warped images.
    """
    x = torch.cat([moving, fixed], dim=1)
    with eval_mode(network), mc_dropout_mode(network):
        if hasattr(network, "mc_sample"):
            ddfs = network.mc_sample(x, num_samples)
        else:
            ddfs = torch.stack([network(x) for _ in range(num_samples)])
        n, b = ddfs.shape[:2]
        images = moving.unsqueeze(0).expand(n, *moving.shape).flatten(0, 1)
        warped = warp(images, ddfs.flatten(0, 1)).unflatten(0, (n, b))
    return ddfs, warped


class MCUncertaintyHandler:
    """
    Monte Carlo dropout predictions of a (teacher) network and their transformation and appearance uncertainty.

    At every :attr:`RegistrationEvents.TEACHER_PASS <mtreg_monai.engines.RegistrationEvents>` the network draws
    N displacements ``phi_ti`` for the pair in ``engine.state.output`` and warps the moving image with each
    (``I_wti``). It adds to ``engine.state.output``:

    - ``u_phi``: (B, 3, H, W, D) transformation uncertainty, ``|sigma/mu|`` of the displacements per voxel and
      channel (see :func:`coefficient_of_variation` for the guard, ``ddf_floor`` in voxels);
    - ``u_image``: (B, 1, H, W, D) appearance uncertainty of the warped images (``image_floor`` in normalised
      intensity);
    - ``teacher_ddf`` and ``teacher_warped_image``: the MC means, the teacher's prediction used by the temporal
      consistency term (the mean of the samples already computed costs nothing, where a dropout-free pass would
      cost one more network evaluation; with dropout only before the head the two differ by the dropout noise
      averaged over N).

    Everything is computed without gradients.

    Args:
        network: the teacher, e.g. ``MeanTeacherHandler(...).teacher``.
        num_samples: N >= 2 (the paper: 6).
        ddf_floor: denominator floor of ``u_phi``, voxels, > 0.
        image_floor: denominator floor of ``u_image``, intensity units, > 0.
        warp_mode: interpolation of the moving image.
        warp_padding_mode: padding outside the moving grid.
    """

    def __init__(
        self,
        network: nn.Module,
        num_samples: int = 6,
        ddf_floor: float = 0.5,
        image_floor: float = 0.1,
        warp_mode: str = "bilinear",
        warp_padding_mode: str = "border",
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}.")
        for name, value in (("ddf_floor", ddf_floor), ("image_floor", image_floor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}.")
        self.network = network
        self.num_samples = num_samples
        self.ddf_floor = float(ddf_floor)
        self.image_floor = float(image_floor)
        self.warp = Warp(mode=warp_mode, padding_mode=warp_padding_mode)

    def attach(self, engine: Engine) -> None:
        """Run at ``RegistrationEvents.TEACHER_PASS`` (the engine must have registered the event)."""
        if not engine.has_event_handler(self, RegistrationEvents.TEACHER_PASS):
            engine.add_event_handler(RegistrationEvents.TEACHER_PASS, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        moving, fixed = out[Keys.MOVING_IMAGE], out[Keys.FIXED_IMAGE]
        ddfs, warped = mc_predictions(self.network, moving, fixed, self.num_samples, self.warp)
        out[Keys.TEACHER_DDF], out[Keys.UNCERTAINTY_PHI] = coefficient_of_variation(ddfs, self.ddf_floor)
        out[Keys.TEACHER_WARPED_IMAGE], out[Keys.UNCERTAINTY_IMAGE] = coefficient_of_variation(warped, self.image_floor)
