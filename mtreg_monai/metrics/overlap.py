"""Per-organ overlap between the warped moving and the fixed label maps: Dice and ASD (mm).

Dice and average symmetric surface distance (ASD) per label, as in Table 1 of Xu et al. (MICCAI 2022), computed
with MONAI's :func:`monai.metrics.compute_dice` and :func:`monai.metrics.compute_average_surface_distance`
(``symmetric=True``, spacing in mm); empty labels give NaN or inf with a logged warning, never silently.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import torch
from monai.metrics import compute_average_surface_distance, compute_dice

__all__ = [
    "DEFAULT_LABEL_NAMES",
    "check_label_maps",
    "check_label_names",
    "compute_label_asd",
    "compute_label_dice",
    "compute_label_overlap",
]

logger = logging.getLogger(__name__)

#: label value -> organ name of Learn2Reg AbdomenMRCT (and of the paper's Table 1).
DEFAULT_LABEL_NAMES: Mapping[int, str] = MappingProxyType(
    {1: "liver", 2: "spleen", 3: "right_kidney", 4: "left_kidney"}
)
_NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")


def check_label_names(label_names: Any) -> dict[int, str]:
    """Check a ``label_names`` mapping (label value -> name) and return it as a plain ``dict``.

    Args:
        label_names: a non-empty mapping of int label values to names of letters, digits and ``_`` other than
            ``"mean"`` (the names become column names such as ``dice_<name>``), all different.

    Returns:
        ``{value: name}``, in the order of ``label_names``.

    Raises:
        TypeError: when ``label_names`` is not a non-empty mapping, or a key is not an int.
        ValueError: when a name is not of that form, or two names are equal.
    """
    if not isinstance(label_names, Mapping) or len(label_names) == 0:
        raise TypeError(f"label_names must be a non-empty mapping label value -> name, got {label_names!r}.")
    out: dict[int, str] = {}
    for value, name in label_names.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"label_names keys must be int label values, got {value!r} ({type(value).__name__}).")
        if not isinstance(name, str) or not _NAME_RE.match(name) or name == "mean":
            raise ValueError(
                f"label_names[{value}] must be a name of letters, digits and '_' other than 'mean' "
                f"(it becomes a column name such as 'dice_<name>'), got {name!r}."
            )
        out[value] = name
    if len(set(out.values())) != len(out):
        raise ValueError(f"label_names must have unique names, got {list(out.values())}.")
    return out


def _check_spacing(spacing: Any, spatial_dims: int) -> tuple[float, ...]:
    if isinstance(spacing, torch.Tensor) or hasattr(spacing, "tolist"):  # tensors, numpy arrays and scalars
        spacing = spacing.tolist()
    if isinstance(spacing, numbers.Real) and not isinstance(spacing, bool):
        values: tuple[float, ...] = (float(spacing),) * spatial_dims
    elif isinstance(spacing, Sequence) and not isinstance(spacing, str):
        if not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in spacing):
            raise TypeError(f"spacing must hold numbers (mm), got {spacing!r}.")
        values = tuple(float(s) for s in spacing)
        if len(values) != spatial_dims:
            raise ValueError(
                f"spacing must have {spatial_dims} values (mm, one per spatial axis), got {len(values)}: {spacing}."
            )
    else:
        raise TypeError(f"spacing must be a number or a sequence of numbers (mm), got {type(spacing).__name__}.")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be finite and positive (mm), got {values}.")
    return values


def _check_label_map(x: Any, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor label map, got {type(x).__name__}.")
    if x.is_complex():
        raise TypeError(f"{name} must hold integer label values, got dtype {x.dtype}.")
    if x.ndim not in (4, 5) or x.shape[1] != 1:
        raise ValueError(f"{name} must be a label map of shape (B, 1, H, W, D) or (B, 1, H, W), got {tuple(x.shape)}.")
    if x.is_floating_point():
        bad = ~torch.isfinite(x) | (x != torch.round(x))
        if bool(bad.any()):
            raise ValueError(
                f"{name} must hold integer label values (warp labels with mode='nearest'), "
                f"got non-integer value {x[bad].flatten()[0].item()}."
            )


def check_label_maps(warped_label: Any, fixed_label: Any) -> None:
    """Check a pair of label maps: tensors of the same shape ``(B, 1, H, W, D)`` or ``(B, 1, H, W)``, whole numbers.

    Args:
        warped_label: the moving label map warped to the fixed grid.
        fixed_label: the fixed label map.

    Raises:
        TypeError: when a map is not a real tensor.
        ValueError: when a map is not of such a shape, the shapes differ, or a value is not a whole number.
    """
    _check_label_map(warped_label, "warped_label")
    _check_label_map(fixed_label, "fixed_label")
    if warped_label.shape != fixed_label.shape:
        raise ValueError(
            "warped_label and fixed_label must have the same shape, "
            f"got {tuple(warped_label.shape)} and {tuple(fixed_label.shape)}."
        )


def _overlap(
    warped_label: torch.Tensor,
    fixed_label: torch.Tensor,
    label_names: Mapping[int, str],
    spacing: Any,
    want_dice: bool,
    want_asd: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Checked inputs -> (dice (B, L), asd (B, L)); one logged warning per label and kind of emptiness."""
    check_label_maps(warped_label, fixed_label)
    names = check_label_names(label_names)
    spatial_dims = warped_label.ndim - 2
    spacing_t = _check_spacing(spacing, spatial_dims)
    fixed_label = fixed_label.to(warped_label.device)
    pred = torch.cat([warped_label == v for v in names], dim=1)  # (B, L, *spatial) bool
    gt = torch.cat([fixed_label == v for v in names], dim=1)
    pred_any = pred.flatten(2).any(-1)
    gt_any = gt.flatten(2).any(-1)
    both_empty = ~pred_any & ~gt_any
    one_empty = pred_any ^ gt_any

    dice = asd = None
    if want_dice:
        # ignore_empty=False: 0 when exactly one map has the label (2|A n B| / (|A| + |B|) = 0)
        dice = compute_dice(pred, gt, include_background=True, ignore_empty=False).float()
        dice = torch.where(both_empty, torch.full_like(dice, float("nan")), dice)
    if want_asd:
        asd = torch.full(pred.shape[:2], float("nan"), dtype=torch.float32, device=pred.device)
        asd[one_empty] = float("inf")
        with warnings.catch_warnings():
            # MONAI 1.5-1.6 passes its own deprecated `always_return_as_numpy` argument internally
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            for b, c in (pred_any & gt_any).nonzero().tolist():
                asd[b, c] = compute_average_surface_distance(
                    pred[b : b + 1, c : c + 1],
                    gt[b : b + 1, c : c + 1],
                    include_background=True,
                    symmetric=True,
                    spacing=spacing_t,
                )[0, 0]

    nan_what = " and ".join(k for k, want in (("dice", want_dice), ("asd", want_asd)) if want) + " NaN"
    one_what = " and ".join(k for k, want in (("dice 0", want_dice), ("asd inf", want_asd)) if want)
    for c, (value, name) in enumerate(names.items()):
        cases = [
            (both_empty[:, c], "warped_label nor fixed_label", nan_what),
            (one_empty[:, c] & ~pred_any[:, c], "warped_label (fixed_label has some)", one_what),
            (one_empty[:, c] & ~gt_any[:, c], "fixed_label (warped_label has some)", one_what),
        ]
        for flags, where, result in cases:
            items = flags.nonzero().flatten().tolist()
            if items:
                logger.warning(
                    "no foreground for label %d (%r) in %s, batch item(s) %s: %s.", value, name, where, items, result
                )
    return dice, asd


