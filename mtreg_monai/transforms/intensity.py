"""Per-modality intensity scaling to [0, 1]: a fixed HU window for CT, robust percentiles for MR and others."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform
from monai.utils import StrEnum, ensure_tuple, look_up_option

from mtreg_monai.transforms.utility import check_finite

__all__ = [
    "Modality",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_PERCENTILES",
    "ScaleIntensityByModality",
    "ScaleIntensityByModalityd",
]

DEFAULT_CT_WINDOW: tuple[float, float] = (-200.0, 300.0)
"""Abdominal soft-tissue CT window in Hounsfield units (level 50, width 500): fat (about -100 HU) through
enhanced parenchyma and vessels (up to about 300 HU) keep contrast; air, lung and bone saturate at 0 or 1."""

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Lower and upper intensity percentiles (in %) mapped to 0 and 1 for MR and unknown modalities."""


class Modality(StrEnum):
    """Modality of an image, choosing its intensity scaling (case-insensitive strings)."""

    CT = "ct"
    MR = "mr"
    UNKNOWN = "unknown"


def _check_pair(value: Sequence[float], name: str, lo: float = -math.inf, hi: float = math.inf) -> tuple[float, float]:
    vals = ensure_tuple(value)
    if len(vals) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"{name} must be two numbers (low, high), got {value!r}.")
    a, b = float(vals[0]), float(vals[1])
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a < b <= hi):
        raise ValueError(f"{name} must satisfy {lo} <= low < high <= {hi} (finite), got {value!r}.")
    return a, b


class ScaleIntensityByModality(Transform):
    """Scale an image's intensities to [0, 1] according to its modality.

    * ``"ct"``: the HU window ``ct_window`` maps linearly to [0, 1]
      (default (-200, 300) HU, an abdominal soft-tissue window); values outside are clipped.
    * ``"mr"`` and ``"unknown"``: the ``percentiles`` (default 0.5 % and 99.5 %) of the image's own intensities
      map to 0 and 1; values outside are clipped. The result is invariant to ``a * I + b`` with ``a > 0``,
      which suits MR's arbitrary units. A constant image maps to 0.

    Non-finite voxels raise instead of spreading NaN through the percentiles and the network.
    Built on MONAI's ``ScaleIntensityRange`` and ``ScaleIntensityRangePercentiles``.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"unknown"`` (case-insensitive).
        ct_window: (low, high) in HU for CT.
        percentiles: (low, high) in %, ``0 <= low < high <= 100``, for MR and unknown.
        clip: clip to [0, 1] after scaling. Default True.
        dtype: output dtype. Default float32.

    Example::

        scale = ScaleIntensityByModality("ct")
        out = scale(torch.tensor([[[[-1000.0, -200.0, 50.0, 300.0, 1500.0]]]]))  # [0, 0, 0.5, 1, 1]
    """

    backend = ScaleIntensityRange.backend

    def __init__(
        self,
        modality: Modality | str = Modality.MR,
        ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        clip: bool = True,
        dtype: type | np.dtype | torch.dtype = np.float32,
    ) -> None:
        if not isinstance(modality, str):
            raise TypeError(f"modality must be a string such as 'ct' or 'mr', got {type(modality).__name__}.")
        self.modality = look_up_option(modality.lower(), Modality)
        self.ct_window = _check_pair(ct_window, "ct_window")
        self.percentiles = _check_pair(percentiles, "percentiles", 0.0, 100.0)
        self.clip = clip
        if self.modality == Modality.CT:
            self.scaler: Transform = ScaleIntensityRange(
                a_min=self.ct_window[0], a_max=self.ct_window[1], b_min=0.0, b_max=1.0, clip=clip, dtype=dtype
            )
        else:
            self.scaler = ScaleIntensityRangePercentiles(
                lower=self.percentiles[0], upper=self.percentiles[1], b_min=0.0, b_max=1.0, clip=clip, dtype=dtype
            )

    def __call__(self, img: NdarrayOrTensor, key: Hashable = "image") -> NdarrayOrTensor:
        """Scale one image.

        Args:
            img: image of any shape, usually ``(C, H, W, D)``; CT in HU.
            key: name used in error messages (the dictionary key when called from the dictionary version).

        Returns:
            the scaled image, same shape and type, values in [0, 1] when ``clip``.

        Raises:
            ValueError: when ``img`` has a NaN or infinite voxel (the message names ``key`` and the file).
        """
        check_finite(img, key)
        return self.scaler(img)


class ScaleIntensityByModalityd(MapTransform):
    """Dictionary version of :class:`ScaleIntensityByModality`, with a modality per key.

    Args:
        keys: keys of the images to scale.
        modality: one modality for all keys or one per key, e.g. ``("mr", "ct")`` for
            ``keys=("fixed_image", "moving_image")``.
        ct_window: (low, high) in HU for the CT keys. Default (-200, 300).
        percentiles: (low, high) in % for the MR and unknown keys. Default (0.5, 99.5).
        clip: clip to [0, 1]. Default True.
        dtype: output dtype. Default float32.
        allow_missing_keys: don't raise if a key is missing.

    Example::

        scale = ScaleIntensityByModalityd(keys=("fixed_image", "moving_image"), modality=("mr", "ct"))
    """

    backend = ScaleIntensityByModality.backend

    def __init__(
        self,
        keys: KeysCollection,
        modality: Sequence[Modality | str] | Modality | str = Modality.MR,
        ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
        percentiles: Sequence[float] = DEFAULT_PERCENTILES,
        clip: bool = True,
        dtype: type | np.dtype | torch.dtype = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        modalities = ensure_tuple(modality)
        if len(modalities) == 1:
            modalities = modalities * len(self.keys)
        if len(modalities) != len(self.keys):
            raise ValueError(
                f"modality must be one value or one per key ({len(self.keys)} keys: {self.keys}), got {modality!r}."
            )
        self.scalers = tuple(ScaleIntensityByModality(m, ct_window, percentiles, clip, dtype) for m in modalities)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Scale each key with its modality's rule.

        Raises:
            ValueError: an image has a NaN or infinite voxel (the message names the key and the file).
        """
        d = dict(data)
        for key, scaler in self.key_iterator(d, self.scalers):
            d[key] = scaler(d[key], key)
        return d
