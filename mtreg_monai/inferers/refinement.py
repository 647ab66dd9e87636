"""Test-time refinement (instance optimisation) of a predicted displacement with MIND-SSC + smoothness.

The network's displacement for a pair is the start of a short per-pair optimisation (Adam) of
MIND-SSC(fixed, warped moving) + lambda * smoothness, as Learn2Reg methods such as ConvexAdam
(Siebert et al., MICCAI 2021) finish. The fixed image's descriptor is computed once; the correction
lives on a coarse control grid upsampled (trilinear) to full resolution. Warping the moving image's
descriptor instead of recomputing it (the usual shortcut) is an option, but on a CPU it was slower
than warping the image and recomputing MIND-SSC (12 channels to warp against 1, and this package's
MIND-SSC has a hand-written backward). See ``docs/inferers.md`` for the measurements behind the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from monai.inferers import Inferer
from monai.networks.blocks import Warp
from torch import nn

from mtreg_monai.losses import MINDSSCLoss, SmoothnessLoss

__all__ = ["MCSmoothnessWeight", "RefinementInferer", "refine_ddf"]

_ADAM_EPS = 1e-6


def _check_number(name: str, value: Any, minimum: float, integer: bool = False, strict: bool = False) -> Any:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        expected = "an int" if integer else "a number"
        got = f"{name}={value!r} of type {type(value).__name__}"
        raise TypeError(f"Expecting {name} to be {expected}, instead got {got}.")
    if math.isnan(value) or (value <= minimum if strict else value < minimum) or math.isinf(value):
        op = ">" if strict else ">="
        raise ValueError(f"Expecting a finite {name} {op} {minimum}, instead got {name}={value!r}.")
    return value


def _check_pair(name: str, x: Any, channels: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Expecting {name} to be a torch.Tensor, instead got {type(x).__name__}.")
    if x.ndim != 5 or x.shape[1] != channels:
        raise ValueError(
            f"Expecting {name} of shape (B, {channels}, H, W, D), instead got {name} of shape {tuple(x.shape)}."
        )
    if min(x.shape[2:]) < 3:
        raise ValueError(f"Expecting every spatial size of {name} >= 3, instead got {name} of shape {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"Expecting a floating-point {name}, instead got dtype {x.dtype}.")
    return x


def _pair_weight(weight: Any, batch: int, ref: torch.Tensor) -> torch.Tensor:
    """``weight`` (a number or a (B,) / (1,) tensor) as a (B,) tensor like ``ref``, checked >= 0 and finite."""
    w = torch.as_tensor(weight, dtype=ref.dtype, device=ref.device).detach().reshape(-1)
    if w.numel() == 1:
        w = w.expand(batch)
    if w.numel() != batch:
        raise ValueError(
            f"Expecting smoothness_weight to be a number or one value per pair ({batch}), "
            f"instead got {w.numel()} values."
        )
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError(f"Expecting finite smoothness_weight >= 0, instead got {w.tolist()}.")
    return w


def _box_smooth(x: torch.Tensor, passes: int) -> torch.Tensor:
    """``passes`` 3^3 moving averages (replicate padding): 2 passes approximate a quadratic B-spline kernel."""
    for _ in range(passes):
        x = F.avg_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x


def _upsample(x: torch.Tensor, s: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """A coarse displacement (coarse voxels) to full resolution (full voxels), cropped to ``spatial``.

    Coarse voxel j of an axis sits at full-resolution position ``s * j + (s - 1) / 2`` (the centre of the
    block ``s j .. s j + s - 1``); trilinear interpolation between them (``align_corners=False``), constant
    beyond the outer centres."""
    if s == 1:
        return x
    up = F.interpolate(x * s, scale_factor=s, mode="trilinear", align_corners=False)
    return up[:, :, : spatial[0], : spatial[1], : spatial[2]]


def refine_ddf(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    ddf: torch.Tensor | None = None,
    steps: int = 100,
    learning_rate: float = 0.5,
    smoothness_weight: float | torch.Tensor = 4.0,
    control_spacing: int = 2,
    mind_radius: int = 1,
    mind_dilation: int = 2,
    warp_features: bool = False,
    grid_smoothing: int = 0,
    lr_decay: bool = False,
) -> torch.Tensor:
    """Refine a displacement for each pair by Adam on MIND-SSC + ``smoothness_weight`` * smoothness.

    The variable is a correction ``c`` on a control grid of spacing s = ``control_spacing`` voxels
    (``ceil(n / s)`` points along an axis of n voxels, point j at the centre of voxels ``s j .. s j + s - 1``),
    starting from zero; the displacement is ``u = ddf + up(box^k(c))``, with ``up`` trilinear and ``box^k``
    k = ``grid_smoothing`` passes of a 3^3 moving average (2 passes: a quadratic B-spline-like kernel, as
    ConvexAdam smooths its grid). So ``steps=0`` returns ``ddf`` and the start's fine detail is kept. The
    fixed image's MIND-SSC descriptor is computed once (full resolution); per step the loss of pair b is
    ``mean((MIND(fixed) - MIND(warp(moving, u)))**2) + w_b * SmoothnessLoss(u)``
    (``SmoothnessLoss`` on the paper's, voxelmorph's, scale). The per-pair losses are summed, so pairs do
    not interact (Adam is element-wise). ``warp_features=True`` instead computes the moving descriptor once
    and warps it, ``warp(MIND(moving), u)``: within 1 % of the exact loss, but slower on a CPU (12 channels
    to warp; compared in ``docs/inferers.md``).

    Gradients are enabled inside whatever the caller's mode (``torch.no_grad()``,
    ``torch.inference_mode()``), autocast is disabled, and nothing flows back to the inputs.

    Args:
        moving: moving image (B, 1, H, W, D), any intensity scale (MIND-SSC is invariant to it).
        fixed: fixed image of the same shape.
        ddf: start displacement (B, 3, H, W, D), voxel units, channel i along spatial axis i, sampled on
            the fixed grid: warped(x) = moving(x + ddf(x)) (MONAI ``Warp``). ``None``: zero.
        steps: number of Adam steps, >= 0.
        learning_rate: Adam learning rate, > 0 (roughly the largest change per step, in voxels).
        smoothness_weight: lambda, >= 0: a number or a (B,) tensor (one per pair).
        control_spacing: voxels between control points, >= 1 (1: full resolution); every axis needs
            ``ceil(n / control_spacing) >= 2`` points.
        mind_radius: MIND-SSC patch radius, >= 0.
        mind_dilation: MIND-SSC neighbour distance in voxels, >= 1.
        warp_features: warp the moving image's descriptor (True) or recompute it on the warped image each step
            (False, the exact loss; faster on a CPU).
        grid_smoothing: passes k >= 0 of the 3^3 moving average applied to the correction grid.
        lr_decay: cosine decay of the learning rate to 0 over ``steps``. Constant-rate Adam keeps moving by
            ~``learning_rate`` around the optimum (on identical images: mean 0.1, max 0.55 voxel after 10 steps);
            with the decay it settles, but on the phantom it needs ~2x the steps for the same Dice.

    Returns:
        the refined displacement (B, 3, H, W, D), same units and convention as ``ddf``, on ``moving``'s
        device, in ``ddf``'s dtype (``moving``'s when ``ddf`` is None), without gradient.

    Raises:
        TypeError: When an image or ``ddf`` is not a floating-point tensor, or an option has the wrong type.
        ValueError: When the shapes do not match (B, 1, H, W, D) / (B, 3, H, W, D) with H, W, D >= 3, or an
            option is out of range.

    Example::

        >>> moving, fixed = torch.rand(2, 1, 1, 32, 32, 32)
        >>> refine_ddf(moving, fixed, steps=10).shape
        torch.Size([1, 3, 32, 32, 32])
    """
    _check_pair("moving", moving, 1)
    _check_pair("fixed", fixed, 1)
    if fixed.shape != moving.shape:
        raise ValueError(
            f"Expecting fixed of the shape of moving {tuple(moving.shape)}, "
            f"instead got fixed of shape {tuple(fixed.shape)}."
        )
    if ddf is not None:
        _check_pair("ddf", ddf, 3)
        if ddf.shape[0] != moving.shape[0] or ddf.shape[2:] != moving.shape[2:]:
            raise ValueError(
                f"Expecting ddf of shape ({moving.shape[0]}, 3, *{tuple(moving.shape[2:])}), "
                f"instead got ddf of shape {tuple(ddf.shape)}."
            )
    _check_number("steps", steps, 0, integer=True)
    _check_number("learning_rate", learning_rate, 0, strict=True)
    _check_number("control_spacing", control_spacing, 1, integer=True)
    _check_number("mind_radius", mind_radius, 0, integer=True)
    _check_number("mind_dilation", mind_dilation, 1, integer=True)
    _check_number("grid_smoothing", grid_smoothing, 0, integer=True)
    for name, flag in (("warp_features", warp_features), ("lr_decay", lr_decay)):
        if not isinstance(flag, bool):
            raise TypeError(f"Expecting {name} to be a bool, instead got {name}={flag!r} ({type(flag).__name__}).")
    batch, spatial = moving.shape[0], tuple(moving.shape[2:])
    if min(-(-n // control_spacing) for n in spatial) < 2:
        raise ValueError(
            f"Expecting control_spacing small enough for >= 2 control points per axis of {spatial}, "
            f"instead got control_spacing={control_spacing}."
        )
    out_dtype = moving.dtype if ddf is None else ddf.dtype
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    if ddf is None:
        ddf = moving.new_zeros((batch, 3, *spatial))
    if steps == 0:
        return ddf.detach().to(out_dtype)
    device_type = moving.device.type
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device_type, enabled=False):
        # plain clones: tensors made under inference_mode cannot enter autograd, and a MONAI MetaTensor's
        # torch-function dispatch would make the optimised tensor a non-leaf
        mov, fix, start = (t.detach().as_subclass(torch.Tensor).clone().to(work) for t in (moving, fixed, ddf))
        weight = _pair_weight(smoothness_weight, batch, start)
        s = control_spacing
        mind = MINDSSCLoss(radius=mind_radius, dilation=mind_dilation, reduction="none")
        smooth = SmoothnessLoss(reduction="none")
        warp = Warp(mode="bilinear", padding_mode="border")
        with torch.no_grad():
            fixed_mind = mind.descriptor(fix)
            moving_mind = mind.descriptor(mov) if warp_features else None
        coarse = tuple(-(-n // s) for n in spatial)
        correction = torch.zeros((batch, 3, *coarse), dtype=work, device=start.device, requires_grad=True)
        # losses summed over voxels (mean over channels): gradients per voxel do not shrink with the image size,
        # so Adam's eps can damp the round-off gradients of a perfect match (~1e-9 against ~1e-2 for a misalignment)
        n_vox = float(torch.tensor(spatial).prod())
        optimizer = torch.optim.Adam([correction], lr=learning_rate / s, eps=_ADAM_EPS)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps) if lr_decay else None
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            u = start + _upsample(_box_smooth(correction, grid_smoothing), s, spatial)
            if warp_features:
                warped_mind = warp(moving_mind, u)
            else:  # the reference: the moving image warped, then its descriptor
                warped_mind = mind.descriptor(warp(mov, u))
            per_pair = mind.forward_descriptors(warped_mind, fixed_mind).mean(dim=(1, 2, 3, 4))
            per_pair = per_pair + weight * smooth(u).mean(dim=(1, 2, 3, 4))
            (per_pair.sum() * n_vox).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        with torch.no_grad():
            result = start + _upsample(_box_smooth(correction, grid_smoothing), s, spatial)
    return result.detach().to(out_dtype)


class MCSmoothnessWeight:
    """A per-pair smoothness weight from the network's Monte Carlo dropout uncertainty (Xu et al., Eq. 5).

    ``lambda_b = k * fraction(U_phi > tau)`` with ``U_phi`` the coefficient of variation of ``num_samples``
    MC dropout displacements (:func:`~mtreg_monai.handlers.mc_predictions`,
    :func:`~mtreg_monai.handlers.coefficient_of_variation` with ``ddf_floor`` in voxels), as the paper sets
    the training weight. Pass it as ``RefinementInferer(smoothness_weight=MCSmoothnessWeight(...))``. Its
    measured benefit on the hard phantom preset was none (73.2 % against 73.5 % Dice with the fixed weight 4,
    ``docs/inferers.md``).

    Args:
        num_samples: MC samples N >= 2 (the paper: 6).
        k: weight when every element is uncertain, >= 0 (the paper's k1 = 5).
        tau: uncertainty threshold >= 0 (the paper's 0.1).
        ddf_floor: optional denominator floor of ``U_phi``, voxels, > 0; ``None`` (default) is the paper's Eq. 4.

    Example::

        >>> weight = MCSmoothnessWeight(num_samples=6, k=5.0, tau=0.1)
        >>> weight(inputs, network)  # (B,) tensor, inputs (B, 2, H, W, D) moving, fixed
    """

    def __init__(
        self, num_samples: int = 6, k: float = 5.0, tau: float = 0.1, ddf_floor: float | None = None
    ) -> None:
        self.num_samples = _check_number("num_samples", num_samples, 2, integer=True)
        self.k = float(_check_number("k", k, 0))
        self.tau = float(_check_number("tau", tau, 0))
        self.ddf_floor = None if ddf_floor is None else float(_check_number("ddf_floor", ddf_floor, 0, strict=True))
        self.warp = Warp(mode="bilinear", padding_mode="border")

    def __call__(self, inputs: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """
        Args:
            inputs: (B, 2, H, W, D), channel 0 moving, channel 1 fixed.
            network: ``(B, 2, H, W, D) -> ddf (B, 3, H, W, D)`` with MC dropout layers.

        Returns:
            (B,) weights in [0, k], float32 (float64 for float64 inputs), on ``inputs``' device.
        """
        # imported here: the handlers import the engines, which may import this subpackage
        from mtreg_monai.handlers.uncertainty import coefficient_of_variation, mc_predictions
        from mtreg_monai.handlers.weighting import uncertain_fraction

        with torch.no_grad():
            ddfs, _ = mc_predictions(network, inputs[:, :1], inputs[:, 1:2], self.num_samples, self.warp)
            _, u_phi = coefficient_of_variation(ddfs, self.ddf_floor)
            return self.k * uncertain_fraction(u_phi, self.tau)


class RefinementInferer(Inferer):
    """MONAI inferer: the network's displacement, refined per pair by MIND-SSC + smoothness (instance optimisation).

    Runs ``network`` (or ``base_inferer(inputs, network)``) without gradient on the bundle's input and refines
    the predicted displacement with :func:`refine_ddf` (Adam on a coarse correction grid, MIND-SSC
    descriptors; see there for the loss). ``steps=0`` returns the prediction unchanged. Refinement is an
    inference option only: the TorchScript export (``ckpt_export``) holds the network alone, without it.

    Args:
        steps: Adam steps per pair, >= 0 (0: no refinement).
        learning_rate: Adam learning rate, > 0, roughly voxels per step.
        smoothness_weight: lambda >= 0 of ``SmoothnessLoss`` (voxelmorph scale): a number, or a callable
            ``(inputs, network) -> (B,)`` such as :class:`MCSmoothnessWeight`; a ``smoothness_weight`` keyword
            given to ``__call__`` overrides it for that call.
        control_spacing: voxels between correction control points, >= 1.
        mind_radius: MIND-SSC patch radius, >= 0.
        mind_dilation: MIND-SSC neighbour distance in voxels, >= 1.
        warp_features: warp the moving descriptor (True) or recompute MIND-SSC on the warped image every step
            (False: the exact loss, and faster on a CPU).
        grid_smoothing: 3^3 moving-average passes on the correction grid, >= 0.
        lr_decay: cosine decay of the learning rate to 0 over ``steps`` (see :func:`refine_ddf`).
        base_inferer: inferer that produces the start displacement (default: ``network(inputs)``).

    Example::

        >>> inferer = RefinementInferer(steps=50)
        >>> with torch.no_grad():
        ...     ddf = inferer(torch.cat([moving, fixed], dim=1), network)  # (B, 3, H, W, D), voxels
    """

    def __init__(
        self,
        steps: int = 100,
        learning_rate: float = 0.5,
        smoothness_weight: float | Callable[[torch.Tensor, nn.Module], torch.Tensor] = 4.0,
        control_spacing: int = 2,
        mind_radius: int = 1,
        mind_dilation: int = 2,
        warp_features: bool = False,
        grid_smoothing: int = 0,
        lr_decay: bool = False,
        base_inferer: Inferer | None = None,
    ) -> None:
        super().__init__()
        self.steps = _check_number("steps", steps, 0, integer=True)
        self.learning_rate = float(_check_number("learning_rate", learning_rate, 0, strict=True))
        if not callable(smoothness_weight):
            smoothness_weight = float(_check_number("smoothness_weight", smoothness_weight, 0))
        self.smoothness_weight = smoothness_weight
        self.control_spacing = _check_number("control_spacing", control_spacing, 1, integer=True)
        self.mind_radius = _check_number("mind_radius", mind_radius, 0, integer=True)
        self.mind_dilation = _check_number("mind_dilation", mind_dilation, 1, integer=True)
        self.grid_smoothing = _check_number("grid_smoothing", grid_smoothing, 0, integer=True)
        for name, flag in (("warp_features", warp_features), ("lr_decay", lr_decay)):
            if not isinstance(flag, bool):
                raise TypeError(f"Expecting {name} to be a bool, instead got {name}={flag!r} ({type(flag).__name__}).")
        self.warp_features, self.lr_decay = warp_features, lr_decay
        if base_inferer is not None and not isinstance(base_inferer, Inferer):
            raise TypeError(
                "Expecting base_inferer to be a monai.inferers.Inferer or None, "
                f"instead got {type(base_inferer).__name__}."
            )
        self.base_inferer = base_inferer

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: Callable[..., torch.Tensor],
        *args: Any,
        smoothness_weight: float | torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """
        Args:
            inputs: (B, 2, H, W, D), channel 0 the moving image, channel 1 the fixed image (H, W, D >= 3).
            network: ``(B, 2, H, W, D) -> ddf (B, 3, H, W, D)``; ``args``/``kwargs`` are passed to it (or to
                ``base_inferer``).
            smoothness_weight: this call's lambda, a number or (B,) tensor; None: the constructor's.

        Returns:
            the displacement (B, 3, H, W, D), voxel units, channel i along spatial axis i, sampled on the fixed
            grid: warped(x) = moving(x + ddf(x)); dtype and device of the network's output.

        Raises:
            TypeError, ValueError: When ``inputs`` is not a floating-point (B, 2, H, W, D) tensor, the network's
                output is not (B, 3, H, W, D), or the weight is negative or not one per pair.
        """
        _check_pair("inputs", inputs, 2)
        with torch.no_grad():
            if self.base_inferer is not None:
                ddf = self.base_inferer(inputs, network, *args, **kwargs)
            else:
                ddf = network(inputs, *args, **kwargs)
        if self.steps == 0:
            return ddf
        if smoothness_weight is None:
            weight = self.smoothness_weight
            if callable(weight):
                weight = weight(inputs, network)
        else:
            weight = smoothness_weight
        return refine_ddf(
            inputs[:, :1],
            inputs[:, 1:2],
            ddf,
            steps=self.steps,
            learning_rate=self.learning_rate,
            smoothness_weight=weight,
            control_spacing=self.control_spacing,
            mind_radius=self.mind_radius,
            mind_dilation=self.mind_dilation,
            warp_features=self.warp_features,
            grid_smoothing=self.grid_smoothing,
            lr_decay=self.lr_decay,
        )
