"""Per-modality intensity scaling to [0, 1]: a fixed HU window for CT, robust percentiles for MR and others, with a
check that the scaled image still holds an image (not a constant or a saturated mask)."""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform, ScaleIntensityRange, ScaleIntensityRangePercentiles, Transform
from monai.utils import StrEnum, ensure_tuple, look_up_option

from mtreg_monai.transforms.utility import check_finite
from mtreg_monai.transforms.utils import describe_source

__all__ = [
    "Modality",
    "DEFAULT_CT_WINDOW",
    "DEFAULT_PERCENTILES",
    "DEFAULT_MIN_SPREAD",
    "DEFAULT_MAX_CLIPPED_HIGH",
    "DEFAULT_MIN_CLIPPED_LOW",
    "check_intensity_fit",
    "ScaleIntensityByModality",
    "ScaleIntensityByModalityd",
]

logger = logging.getLogger(__name__)

DEFAULT_CT_WINDOW: tuple[float, float] = (-200.0, 300.0)
"""Abdominal soft-tissue CT window in Hounsfield units (level 50, width 500): fat (about -100 HU) through
enhanced parenchyma and vessels (up to about 300 HU) keep contrast; air, lung and bone saturate at 0 or 1."""

DEFAULT_PERCENTILES: tuple[float, float] = (0.5, 99.5)
"""Lower and upper intensity percentiles (in %) mapped to 0 and 1 for MR and unknown modalities."""

DEFAULT_MIN_SPREAD: float = 0.05
"""Smallest accepted spread between the 1st and 99th percentiles of a scaled image, in its [0, 1] units (25 HU with
the default CT window). Measured on the phantom: good CT 0.53-1.0 (0.53 with a 400 mm field of view, mostly air),
good MR 0.91-0.98, MR scaled to [0, 1] declared as CT 0.0014-0.0017, a constant image 0."""

DEFAULT_MAX_CLIPPED_HIGH: float = 0.25
"""Largest accepted fraction of a CT's voxels at or above the window's upper bound. Measured on the phantom: good CT
0.2-5.7 % (bone, kidney cortex), CT stored without its rescale (+1024) 43-48 % at the bundle's field of view and 89-92 %
in a tight crop (8-9 % with a 400 mm field of view, mostly air: see :data:`DEFAULT_MIN_CLIPPED_LOW`)."""

DEFAULT_MIN_CLIPPED_LOW: float = 0.01
"""Below this fraction of a CT's voxels at or under the window's lower bound (no air, lung, bowel gas), a warning is
logged, not an error: a crop inside the body is legitimate. Measured on the phantom: good CT 14-95 %, CT stored
without its rescale and MR declared as CT 0 %."""


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


