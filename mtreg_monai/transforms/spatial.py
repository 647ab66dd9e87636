"""Put the moving image of a pair on the fixed image's voxel grid, using the affines."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection
from monai.data import MetaTensor
from monai.transforms import InvertibleTransform, MapTransform, ResampleToMatch
from monai.utils import StrEnum, TraceKeys, ensure_tuple, look_up_option

from mtreg_monai.transforms.utils import PairKeys, affine_of, describe_source

__all__ = ["OnMismatch", "spatial_shape_of", "same_geometry", "MatchPairGeometryd"]


class OnMismatch(StrEnum):
    """What :class:`MatchPairGeometryd` does when the moving grid differs from the fixed grid."""

    RESAMPLE = "resample"
    RAISE = "raise"


def spatial_shape_of(img: torch.Tensor) -> tuple[int, ...]:
    """Spatial shape ``(H, W, D)`` of a channel-first image ``(C, H, W, D)`` (the pending shape of a MetaTensor)."""
    if isinstance(img, MetaTensor):
        return tuple(int(s) for s in img.peek_pending_shape())
    return tuple(int(s) for s in img.shape[1:])


def same_geometry(fixed: torch.Tensor, moving: torch.Tensor, atol: float = 1e-3) -> bool:
    """Whether two channel-first images share their voxel grid: same spatial shape and affines within ``atol``.

    Args:
        fixed: ``(C, H, W, D)`` image; its affine maps voxel indices to world RAS coordinates in mm.
        moving: ``(C', H', W', D')`` image.
        atol: largest accepted absolute difference of any affine entry (mm for the translation column,
            mm per voxel for the 3x3 part). Plain tensors count as having the identity affine.

    Returns:
        ``True`` when the moving image can be used on the fixed grid as it is.
    """
    if spatial_shape_of(fixed) != spatial_shape_of(moving):
        return False
    return bool(torch.allclose(affine_of(fixed), affine_of(moving), rtol=0.0, atol=atol))


def _per_key(value: Any, n: int, name: str) -> tuple:
    vals = ensure_tuple(value)
    if len(vals) == 1:
        return vals * n
    if len(vals) != n:
        raise ValueError(f"{name} must be one value or one per key ({n} keys), got {value!r}.")
    return vals


class MatchPairGeometryd(MapTransform, InvertibleTransform):
    """Check that the moving image (and label) of a pair share the fixed image's grid; resample them if not.

    Two images share a grid when their spatial shapes are equal and their voxel-to-world affines agree within
    ``atol``. When they do, the moving entries pass through unchanged (no resampling, no interpolation).
    Otherwise, with ``on_mismatch="resample"``, each moving entry is resampled onto the fixed image's grid with
    MONAI's ``ResampleToMatch``, which maps voxels through the affines: different origins, spacings and axis
    orders/flips (RAS vs LPS) are handled in world coordinates, never by array order. Images use ``"bilinear"``,
    labels ``"nearest"`` (integer labels keep their dtype). With ``on_mismatch="raise"`` a ``ValueError`` names
    both keys, shapes and affines.

    The operation is invertible: ``inverse`` (or ``Invertd`` on the enclosing ``Compose``) resamples a resampled
    entry back to its original grid and leaves a passed-through entry alone.

    Args:
        keys: keys of the moving entries. Default ``("moving_image", "moving_label")``.
        fixed_key: key of the fixed image whose grid is the target. Default ``"fixed_image"``.
        mode: interpolation per key (``"bilinear"``, ``"nearest"`` or a spline order 0-5).
            Default ``("bilinear", "nearest")``.
        padding_mode: value outside the moving field of view, per key. Default ``("border", "zeros")``: an image
            repeats its border (air stays air before intensity scaling; zeros would be 0 HU in a CT), a label
            gets background.
        on_mismatch: ``"resample"`` or ``"raise"``.
        atol: tolerance on each affine entry, in mm (translation) and mm per voxel (3x3 part). Default 1e-3,
            MONAI's ``AFFINE_TOL``.
        align_corners: as in ``ResampleToMatch``. Default False.
        dtype: computation dtype of the resampling. Default float64 (MONAI's default).
        allow_missing_keys: don't raise if a moving key is missing (labels at inference).

    Example::

        match = MatchPairGeometryd(keys=("moving_image", "moving_label"), fixed_key="fixed_image")
        data = match(data)  # data["moving_image"] now has the shape and affine of data["fixed_image"]
    """

    def __init__(
        self,
        keys: KeysCollection = (PairKeys.MOVING_IMAGE.value, PairKeys.MOVING_LABEL.value),
        fixed_key: str = PairKeys.FIXED_IMAGE.value,
        mode: Sequence[str | int] | str | int = ("bilinear", "nearest"),
        padding_mode: Sequence[str] | str = ("border", "zeros"),
        on_mismatch: OnMismatch | str = OnMismatch.RESAMPLE,
        atol: float = 1e-3,
        align_corners: bool = False,
        dtype: DtypeLike = np.float64,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if fixed_key in self.keys:
            raise ValueError(f"fixed_key '{fixed_key}' must not be one of the moving keys {self.keys}.")
        if not isinstance(atol, (int, float)) or isinstance(atol, bool) or not atol >= 0:
            raise ValueError(f"atol must be a non-negative number (mm), got {atol!r}.")
        self.fixed_key = fixed_key
        self.mode = _per_key(mode, len(self.keys), "mode")
        self.padding_mode = _per_key(padding_mode, len(self.keys), "padding_mode")
        self.on_mismatch = look_up_option(str(on_mismatch).lower(), OnMismatch)
        self.atol = float(atol)
        self.align_corners = align_corners
        self.dtype = dtype
        self.resampler = ResampleToMatch()

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Resample the moving entries that are not on the fixed grid.

        Args:
            data: dictionary with channel-first ``(C, H, W, D)`` entries; ``MetaTensor`` carry the affines.

        Returns:
            the dictionary with every moving entry on the fixed grid (same spatial shape and affine).

        Raises:
            KeyError: ``fixed_key`` is missing from ``data``.
            ValueError: ``on_mismatch="raise"`` and a moving entry is on another grid.
        """
        d = dict(data)
        if self.fixed_key not in d:
            raise KeyError(f"fixed_key '{self.fixed_key}' is not in the data (keys: {list(d)}).")
        fixed = d[self.fixed_key]
        for key, mode, padding_mode in self.key_iterator(d, self.mode, self.padding_mode):
            img = d[key]
            resampled = not same_geometry(fixed, img, self.atol)
            if resampled and self.on_mismatch == OnMismatch.RAISE:
                raise ValueError(
                    f"{describe_source(img, key)} is not on the grid of {describe_source(fixed, self.fixed_key)}: "
                    f"shapes {spatial_shape_of(img)} vs {spatial_shape_of(fixed)}, affines\n"
                    f"{affine_of(img).numpy()}\nvs\n{affine_of(fixed).numpy()}\n(tolerance atol={self.atol}). "
                    "Expected the same shape and affine, or use on_mismatch='resample'."
                )
            if resampled:
                orig_dtype = img.dtype
                img = self.resampler(
                    img, img_dst=fixed, mode=mode, padding_mode=padding_mode,
                    align_corners=self.align_corners, dtype=self.dtype,
                )  # fmt: skip
                img = _restore_dtype(img, orig_dtype)
            d[key] = img
            self.push_transform(d, key, extra_info={"resampled": resampled})
        return d

    def inverse(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        """Resample each entry that ``__call__`` resampled back to its original grid.

        Args:
            data: dictionary whose moving entries carry this transform's record in their applied operations.

        Returns:
            the dictionary with those entries on their original grids.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            record = self.pop_transform(d, key)
            if record[TraceKeys.EXTRA_INFO]["resampled"]:
                dtype_before = d[key].dtype
                d[key] = _restore_dtype(self.resampler.inverse(d[key]), dtype_before)
        return d


def _restore_dtype(img: torch.Tensor, dtype: torch.dtype | np.dtype) -> torch.Tensor:
    """``ResampleToMatch`` returns float32; give integer label maps their integer dtype back."""
    t_dtype = torch.as_tensor(np.zeros(0, dtype=dtype)).dtype if isinstance(dtype, np.dtype) else dtype
    if t_dtype.is_floating_point or t_dtype == img.dtype:
        return img
    return torch.round(img).to(t_dtype)
