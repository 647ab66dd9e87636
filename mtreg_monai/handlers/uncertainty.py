"""Monte Carlo dropout uncertainty of the teacher's displacement and warped image (Xu et al., Eq. 4)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from ignite.engine import Engine
from monai.networks.blocks import Warp
from monai.networks.utils import eval_mode

from mtreg_monai.engines.utils import RegistrationEvents, RegistrationKeys
from mtreg_monai.networks.utils import mc_dropout_mode

__all__ = ["MCUncertaintyHandler", "coefficient_of_variation", "mc_predictions"]

Keys = RegistrationKeys


def _check_floor(name: str, value: float | None) -> float | None:
    """``None`` or a finite number > 0, as a float; else a ``ValueError`` naming ``name`` and the value."""
    if value is None:
        return None
    if not _is_positive_number(value):
        raise ValueError(f"{name} must be None (the paper's Eq. 4) or a finite number > 0, got {value!r}.")
    return float(value)


def _is_positive_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def coefficient_of_variation(
    samples: torch.Tensor, floor: float | None = None, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Mean and coefficient of variation ``U = |sigma / mu|`` over the first dim of ``samples`` (the paper's Eq. 4).

    ``sigma`` is the sample standard deviation (N - 1 in the denominator), ``mu`` the sample mean, per element.

    - ``floor=None`` (default, the paper): ``U = sigma / max(|mu|, eps)``. ``eps`` only prevents 0/0 and the
      division by an exact zero: wherever ``|mu| >= eps`` the result is exactly ``|sigma / mu|``. Where ``mu`` is
      (almost) zero and the samples disagree, ``U`` is large (up to ``sigma / eps``) but finite; where they agree
      (``sigma = 0``) it is 0. No inf or NaN for finite samples.
    - ``floor`` a number (a deviation from the paper): ``U = sigma / max(|mu|, floor)``. Where the mean is far
      from zero this is still ``|sigma / mu|``; where it is near zero (background, no motion) it becomes
      ``sigma / floor``, so a still background is not counted as uncertain merely because its mean is small.

    Args:
        samples: (N, B, C, H, W, D) Monte Carlo samples, N >= 2 (any number of trailing dims >= 1).
        floor: ``None`` for Eq. 4, or the smallest denominator, a finite number > 0, in the unit of the samples
            (voxels for displacements, normalised intensity for images).
        eps: the guard of ``floor=None``, a finite number > 0 in the unit of the samples (1e-6: a millionth of
            a voxel, or of the [0, 1] intensity range). Unused when ``floor`` is given.

    Returns:
        ``(mean, u)``, both (B, C, H, W, D), in float32 (for half-precision samples) or the samples' dtype.

    Raises:
        ValueError: ``samples`` is not a tensor with >= 3 dims or has N < 2; ``floor`` is neither ``None`` nor a
            finite number > 0; ``eps`` is not a finite number > 0.
    """
    if not isinstance(samples, torch.Tensor) or samples.ndim < 3:
        raise ValueError(f"Expecting samples of shape (N, B, C, ...), got {getattr(samples, 'shape', type(samples))}.")
    if samples.shape[0] < 2:
        raise ValueError(f"At least 2 samples are needed for a standard deviation, got N={samples.shape[0]}.")
    floor = _check_floor("floor", floor)
    if not _is_positive_number(eps):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}.")
    samples = samples.float() if samples.dtype in (torch.float16, torch.bfloat16) else samples
    # written out: torch.std_mean over the sample dim is ~30x slower on a CPU for these shapes
    mean = samples.mean(dim=0)
    std = (samples - mean).square_().sum(dim=0).div_(samples.shape[0] - 1).sqrt_()
    return mean, std.div_(mean.abs().clamp_min(float(eps) if floor is None else floor))


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

    - ``u_phi``: (B, 3, H, W, D) transformation uncertainty, ``|sigma/mu|`` of the displacements (voxel units)
      per voxel and channel (:func:`coefficient_of_variation`; dimensionless);
    - ``u_image``: (B, 1, H, W, D) appearance uncertainty, ``|sigma/mu|`` of the warped images (dimensionless);
    - ``teacher_ddf`` and ``teacher_warped_image``: the MC means, the teacher's prediction used by the temporal
      consistency term (the mean of the samples already computed costs nothing, where a dropout-free pass would
      cost one more network evaluation; with dropout only before the head the two differ by the dropout noise
      averaged over N).

    By default (both floors ``None``) the maps are the paper's Eq. 4, guarded only against division by an exact
    zero: where the mean is ~0 (still background, zero intensity) and the samples disagree, ``U`` is large but
    finite. Consumers should threshold it (``uncertain_fraction``) or take quantiles, not plain means. A floor
    (``ddf_floor``, ``image_floor``) caps the ratio there (a deviation from the paper, see
    :func:`coefficient_of_variation`).

    Everything is computed without gradients, under the engine's mixed precision (``engine.amp``, as the
    student's pass; the samples' statistics in float32).

    Args:
        network: the teacher, e.g. ``MeanTeacherHandler(...).teacher``.
        num_samples: N >= 2 (the paper: 6).
        ddf_floor: ``None`` (the paper's Eq. 4) or the denominator floor of ``u_phi``, voxels, > 0.
        image_floor: ``None`` (the paper's Eq. 4) or the denominator floor of ``u_image``, normalised intensity
            units, > 0.
        warp_mode: interpolation of the moving image.
        warp_padding_mode: padding outside the moving grid.

    Example::

        uncertainty = MCUncertaintyHandler(teacher_handler.teacher, num_samples=6)  # Eq. 4, no floors
        uncertainty.attach(trainer)  # a RegistrationTrainer, which fires RegistrationEvents.TEACHER_PASS
    """

    def __init__(
        self,
        network: nn.Module,
        num_samples: int = 6,
        ddf_floor: float | None = None,
        image_floor: float | None = None,
        warp_mode: str = "bilinear",
        warp_padding_mode: str = "border",
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples must be an int >= 2, got {num_samples!r}.")
        self.ddf_floor = _check_floor("ddf_floor", ddf_floor)
        self.image_floor = _check_floor("image_floor", image_floor)
        self.network = network
        self.num_samples = num_samples
        self.warp = Warp(mode=warp_mode, padding_mode=warp_padding_mode)

    def attach(self, engine: Engine) -> None:
        """Run at ``RegistrationEvents.TEACHER_PASS`` (the engine must have registered the event)."""
        if not engine.has_event_handler(self, RegistrationEvents.TEACHER_PASS):
            engine.add_event_handler(RegistrationEvents.TEACHER_PASS, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        moving, fixed = out[Keys.MOVING_IMAGE], out[Keys.FIXED_IMAGE]
        with torch.autocast(moving.device.type, enabled=bool(getattr(engine, "amp", False)),
                            **(getattr(engine, "amp_kwargs", None) or {})):
            ddfs, warped = mc_predictions(self.network, moving, fixed, self.num_samples, self.warp)
        out[Keys.TEACHER_DDF], out[Keys.UNCERTAINTY_PHI] = coefficient_of_variation(ddfs, self.ddf_floor)
        out[Keys.TEACHER_WARPED_IMAGE], out[Keys.UNCERTAINTY_IMAGE] = coefficient_of_variation(warped, self.image_floor)