def _check_fraction(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


_MAX_SAMPLE = 2**18
"""Statistics of larger images are taken on evenly strided voxels (about 0.05 s for a 192x160x192 image)."""


def _sample(img: NdarrayOrTensor) -> torch.Tensor:
    """At most ``_MAX_SAMPLE`` evenly strided voxels of an image, flattened, float32."""
    t = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
    flat = t.detach().reshape(-1)
    step = -(-flat.numel() // _MAX_SAMPLE)
    return flat[::step].float().contiguous()


def _order_stats(flat: torch.Tensor, fractions: Sequence[float]) -> list[float]:
    """Order statistics of a 1-d float tensor at the given fractions (0..1), by ``kthvalue``."""
    n = flat.numel()
    return [float(flat.kthvalue(min(n, int(q * (n - 1)) + 1)).values) for q in fractions]


def _seen(raw: torch.Tensor, unit: str) -> str:
    lo, p1, p99, hi = _order_stats(raw, (0.0, 0.01, 0.99, 1.0))
    return f"intensities seen: min {lo:.4g}, 1st percentile {p1:.4g}, 99th percentile {p99:.4g}, max {hi:.4g}{unit}"


def _declare(option: str | None, value: str) -> str:
    if option is None:
        return f"declare its modality as '{value}'"
    dashed = option.replace("_", "-")
    return f"declare its modality: `--{option} {value}` (bundle), `--{dashed} {value}` (mtreg-register)"


def check_intensity_fit(
    raw: NdarrayOrTensor,
    scaled: NdarrayOrTensor,
    key: Hashable,
    modality: Modality | str,
    ct_window: Sequence[float] = DEFAULT_CT_WINDOW,
    min_spread: float = DEFAULT_MIN_SPREAD,
    max_clipped_high: float = DEFAULT_MAX_CLIPPED_HIGH,
    min_clipped_low: float = DEFAULT_MIN_CLIPPED_LOW,
    modality_option: str | None = None,
) -> None:
    """Check that an image still holds an image after its modality's scaling to [0, 1].

    Rules (thresholds measured on the phantom, see the ``DEFAULT_*`` constants and ``docs/transforms.md``):

    * any modality: the 1st-99th percentile spread of ``scaled`` is below ``min_spread`` -> ``ValueError``
      (a (nearly) constant image: MR in [0, 1] declared as CT becomes 0.400-0.402; a blank volume);
    * CT: more than ``max_clipped_high`` of the voxels at or above the window's upper bound -> ``ValueError``
      (the body saturated: CT stored without its rescale, air at about 0 instead of -1024 HU, or MR declared as CT);
    * CT: fewer than ``min_clipped_low`` of the voxels at or below the window's lower bound -> a logged warning
      (no air, lung or gas: expected for a crop inside the body, else the same two mistakes).

    Each message names ``key`` and the file (from the ``MetaTensor``'s ``filename_or_obj``), the declared
    modality, the intensities seen (min, 1st and 99th percentiles, max of ``raw``) and the fix. Images of more than
    2^18 voxels are measured on 2^18 evenly strided voxels.

    Args:
        raw: the image before scaling (CT in HU), any shape, usually ``(C, H, W, D)``; finite.
        scaled: the same image after scaling, same shape.
        key: its dictionary key, named in the messages.
        modality: the declared modality, ``"ct"``, ``"mr"`` or ``"unknown"``.
        ct_window: (low, high) HU window that scaled a CT.
        min_spread: smallest accepted 1st-99th percentile spread of ``scaled``; 0 disables the rule.
        max_clipped_high: largest accepted fraction of a CT's voxels at or above the window's top; 1 disables it.
        min_clipped_low: warn below this fraction of a CT's voxels at or below the window's bottom; 0 disables it.
        modality_option: the option that declares this image's modality (``"moving_modality"``), named in the fix.

    Raises:
        ValueError: a (nearly) constant scaled image, or a CT mostly above its window.
    """
    modality = look_up_option(str(modality).lower(), Modality)
    src = describe_source(raw, key)
    s, r = _sample(scaled), _sample(raw)
    if s.numel() == 0:
        return
    p1, p99 = _order_stats(s, (0.01, 0.99))
    spread = p99 - p1
    lo_hu, hi_hu = float(ct_window[0]), float(ct_window[1])
    if modality == Modality.CT:
        unit, how = " HU", f"scaled as CT with ct_window ({lo_hu:g}, {hi_hu:g}) HU"
    else:
        unit, how = "", f"scaled as {modality.value.upper()} between its intensity percentiles"
    if spread < min_spread:
        if modality == Modality.CT:
            fix = (
                "If it is not a CT in Hounsfield units (for example MR scaled to [0, 1]), "
                f"{_declare(modality_option, 'mr')} (or 'unknown'); if it is a CT, check its units or set ct_window "
                "to cover its intensities."
            )
        else:
            fix = "Check the file: it looks blank (an empty volume, a mask or a failed conversion)."
        raise ValueError(
            f"{src}, declared as {modality.value.upper()}, is (nearly) constant once {how}: 98 % of its voxels lie "
            f"within {spread:.4g} of the [0, 1] output (less than min_spread={min_spread:g}); {_seen(r, unit)}. "
            f"Registering a constant image is never useful. {fix}"
        )
    if modality != Modality.CT:
        return
    n = s.numel()
    frac_high = float((s >= 1.0).sum()) / n
    frac_low = float((s <= 0.0).sum()) / n
    if frac_high > max_clipped_high:
        raise ValueError(
            f"{src}, declared as CT, has {frac_high:.1%} of its voxels at or above the CT window's upper bound "
            f"{hi_hu:g} HU (more than max_clipped_high={max_clipped_high:g}) and {frac_low:.1%} at or below its lower "
            f"bound {lo_hu:g} HU; {_seen(r, unit)}. Scaled to [0, 1] the body is saturated. This is what a CT stored "
            "without its rescale (air at about 0 instead of -1024 HU) or another modality declared as CT looks like. "
            "Fix: convert the CT to Hounsfield units (apply the DICOM rescale slope/intercept, or subtract 1024); "
            f"if it is not CT, {_declare(modality_option, 'mr')}; if its intensities are right, set ct_window to "
            "cover them or raise max_clipped_high."
        )
    if frac_low < min_clipped_low:
        logger.warning(
            f"{src}, declared as CT, has only {frac_low:.1%} of its voxels at or below the CT window's lower bound "
            f"{lo_hu:g} HU (less than min_clipped_low={min_clipped_low:g}): no air, lung or bowel gas; "
            f"{_seen(r, unit)}. Expected for a crop inside the body; otherwise the CT may lack its rescale "
            f"(air at about 0 instead of -1024 HU: subtract 1024) or not be CT ({_declare(modality_option, 'mr')})."
        )


class ScaleIntensityByModality(Transform):
    """Scale an image's intensities to [0, 1] according to its modality.

    * ``"ct"``: the HU window ``ct_window`` maps linearly to [0, 1]
      (default (-200, 300) HU, an abdominal soft-tissue window); values outside are clipped.
    * ``"mr"`` and ``"unknown"``: the ``percentiles`` (default 0.5 % and 99.5 %) of the image's own intensities
      map to 0 and 1; values outside are clipped. The result is invariant to ``a * I + b`` with ``a > 0``,
      which suits MR's arbitrary units.

    Non-finite voxels raise instead of spreading NaN through the percentiles and the network. The scaled image is
    then checked by :func:`check_intensity_fit`: a (nearly) constant result (MR in [0, 1] declared as CT, a blank
    volume) or a CT mostly above its window (CT stored without its rescale) raises a ``ValueError`` naming the file,
    the key, the declared modality, the intensities seen and the fix; a CT with no voxel below the window (no air)
    is logged as a warning. Built on MONAI's ``ScaleIntensityRange`` and ``ScaleIntensityRangePercentiles``.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"unknown"`` (case-insensitive).
        ct_window: (low, high) in HU for CT.
        percentiles: (low, high) in %, ``0 <= low < high <= 100``, for MR and unknown.
        clip: clip to [0, 1] after scaling. Default True.
        dtype: output dtype. Default float32.
        min_spread: smallest accepted spread between the 1st and 99th percentiles of the scaled image
            (its [0, 1] units). Default 0.05; 0 disables the check.
        max_clipped_high: largest accepted fraction of a CT's voxels at or above the window's top. Default 0.25;
            1 disables the check.
        min_clipped_low: warn when fewer of a CT's voxels are at or below the window's bottom. Default 0.01;
            0 disables the warning.
        modality_option: the user option that declares this image's modality (``"moving_modality"``), named in
            the fix; ``None``: none named.

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
        min_spread: float = DEFAULT_MIN_SPREAD,
        max_clipped_high: float = DEFAULT_MAX_CLIPPED_HIGH,
        min_clipped_low: float = DEFAULT_MIN_CLIPPED_LOW,
        modality_option: str | None = None,
    ) -> None:
        if not isinstance(modality, str):
            raise TypeError(f"modality must be a string such as 'ct' or 'mr', got {type(modality).__name__}.")
        self.modality = look_up_option(modality.lower(), Modality)
        self.ct_window = _check_pair(ct_window, "ct_window")
        self.percentiles = _check_pair(percentiles, "percentiles", 0.0, 100.0)
        self.clip = clip
        self.min_spread = _check_fraction(min_spread, "min_spread")
        self.max_clipped_high = _check_fraction(max_clipped_high, "max_clipped_high")
        self.min_clipped_low = _check_fraction(min_clipped_low, "min_clipped_low")
        if modality_option is not None and not isinstance(modality_option, str):
            raise TypeError(f"modality_option must be a str or None, got {type(modality_option).__name__}.")
        self.modality_option = modality_option
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
            ValueError: when ``img`` has a NaN or infinite voxel, is (nearly) constant once scaled, or is a CT mostly
                above its window (see :func:`check_intensity_fit`); the message names ``key`` and the file.
        """
        check_finite(img, key)
        out = self.scaler(img)
        check_intensity_fit(
            img,
            out,
            key,
            self.modality,
            self.ct_window,
            self.min_spread,
            self.max_clipped_high,
            self.min_clipped_low,
            self.modality_option,
        )
        return out


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
        min_spread, max_clipped_high, min_clipped_low: thresholds of :func:`check_intensity_fit`, for all keys.
        modality_options: the user option declaring each key's modality (one per key, e.g.
            ``("fixed_modality", "moving_modality")``), named in the fix of the messages; ``None``: none named.
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
        min_spread: float = DEFAULT_MIN_SPREAD,
        max_clipped_high: float = DEFAULT_MAX_CLIPPED_HIGH,
        min_clipped_low: float = DEFAULT_MIN_CLIPPED_LOW,
        modality_options: Sequence[str | None] | None = None,
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
        options = (None,) * len(self.keys) if modality_options is None else ensure_tuple(modality_options)
        if len(options) != len(self.keys):
            raise ValueError(
                f"modality_options must be one per key ({len(self.keys)} keys: {self.keys}), got {modality_options!r}."
            )
        self.scalers = tuple(
            ScaleIntensityByModality(
                m, ct_window, percentiles, clip, dtype, min_spread, max_clipped_high, min_clipped_low, option
            )
            for m, option in zip(modalities, options)
        )

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """Scale each key with its modality's rule.

        Raises:
            ValueError: an image has a NaN or infinite voxel, is (nearly) constant once scaled, or is a CT mostly
                above its window (the message names the key, the file, the modality, the intensities and the fix).
        """
        d = dict(data)
        for key, scaler in self.key_iterator(d, self.scalers):
            d[key] = scaler(d[key], key)
        return d
