"""Per-pair regularisation weights: uncertainty-adaptive (Xu et al., Eq. 5) and randomly sampled (CIR-DM)."""

from __future__ import annotations

import torch
from ignite.engine import Engine

from mtreg_monai.engines.utils import RegistrationEvents, RegistrationKeys

__all__ = ["AdaptiveWeightHandler", "RandomRegWeightHandler", "uncertain_fraction"]

Keys = RegistrationKeys


def uncertain_fraction(uncertainty: torch.Tensor, tau: float) -> torch.Tensor:
    """
    Fraction of the elements of each pair's uncertainty map above ``tau``.

    Args:
        uncertainty: (B, C, H, W, D) map (all channels and voxels count).
        tau: threshold (a coefficient of variation: 0.1 means 10 %).

    Returns:
        (B,) fractions in [0, 1].
    """
    if not isinstance(uncertainty, torch.Tensor) or uncertainty.ndim < 2:
        raise ValueError(
            f"Expecting an uncertainty map (B, C, ...), got {getattr(uncertainty, 'shape', type(uncertainty))}."
        )
    return (uncertainty > tau).flatten(1).float().mean(dim=1)


class AdaptiveWeightHandler:
    """
    Sets a regularisation weight per pair from an uncertainty map: ``lambda = k * fraction(U > tau)`` (Eq. 5).

    At :attr:`RegistrationEvents.REG_WEIGHTING <mtreg_monai.engines.RegistrationEvents>` it reads
    ``engine.state.output[uncertainty_key]`` and writes the (B,) weight to ``weight_key`` and the fraction to
    ``fraction_key``; the trainer then uses this weight instead of its fixed one. No gradient flows through it.
    The paper's two instances:

    - spatial: ``AdaptiveWeightHandler(k=5, tau=0.10, uncertainty_key="u_phi", weight_key="lambda_phi",
      fraction_key="uncertain_fraction_phi")``;
    - temporal: ``AdaptiveWeightHandler(k=1, tau=0.01, uncertainty_key="u_image", weight_key="lambda_c",
      fraction_key="uncertain_fraction_image")``.

    Args:
        k: the weight when every element is uncertain, >= 0.
        tau: the uncertainty threshold, >= 0.
        uncertainty_key: output key of the uncertainty map, set by e.g. :class:`MCUncertaintyHandler`.
        weight_key: output key of the weight.
        fraction_key: output key of the fraction (logged), or ``None``.
    """

    def __init__(
        self,
        k: float,
        tau: float,
        uncertainty_key: str = Keys.UNCERTAINTY_PHI,
        weight_key: str = Keys.LAMBDA_PHI,
        fraction_key: str | None = Keys.FRACTION_PHI,
    ) -> None:
        for name, value in (("k", k), ("tau", tau)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        self.k = float(k)
        self.tau = float(tau)
        self.uncertainty_key = str(uncertainty_key)
        self.weight_key = str(weight_key)
        self.fraction_key = None if fraction_key is None else str(fraction_key)

    def attach(self, engine: Engine) -> None:
        """Run at ``RegistrationEvents.REG_WEIGHTING``."""
        if not engine.has_event_handler(self, RegistrationEvents.REG_WEIGHTING):
            engine.add_event_handler(RegistrationEvents.REG_WEIGHTING, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if self.uncertainty_key not in out:
            raise KeyError(
                f"engine.state.output has no '{self.uncertainty_key}': attach an uncertainty handler "
                f"(e.g. MCUncertaintyHandler) before {type(self).__name__}."
            )
        fraction = uncertain_fraction(out[self.uncertainty_key].detach(), self.tau)
        out[self.weight_key] = self.k * fraction
        if self.fraction_key is not None:
            out[self.fraction_key] = fraction


class RandomRegWeightHandler:
    """
    Samples the smoothness weight of each pair uniformly in ``[low, high]`` (conditional registration, CIR-DM).

    Mok and Chung (MICCAI 2021) train one network conditioned on the regularisation weight: at every step the
    weight is drawn at random, fed to the network (``reg_weight``, through conditional instance normalisation)
    and used as ``lambda_phi`` in the loss. At :attr:`RegistrationEvents.REG_WEIGHTING` this handler writes both
    (B,) tensors to ``engine.state.output``, drawing from torch's global generator (seeded by
    ``monai.utils.set_determinism``).

    Args:
        low: smallest weight, >= 0.
        high: largest weight, > low.
    """

    def __init__(self, low: float = 0.0, high: float = 10.0) -> None:
        if not 0 <= low < high:
            raise ValueError(f"Expecting 0 <= low < high, got low={low!r}, high={high!r}.")
        self.low = float(low)
        self.high = float(high)

    def attach(self, engine: Engine) -> None:
        """Run at ``RegistrationEvents.REG_WEIGHTING``."""
        if not engine.has_event_handler(self, RegistrationEvents.REG_WEIGHTING):
            engine.add_event_handler(RegistrationEvents.REG_WEIGHTING, self)

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        fixed = out[Keys.FIXED_IMAGE]
        weight = torch.rand(fixed.shape[0]).to(device=fixed.device, dtype=fixed.dtype)
        weight = self.low + (self.high - self.low) * weight
        out[Keys.REG_WEIGHT] = weight
        out[Keys.LAMBDA_PHI] = weight