def compute_label_dice(
    warped_label: torch.Tensor, fixed_label: torch.Tensor, label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES
) -> torch.Tensor:
    """Dice per label between the warped moving label map and the fixed label map (MONAI ``compute_dice``).

    Args:
        warped_label: warped moving label map ``(B, 1, H, W, D)`` (or ``(B, 1, H, W)``), integer values (any
            dtype holding whole numbers; warp labels with ``mode="nearest"``).
        fixed_label: fixed label map of the same shape.
        label_names: label value -> name; one output column per entry, in this order.  Values absent from
            ``label_names`` (background included) are ignored.

    Returns:
        ``(B, L)`` Dice in [0, 1], float32.  A label with no foreground in either map is NaN (logged warning
        "no foreground ..."); a label present in only one map is 0 (also warned).

    Raises:
        TypeError: when a label map is not a tensor, or ``label_names`` is not a mapping of int -> str.
        ValueError: when the shapes differ or are not ``(B, 1, ...)``, or label values are not integers.
    """
    return _overlap(warped_label, fixed_label, label_names, 1.0, want_dice=True, want_asd=False)[0]  # type: ignore


def compute_label_asd(
    warped_label: torch.Tensor,
    fixed_label: torch.Tensor,
    label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
    spacing: float | Sequence[float] = 1.0,
) -> torch.Tensor:
    """Average symmetric surface distance (mm) per label (MONAI ``compute_average_surface_distance``).

    The surface of a mask is its foreground voxels with a background face-neighbour; ASD is the mean, over the
    surface voxels of both masks, of the Euclidean distance (scaled by ``spacing``) to the nearest surface
    voxel of the other mask.

    Args:
        warped_label: warped moving label map ``(B, 1, H, W, D)`` (or ``(B, 1, H, W)``), integer values.
        fixed_label: fixed label map of the same shape.
        label_names: label value -> name; one output column per entry, in this order.
        spacing: voxel size in mm, one number or one per spatial axis (axis order of the arrays).

    Returns:
        ``(B, L)`` ASD in mm, float32.  NaN for a label with no foreground in either map, ``inf`` for a label
        present in only one map; both with a logged warning ("no foreground ...").

    Raises:
        TypeError: when a label map is not a tensor, or ``label_names``/``spacing`` have the wrong type.
        ValueError: when the shapes differ, label values are not integers, or ``spacing`` has the wrong length
            or a non-positive value.
    """
    return _overlap(warped_label, fixed_label, label_names, spacing, want_dice=False, want_asd=True)[1]  # type: ignore


def compute_label_overlap(
    warped_label: torch.Tensor,
    fixed_label: torch.Tensor,
    label_names: Mapping[int, str] = DEFAULT_LABEL_NAMES,
    spacing: float | Sequence[float] = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and ASD (mm) per label in one pass: :func:`compute_label_dice` and :func:`compute_label_asd` together.

    The masks are built and checked once, and each empty label is warned about once for both figures.

    Args:
        warped_label: warped moving label map ``(B, 1, H, W, D)`` (or ``(B, 1, H, W)``), integer values.
        fixed_label: fixed label map of the same shape.
        label_names: label value -> name; one output column per entry, in this order.
        spacing: voxel size in mm, one number or one per spatial axis (used by the ASD).

    Returns:
        ``(dice, asd)``, each ``(B, L)`` float32, with the NaN / 0 / ``inf`` conventions of the two functions.

    Raises:
        TypeError, ValueError: as :func:`compute_label_dice` and :func:`compute_label_asd`.
    """
    dice, asd = _overlap(warped_label, fixed_label, label_names, spacing, want_dice=True, want_asd=True)
    return dice, asd  # type: ignore[return-value]
