"""MIND-SSC descriptor and the MIND-SSC image dissimilarity loss.

Heinrich et al., "Towards realtime multimodal fusion for image-guided interventions using
self-similarities", MICCAI 2013 (MIND-SSC, the self-similarity context variant of MIND,
Heinrich et al., MedIA 2012). The descriptor equals the PyTorch one used by ConvexAdam,
TransMorph and uniGradICON (``MINDSSC(img, radius, dilation)``), channel order included, up
to float rounding; the differences (per-sample normalisation, the constant-image guard) are
listed in :func:`mind_ssc`.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from monai.utils import LossReduction
from torch.autograd.function import once_differentiable
from torch.nn.modules.loss import _Loss

from mtreg_monai.losses.utils import check_reduction, reduce_loss

__all__ = ["MIND_SSC_CHANNELS", "mind_ssc", "MINDSSCLoss"]

#: number of channels of the MIND-SSC descriptor.
MIND_SSC_CHANNELS = 12

# The 12 pairs (a, b) of face neighbours at squared distance 2, as voxel offsets along
# (axis 0, axis 1, axis 2), in the channel order of the reference implementation (which
# permutes its channels "to have the same ordering as the C++ code").
# fmt: off
_PAIRS = (
    ((1, 0, 0), (0, -1, 0)), ((0, 1, 0), (-1, 0, 0)), ((0, -1, 0), (-1, 0, 0)), ((0, 1, 0), (1, 0, 0)),
    ((0, -1, 0), (0, 0, -1)), ((0, 1, 0), (0, 0, 1)), ((0, 0, -1), (-1, 0, 0)), ((1, 0, 0), (0, 0, 1)),
    ((0, 1, 0), (0, 0, -1)), ((0, 0, 1), (0, -1, 0)), ((1, 0, 0), (0, 0, -1)), ((0, 0, 1), (-1, 0, 0)),
)
# fmt: on


def _directions() -> tuple[tuple[tuple[int, ...], tuple[tuple[int, tuple[int, ...]], ...]], ...]:
    """Group the 12 pairs by their difference vector b - a (up to sign): 6 groups of 2.

    Returns, per group, the direction ``w`` and per channel ``(c, base)`` such that
    ``(I(x + d a) - I(x + d b))**2 == E_w(x + d base)`` with ``E_w(p) = (I(p) - I(p + d w))**2``.
    """
    groups: dict[tuple[int, ...], list[tuple[int, tuple[int, ...]]]] = {}
    for c, (a, b) in enumerate(_PAIRS):
        v = tuple(bi - ai for ai, bi in zip(a, b))
        neg = tuple(-vi for vi in v)
        if neg in groups:
            groups[neg].append((c, b))  # (I(x+da) - I(x+db))**2 = E_{-v}(x + d b)
        else:
            groups.setdefault(v, []).append((c, a))
    return tuple((w, tuple(chans)) for w, chans in groups.items())


_GROUPS = _directions()


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expecting {name} to be an int, instead got {name}={value!r} of type {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"Expecting {name} >= {minimum}, instead got {name}={value}.")
    return value


def _check_image(name: str, image: object) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"Expecting {name} to be a torch.Tensor, instead got {type(image).__name__}.")
    if image.ndim != 5:
        raise ValueError(
            f"Expecting 5-d {name} of shape (B, 1, H, W, D) (only 3-D images are supported), "
            f"instead got {name} of shape {tuple(image.shape)}."
        )
    if image.shape[1] != 1:
        raise ValueError(f"Expecting {name} with 1 channel, instead got {name} of shape {tuple(image.shape)}.")
    if image.numel() == 0:
        raise ValueError(f"Expecting a non-empty {name}, instead got {name} of shape {tuple(image.shape)}.")
    if image.is_complex():
        raise TypeError(f"Expecting a real-valued {name}, instead got dtype {image.dtype}.")
    return image


def _pad_axis(x: torch.Tensor, axis: int, before: int, after: int, mode: str) -> torch.Tensor:
    """Pad one spatial axis (2, 3 or 4) of a 5-d tensor."""
    pad = [0] * 6
    pad[2 * (4 - axis)], pad[2 * (4 - axis) + 1] = before, after
    return F.pad(x, pad, mode=mode)


def _window_sum(padded: torch.Tensor, axis: int, radius: int) -> torch.Tensor:
    """Sum of 2r+1 consecutive entries along ``axis`` of a tensor already padded by r there (valid part)."""
    n = padded.shape[axis] - 2 * radius
    out = padded.narrow(axis, 0, n) + padded.narrow(axis, 1, n)
    for s in range(2, 2 * radius + 1):
        out.add_(padded.narrow(axis, s, n))
    return out


def _box_sum(padded0: torch.Tensor, radius: int) -> torch.Tensor:
    """Sum over a (2r+1)^3 box of a replicate-padded tensor, one axis at a time (shifted-slice adds).

    ``padded0`` is already replicate-padded by r along axis 2 (the first spatial axis); the other
    two axes are padded here. The 1 / (2r+1)^3 of a mean is left out: MIND is invariant to it.
    """
    x = _window_sum(padded0, 2, radius)
    for axis in (3, 4):
        x = _window_sum(_pad_axis(x, axis, radius, radius, "replicate"), axis, radius)
    return x


def _fold(g: torch.Tensor, axis: int, pad: int) -> torch.Tensor:
    """Adjoint of replicate-padding ``axis`` by ``pad``: add the border back onto the edge voxels."""
    n = g.shape[axis] - 2 * pad
    mid = g.narrow(axis, pad, n)
    mid.narrow(axis, 0, 1).add_(g.narrow(axis, 0, pad).sum(axis, keepdim=True))
    mid.narrow(axis, n - 1, 1).add_(g.narrow(axis, n + pad, pad).sum(axis, keepdim=True))
    return mid


def _box_sum_adjoint(g: torch.Tensor, radius: int) -> torch.Tensor:
    """Adjoint of :func:`_box_sum` followed by the removal of the axis-2 padding (returns the unpadded shape)."""
    k = 2 * radius + 1
    for axis in (4, 3, 2):
        n = g.shape[axis]
        size = list(g.shape)
        size[axis] = n + 2 * radius
        full = g.new_zeros(size)
        for s in range(k):  # adjoint of the window sum: scatter each output to its k inputs
            full.narrow(axis, s, n).add_(g)
        g = _fold(full, axis, radius)
    return g


def _region(p: torch.Tensor, start: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
    return p[:, :, start[0] : start[0] + size[0], start[1] : start[1] + size[1], start[2] : start[2] + size[2]]


def _geometry(shape: tuple[int, ...], dilation: int) -> list:
    """Per direction group: (shift d*w, region start and size in the padded image, [(channel, offset)])."""
    d = dilation
    out = []
    for w, chans in _GROUPS:
        starts = [tuple(d * (bk + 1) for bk in base) for _, base in chans]  # in padded coordinates
        lo = tuple(min(s[k] for s in starts) for k in range(3))
        size = tuple(max(s[k] for s in starts) - lo[k] + shape[k] for k in range(3))
        shift = tuple(lo[k] + d * w[k] for k in range(3))
        offsets = [(c, tuple(s[k] - lo[k] for k in range(3))) for (c, _), s in zip(chans, starts)]
        out.append((lo, shift, size, offsets))
    return out


def _mind_forward(x: torch.Tensor, radius: int, dilation: int, need_backward: bool) -> tuple:
    """Descriptor of ``x`` (B, 1, H, W, D) without autograd; also returns what the backward needs."""
    shape = tuple(x.shape[2:])
    n0, r = shape[0], radius
    padded = F.pad(x, (dilation,) * 6, mode="replicate")
    # the 12 squared-difference maps, replicate-padded by r along the first spatial axis for the box sum
    sq = x.new_empty((x.shape[0], MIND_SSC_CHANNELS, n0 + 2 * r, *shape[1:]))
    for lo, shift, size, offsets in _geometry(shape, dilation):
        e = _region(padded, lo, size) - _region(padded, shift, size)  # one direction map E_w
        e.mul_(e)
        for c, off in offsets:  # each pair map is a shifted window of E_w
            window = _region(e, off, shape)
            sq[:, c : c + 1, r : r + n0].copy_(window)
            if r > 0:
                sq[:, c : c + 1, :r].copy_(window[:, :, :1])
                sq[:, c : c + 1, r + n0 :].copy_(window[:, :, -1:])
    ssd = _box_sum(sq, r) if r > 0 else sq
    del sq
    if need_backward:
        min_ssd, argmin = torch.min(ssd, dim=1, keepdim=True)
    else:
        min_ssd, argmin = ssd.amin(dim=1, keepdim=True), None
    mind = ssd.sub_(min_ssd)
    var = mind.mean(dim=1, keepdim=True)
    global_mean = var.mean(dim=(2, 3, 4), keepdim=True)  # per sample
    low, high = global_mean * 0.001, global_mean * 1000.0
    clamped = torch.minimum(torch.maximum(var, low), high)
    # guard: clamped == 0 only where all 12 SSDs of a voxel are equal and the sample's global mean
    # is 0 (a constant image); there mind == 0: the reference divides 0 / 0, here the divisor is 1.
    nonzero = clamped > 0
    passes = (var >= low) & (var <= high) & nonzero  # where the gradient reaches var
    neg_inv_var = torch.where(nonzero, clamped, torch.ones_like(clamped)).reciprocal_().neg_()
    out = mind.mul_(neg_inv_var).exp_()
    return out, padded, neg_inv_var, passes, argmin


class _MINDSSCFunction(torch.autograd.Function):
    """The descriptor with a hand-written backward (less memory and time than autograd's graph)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, radius: int, dilation: int) -> torch.Tensor:  # type: ignore[override]
        out, padded, neg_inv_var, passes, argmin = _mind_forward(x, radius, dilation, need_backward=True)
        ctx.radius, ctx.dilation = radius, dilation
        ctx.save_for_backward(out, padded, neg_inv_var, passes, argmin)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        out, padded, neg_inv_var, passes, argmin = ctx.saved_tensors
        radius, dilation = ctx.radius, ctx.dilation
        shape = tuple(out.shape[2:])
        # out_c = exp(-z_c), z_c = mind_c / var, so z_c = -log(out_c) and
        # dL/dmind_c = -grad_c out_c / var + [var not clamped] / 12 * sum_k grad_k out_k z_k / var
        grad_out = grad * out
        # log(max(out, tiny)): finite where out underflowed to 0, and there grad_out == 0
        log_out = out.clamp_min(torch.finfo(out.dtype).tiny).log_()
        grad_var = log_out.mul_(grad_out).sum(dim=1, keepdim=True).mul_(neg_inv_var)
        del log_out
        grad_var = torch.where(passes, grad_var, torch.zeros_like(grad_var)).div_(MIND_SSC_CHANNELS)
        grad_mind = grad_out.mul_(neg_inv_var).add_(grad_var)
        # mind = ssd - min_c ssd: the channel of the minimum also receives minus the channel sum
        grad_mind.scatter_add_(1, argmin, grad_mind.sum(dim=1, keepdim=True).neg_())
        grad_sq = _box_sum_adjoint(grad_mind, radius) if radius > 0 else grad_mind
        del grad_mind, grad_out
        grad_padded = torch.zeros_like(padded)
        for lo, shift, size, offsets in _geometry(shape, dilation):
            grad_e = grad_sq.new_zeros((grad_sq.shape[0], 1, *size))
            for c, off in offsets:
                _region(grad_e, off, shape).add_(grad_sq[:, c : c + 1])
            # E_w = (P[lo] - P[shift])**2
            grad_e.mul_(_region(padded, lo, size) - _region(padded, shift, size)).mul_(2.0)
            _region(grad_padded, lo, size).add_(grad_e)
            _region(grad_padded, shift, size).sub_(grad_e)
        for axis in (2, 3, 4):
            grad_padded = _fold(grad_padded, axis, dilation)
        return grad_padded.contiguous(), None, None


def mind_ssc(image: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """MIND-SSC descriptor of a 3-D image (Heinrich et al., MICCAI 2013).

    For each voxel x, the 6 face neighbours x + d*n (d = ``dilation``) form 12 pairs (a, b) at
    squared distance 2 (in units of d). Per pair, the patch distance
    ``SSD_ab(x) = mean over a (2r+1)^3 box around x of (I(. + d a) - I(. + d b))**2``
    (r = ``radius``, image and SSD maps replicate-padded at the border) gives
    ``MIND_ab(x) = exp(-(SSD_ab(x) - min_ab SSD(x)) / V(x))`` where V(x) is the mean over the 12
    channels of ``SSD - min SSD``, clamped to [0.001 m, 1000 m], m its mean over the sample's
    voxels. Values lie in (0, 1]; the channel order is that of the reference implementation.

    Differences from the reference implementation (``MINDSSC`` in ConvexAdam/TransMorph):

    - m is computed per sample (the reference takes it over the whole batch, so a sample's
      descriptor depends on the other samples); with B = 1 the two agree.
    - Guard: where V(x) = 0 after clamping (only possible when m = 0, i.e. all 12 SSDs are
      equal everywhere, e.g. a constant image), the reference computes 0 / 0 = NaN; here V is
      replaced by 1, so the descriptor there is exp(0) = 1 and the gradient is finite (zero).
    - Distances are computed in float32 (float64 inputs stay float64), with autocast disabled,
      so the descriptor is float32 under AMP and for float16/bfloat16/integer inputs.

    Invariance: exactly (up to float rounding) invariant to ``a * I + b`` for any a != 0: the
    SSDs scale by a**2 (the sign of a cancels in the squared differences), and so do V and m.
    A very large offset b costs float precision (``I + b`` is rounded before differencing). Each sample is centred
    and scaled to [-1, 1] first (exact by this invariance), so extreme intensity scales stay finite.

    Args:
        image: image of shape (B, 1, H, W, D), any real dtype. 2-D images are not supported.
        radius: half size r of the box filter (patch of (2r+1)^3 voxels), r >= 0.
        dilation: distance d in voxels from a voxel to its 6 neighbours, d >= 1.

    Returns:
        descriptor of shape (B, 12, H, W, D), on ``image``'s device; float64 for float64 input,
        float32 otherwise. Differentiable with respect to ``image`` (first order).

    Raises:
        TypeError: When ``image`` is not a real-valued tensor, or ``radius``/``dilation`` is not an int.
        ValueError: When ``image`` is not of shape (B, 1, H, W, D) with B, H, W, D > 0.
        ValueError: When ``radius`` < 0 or ``dilation`` < 1.

    Example::

        >>> img = torch.rand(1, 1, 32, 32, 32)
        >>> mind_ssc(img).shape
        torch.Size([1, 12, 32, 32, 32])
    """
    _check_image("image", image)
    _check_int("radius", radius, 0)
    _check_int("dilation", dilation, 1)
    dtype = torch.float64 if image.dtype == torch.float64 else torch.float32
    device_type = image.device.type
    no_autocast = (
        torch.autocast(device_type=device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else contextlib.nullcontext()
    )
    with no_autocast:
        x = image.to(dtype)
        # Per-sample centring and scaling, exact by the descriptor's invariance to a * I + b (the statistics are
        # detached: d MIND(x / s) / dx with s constant equals d MIND(x) / dx). It keeps the squared differences
        # inside the float range at extreme intensity scales (unscaled, float32 gave NaN for images ~1e19 or ~1e-20).
        stats_dims = tuple(range(1, x.ndim))
        centre = x.detach().mean(dim=stats_dims, keepdim=True)
        scale = (x.detach() - centre).abs().amax(dim=stats_dims, keepdim=True)
        x = (x - centre) / torch.where(scale > 0, scale, torch.ones_like(scale))
        if torch.is_grad_enabled() and x.requires_grad:
            return _MINDSSCFunction.apply(x, radius, dilation)
        with torch.no_grad():
            return _mind_forward(x, radius, dilation, need_backward=False)[0]


class MINDSSCLoss(_Loss):
    """MIND-SSC image dissimilarity: mean squared difference of the two images' MIND-SSC descriptors.

    Heinrich et al., MICCAI 2013; the modality-independent similarity term the paper (Xu et al.,
    MICCAI 2022) uses for CT-MR registration. See :func:`mind_ssc` for the descriptor, its
    robustness guard and its invariances. The loss is 0 for identical images, up to 1, and
    symmetric in ``pred`` and ``target``.

    The fixed image never changes during training, so its descriptor can be computed once
    (without gradient) with :meth:`descriptor` and passed to :meth:`forward_descriptors`.

    Args:
        radius: half size r of the patch box filter ((2r+1)^3 voxels), r >= 0. Defaults to 2.
        dilation: neighbour distance d in voxels, d >= 1. Defaults to 2.
        reduction: {``"none"``, ``"mean"``, ``"sum"``}. Defaults to ``"mean"``.

            - ``"none"``: the per-voxel, per-channel squared differences, shape (B, 12, H, W, D).
            - ``"mean"``: their mean (the reference implementation's loss).
            - ``"sum"``: their sum.

    Example::

        >>> loss = MINDSSCLoss()
        >>> moving_warped, fixed = torch.rand(2, 1, 1, 32, 32, 32)
        >>> loss(moving_warped, fixed)  # scalar
        >>> fixed_mind = loss.descriptor(fixed)  # once
        >>> loss.forward_descriptors(loss.descriptor(moving_warped), fixed_mind)  # same value
    """

    def __init__(self, radius: int = 2, dilation: int = 2, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=check_reduction(reduction))
        self.radius = _check_int("radius", radius, 0)
        self.dilation = _check_int("dilation", dilation, 1)

    def descriptor(self, image: torch.Tensor) -> torch.Tensor:
        """MIND-SSC descriptor (B, 12, H, W, D) of ``image`` (B, 1, H, W, D) with this loss's parameters."""
        return mind_ssc(image, radius=self.radius, dilation=self.dilation)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pred: image of shape (B, 1, H, W, D), e.g. the warped moving image.
            target: image of the same shape, e.g. the fixed image.

        Returns:
            the reduced loss (a scalar for ``"mean"``/``"sum"``, (B, 12, H, W, D) for ``"none"``),
            float32 (float64 if an input is float64).

        Raises:
            TypeError: When ``pred`` or ``target`` is not a real-valued tensor.
            ValueError: When ``pred`` is not of shape (B, 1, H, W, D) or ``target``'s shape differs from it.
        """
        _check_image("pred", pred)
        _check_image("target", target)
        if pred.shape != target.shape:
            raise ValueError(
                f"Expecting pred and target of the same shape, instead got pred of shape {tuple(pred.shape)} "
                f"and target of shape {tuple(target.shape)}."
            )
        return self.forward_descriptors(self.descriptor(pred), self.descriptor(target))

    def forward_descriptors(self, pred_descriptor: torch.Tensor, target_descriptor: torch.Tensor) -> torch.Tensor:
        """The loss from precomputed descriptors (from :meth:`descriptor` or :func:`mind_ssc` with the same parameters).

        Args:
            pred_descriptor: descriptor of shape (B, 12, H, W, D).
            target_descriptor: descriptor of the same shape.

        Returns:
            the reduced loss, as :meth:`forward`.

        Raises:
            TypeError: When a descriptor is not a tensor.
            ValueError: When a descriptor is not of shape (B, 12, H, W, D) or the shapes differ.
        """
        for name, desc in (("pred_descriptor", pred_descriptor), ("target_descriptor", target_descriptor)):
            if not isinstance(desc, torch.Tensor):
                raise TypeError(f"Expecting {name} to be a torch.Tensor, instead got {type(desc).__name__}.")
            if desc.ndim != 5 or desc.shape[1] != MIND_SSC_CHANNELS:
                raise ValueError(
                    f"Expecting {name} of shape (B, {MIND_SSC_CHANNELS}, H, W, D), instead got {tuple(desc.shape)}."
                )
        if pred_descriptor.shape != target_descriptor.shape:
            raise ValueError(
                f"Expecting pred_descriptor and target_descriptor of the same shape, instead got "
                f"{tuple(pred_descriptor.shape)} and {tuple(target_descriptor.shape)}."
            )
        return reduce_loss((pred_descriptor - target_descriptor).square(), self.reduction)
