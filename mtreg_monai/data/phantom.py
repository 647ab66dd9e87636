"""Synthetic intra-patient abdominal CT-MR pairs (a stand-in for Learn2Reg AbdomenMRCT).

Each subject is a small abdomen (about 156 x 107 mm across; anatomy and motion model in
:mod:`mtreg_monai.data.phantom_anatomy`): body wall (skin, subcutaneous fat, muscle), lung bases above a domed
diaphragm, vertebrae with discs and arches, ribs, back and psoas muscles, aorta and inferior vena cava, bowel
loops with gas, and the four labelled organs of AbdomenMRCT (1 liver, 2 spleen, 3 right kidney, 4 left kidney).
The fixed image is a T2-weighted-like MR rendering of the subject; the moving image is a portal-venous CT
rendering of the same subject after a smooth breathing-like motion plus a random smooth deformation.
See ``docs/data.md`` for the tables, the motion model and its calibration.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Union

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from mtreg_monai.utils import write_text_atomic

from .phantom_anatomy import (
    ORGAN_LABELS,
    TISSUES,
    FourierField,
    anatomy_maps,
    draw_subject,
    motion_fields,
    resample,
)  # fmt: skip

__all__ = ["CT_INTENSITIES", "MR_INTENSITIES", "PHANTOM_PRESETS", "make_phantom_pair", "make_phantom_dataset"]

logger = logging.getLogger(__name__)

SeedLike = Union[int, Sequence[int], np.random.Generator]

#: portal-venous CT, (mean, texture standard deviation) in Hounsfield units.
CT_INTENSITIES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, 0.0), "lung": (-850.0, 40.0), "skin": (40.0, 10.0), "subcutaneous_fat": (-100.0, 12.0),
    "muscle": (50.0, 10.0), "visceral_fat": (-90.0, 15.0), "liver": (58.0, 8.0), "spleen": (55.0, 8.0),
    "kidney_cortex": (170.0, 12.0), "kidney_medulla": (95.0, 10.0), "vessel": (150.0, 8.0),
    "liver_vessel": (140.0, 10.0), "bone_cortical": (900.0, 60.0), "bone_marrow": (400.0, 50.0), "disc": (80.0, 10.0),
    "csf": (10.0, 5.0), "bowel": (25.0, 15.0), "bowel_gas": (-950.0, 20.0),
}  # fmt: skip
#: T2-weighted-like MR, (mean, texture standard deviation) in arbitrary units (fat bright, flow voids dark).
MR_INTENSITIES: dict[str, tuple[float, float]] = {
    "air": (0.0, 0.0), "lung": (15.0, 5.0), "skin": (250.0, 20.0), "subcutaneous_fat": (800.0, 40.0),
    "muscle": (180.0, 15.0), "visceral_fat": (720.0, 50.0), "liver": (300.0, 18.0), "spleen": (560.0, 25.0),
    "kidney_cortex": (480.0, 25.0), "kidney_medulla": (640.0, 30.0), "vessel": (60.0, 10.0),
    "liver_vessel": (110.0, 15.0), "bone_cortical": (40.0, 10.0), "bone_marrow": (420.0, 40.0), "disc": (600.0, 30.0),
    "csf": (950.0, 30.0), "bowel": (480.0, 60.0), "bowel_gas": (20.0, 5.0),
}  # fmt: skip
#: generator settings of the two phantom presets (keyword arguments of :func:`make_phantom_pair`). ``easy`` is the
#: quick-start's (smooth organs and motion); ``hard`` adds voxel-scale folds, sliding organ boundaries, larger and
#: less smooth motion, stronger texture with a non-monotonic CT-MR relation, and more bias and noise. Design and
#: calibration (SyN's gain on it) in ``docs/data.md``.
PHANTOM_PRESETS: dict[str, dict[str, Any]] = {
    "easy": dict(breathing_amplitude=(6.5, 12.0), deformation_amplitude=4.0, deformation_spacing=40.0,
                 bias_field_strength=0.25, mr_noise=20.0, ct_noise=12.0, fold_amplitude=0.0, fold_length=6.0,
                 sliding=None, texture_scale=1.0, nonmonotonic_texture=False),
    "hard": dict(breathing_amplitude=(18.0, 28.0), deformation_amplitude=6.0, deformation_spacing=32.0,
                 bias_field_strength=0.4, mr_noise=30.0, ct_noise=15.0, fold_amplitude=0.25, fold_length=6.0,
                 sliding=(3.0, 32.0), texture_scale=1.5, nonmonotonic_texture=True),
}  # fmt: skip
_CODE = 32  # tissue id + _CODE * label: both warped by one nearest-neighbour resampling


def _check_size(value: Any, name: str, integer: bool, minimum: float) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ValueError(f"{name} must be a sequence of 3 values (one per spatial axis), got {value!r}.")
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if any(isinstance(v, bool) or not isinstance(v, kinds) or not v >= minimum for v in value):
        kind = "integers" if integer else "numbers"
        raise ValueError(f"{name} must hold 3 {kind} >= {minimum}, got {tuple(value)!r}.")
    return tuple(int(v) if integer else float(v) for v in value)


def _check_number(value: Any, name: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}.")
    return float(value)


def _rng(seed: SeedLike) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    values = [seed] if isinstance(seed, (int, np.integer)) else list(seed) if isinstance(seed, Sequence) else [None]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in values):
        raise ValueError(f"seed must be a non-negative int, a sequence of them or a numpy Generator, got {seed!r}.")
    return np.random.default_rng([int(v) for v in values])


def _table(table: Mapping[str, tuple[float, float]], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    missing = [t for t in TISSUES if t not in table]
    if missing:
        raise ValueError(f"{name} must give (mean, texture_sd) for every tissue in TISSUES, missing {missing}.")
    values = torch.tensor([[float(v) for v in table[t]] for t in TISSUES], dtype=torch.float32)
    return values[:, 0], values[:, 1]


@contextmanager
def _single_thread():
    """Run torch on one thread: results independent of the thread count, and no idle-spinning on busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _smooth(vol: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 filter along the last three axes, edges replicated."""
    padded = F.pad(vol[None, None], (1, 1, 1, 1, 1, 1), mode="replicate")
    return F.avg_pool3d(F.avg_pool3d(padded, 2, stride=1), 2, stride=1)[0, 0]


def make_phantom_pair(
    spatial_size: Sequence[int] = (64, 64, 48),
    seed: SeedLike = 0,
    field_of_view: Sequence[float] = (176.0, 176.0, 128.0),
    breathing_amplitude: Sequence[float] = (6.5, 12.0),
    deformation_amplitude: float = 4.0,
    deformation_spacing: float = 40.0,
    bias_field_strength: float = 0.25,
    mr_noise: float = 20.0,
    ct_noise: float = 12.0,
    ct_intensities: Mapping[str, tuple[float, float]] = CT_INTENSITIES,
    mr_intensities: Mapping[str, tuple[float, float]] = MR_INTENSITIES,
    fold_amplitude: float = 0.0,
    fold_length: float = 6.0,
    sliding: Sequence[float] | None = None,
    texture_scale: float = 1.0,
    nonmonotonic_texture: bool = False,
) -> dict[str, np.ndarray]:
    """One synthetic subject: fixed MR and moving CT with labels, in memory.

    The subject (:mod:`~mtreg_monai.data.phantom_anatomy`) lives in world mm, so the same seed at another
    ``spatial_size`` gives the same subject resampled. The moving image shows the subject at ``y + motion(y)``: a
    cranio-caudal shift of ``A * w(y)`` mm, ``A`` uniform in ``breathing_amplitude`` and ``w`` a smooth blend of
    ``BREATHING_WEIGHTS`` around the organs that vanishes at the spine, plus a random smooth field (control points
    every ``deformation_spacing`` mm, standard deviation ``deformation_amplitude`` mm, interpolated and smoothed).
    Images: tissue means plus texture (``*_INTENSITIES``), a [1, 2, 1] point-spread blur, then for MR a smooth
    multiplicative bias field and Rician noise, for CT Gaussian noise; rounded to integers as scanners store them.
    Torch runs on one thread meanwhile (restored after), so the arrays do not depend on the thread count.

    Args:
        spatial_size: image size (H, W, D), each >= 8; axes RAS (left-right, posterior-anterior, inferior-superior).
        seed: int, sequence of ints (``make_phantom_dataset`` uses ``(seed, index)``) or numpy Generator.
        field_of_view: extent (mm) of the image along each axis, centred on the subject; spacing = fov / size.
        breathing_amplitude: (low, high) range (mm) of the cranio-caudal organ shift (weight 1, the liver).
        deformation_amplitude: standard deviation (mm) of the random control-point displacements.
        deformation_spacing: control-point spacing (mm) of the random deformation.
        bias_field_strength: standard deviation of the log of the smooth multiplicative MR bias field.
        mr_noise: standard deviation of the MR noise (Rician magnitude of complex Gaussian noise), MR units.
        ct_noise: standard deviation of the Gaussian CT noise, HU.
        ct_intensities: (mean, texture sd) per tissue of ``TISSUES``, HU.
        mr_intensities: (mean, texture sd) per tissue of ``TISSUES``, MR units.
        fold_amplitude: amplitude (fraction of the organ's size) of a second, short-range random perturbation of
            every organ surface: folds and thin protrusions at the voxel scale. 0 (default) adds none.
        fold_length: correlation length (mm) of those folds.
        sliding: ``(lateral_mm, cranio_caudal_mm)`` smoothing of organ masks that carry the breathing motion, for
            sliding organ boundaries; ``None`` (default) keeps the smooth Gaussian blend
            (see :func:`~mtreg_monai.data.phantom_anatomy.motion_fields`).
        texture_scale: multiplies every tissue's texture standard deviation in both modalities.
        nonmonotonic_texture: the MR texture is ``(t^2 - 1) / sqrt(2)`` of the CT texture ``t`` (same unit
            variance, no monotonic relation between the two images within a tissue).

    The hard-preset options draw their random numbers from a stream spawned from ``seed``, so with their
    defaults the images are those of earlier versions, draw for draw.

    Returns:
        numpy arrays: ``fixed_image`` (MR) and ``moving_image`` (CT), float32 (H, W, D); ``fixed_label`` and
        ``moving_label``, uint8 (H, W, D) in {0, 1, 2, 3, 4}; ``fixed_tissue`` and ``moving_tissue``, uint8 ids
        into ``TISSUES``; ``motion``, float32 (3, H, W, D), the generating displacement in voxels on the moving grid:
        moving(y) = subject(y + motion(y)); ``ddf``, float32 (3, H, W, D), its inverse in voxels, channel i along
        spatial axis i, sampled on the fixed grid: warped(x) = moving(x + ddf(x)) recovers the fixed image
        (MONAI ``Warp``'s convention); ``affine``, float64 (4, 4), RAS, spacing on the diagonal.

    Raises:
        ValueError: when a size, amplitude, seed or intensity table is invalid.

    Example::

        pair = make_phantom_pair((32, 32, 24), seed=1)
        pair["fixed_image"].shape, pair["moving_label"].max()  # ((32, 32, 24), 4)
    """
    size = _check_size(spatial_size, "spatial_size", integer=True, minimum=8)
    fov = _check_size(field_of_view, "field_of_view", integer=False, minimum=1e-3)
    ba = breathing_amplitude
    if isinstance(ba, (str, bytes)) or not isinstance(ba, Sequence) or len(ba) != 2:
        raise ValueError(f"breathing_amplitude must be a (low, high) pair in mm, got {ba!r}.")
    low, high = (_check_number(v, "breathing_amplitude") for v in ba)
    if low > high:
        raise ValueError(f"breathing_amplitude must be (low, high) with low <= high, got {ba!r}.")
    deformation_amplitude = _check_number(deformation_amplitude, "deformation_amplitude")
    deformation_spacing = _check_number(deformation_spacing, "deformation_spacing", 1e-3)
    bias_field_strength = _check_number(bias_field_strength, "bias_field_strength")
    mr_noise, ct_noise = _check_number(mr_noise, "mr_noise"), _check_number(ct_noise, "ct_noise")
    fold_amplitude = _check_number(fold_amplitude, "fold_amplitude")
    fold_length = _check_number(fold_length, "fold_length", 1e-3)
    texture_scale = _check_number(texture_scale, "texture_scale")
    if sliding is not None:
        if isinstance(sliding, (str, bytes)) or not isinstance(sliding, Sequence) or len(sliding) != 2:
            raise ValueError(f"sliding must be None or (lateral_mm, cranio_caudal_mm), got {sliding!r}.")
        sliding = tuple(_check_number(v, "sliding", 1e-3) for v in sliding)
    ct_mean, ct_sd = _table(ct_intensities, "ct_intensities")
    mr_mean, mr_sd = _table(mr_intensities, "mr_intensities")
    rng = _rng(seed)
    spacing = [f / n for f, n in zip(fov, size)]
    axes = [(torch.arange(n, dtype=torch.float32) - (n - 1) / 2) * sp for n, sp in zip(size, spacing)]
    with torch.no_grad(), _single_thread():
        s = draw_subject(rng)
        if fold_amplitude > 0:
            extra = np.random.default_rng(rng.bit_generator.seed_seq.spawn(1)[0])
            for o in s["organs"].values():
                o["fold"], o["fold_field"] = fold_amplitude, FourierField(extra, fold_length, 48)
        amplitude = rng.uniform(low, high)
        motion, inverse = motion_fields(
            s, axes, amplitude, deformation_amplitude, deformation_spacing, rng, sliding
        )  # fmt: skip
        sp = torch.tensor(spacing).view(3, 1, 1, 1)
        motion, inverse = motion / sp, inverse / sp  # mm -> voxels
        tissue, label = anatomy_maps(s, axes)
        code = (tissue.float() + _CODE * label.float())[None]
        moved = resample(code, motion, "nearest")[0].round().to(torch.uint8)
        m_tissue, m_label = moved % _CODE, moved // _CODE
        texture = _smooth(torch.from_numpy(rng.standard_normal(size, dtype=np.float32))) / 0.2296
        m_texture = resample(texture[None], motion, "bilinear")[0]
        mr_texture = (texture.square() - 1) / np.sqrt(2.0) if nonmonotonic_texture else texture
        mr = _smooth(mr_mean[tissue.long()] + texture_scale * mr_sd[tissue.long()] * mr_texture)
        mr = mr * torch.exp(bias_field_strength * s["bias"](*axes))
        n1, n2 = (torch.from_numpy(rng.standard_normal(size, dtype=np.float32)) for _ in range(2))
        mr = torch.sqrt((mr + mr_noise * n1) ** 2 + (mr_noise * n2) ** 2)
        ct = _smooth(ct_mean[m_tissue.long()] + texture_scale * ct_sd[m_tissue.long()] * m_texture)
        ct = ct + ct_noise * torch.from_numpy(rng.standard_normal(size, dtype=np.float32))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-(n - 1) / 2 * sp for n, sp in zip(size, spacing)]
    return {
        "fixed_image": mr.round().numpy(), "moving_image": ct.round().numpy(), "fixed_label": label.numpy(),
        "moving_label": m_label.numpy(), "fixed_tissue": tissue.numpy(), "moving_tissue": m_tissue.numpy(),
        "motion": motion.numpy(), "ddf": inverse.numpy(), "affine": affine,
    }  # fmt: skip


def _json_number(value: Any, name: str) -> Any:
    """A generator setting as it is recorded in the datalist (None, bool, a float or a list of floats)."""
    if value is None or isinstance(value, bool):
        return value
    try:
        return np.asarray(value, dtype=float).tolist()
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of numbers, got {value!r}.") from None


def _save(array: np.ndarray, affine: np.ndarray, path: str) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, path)


def make_phantom_dataset(
    out_dir: str | os.PathLike,
    num_pairs: int = 40,
    spatial_size: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    field_of_view: Sequence[float] = (176.0, 176.0, 128.0),
    num_val: int | None = None,
    num_test: int | None = None,
    datalist_name: str = "dataset.json",
    preset: str = "easy",
    reuse_existing: bool = False,
    save_true_ddf: bool = True,
    **generator_kwargs: Any,
) -> str:
    """Write ``num_pairs`` synthetic CT-MR pairs as NIfTI files and a datalist JSON; return the JSON's path.

    Pair ``i`` is ``make_phantom_pair(spatial_size, seed=(seed, i), ...)``, so a pair does not depend on
    ``num_pairs`` or on the split. Files (Learn2Reg AbdomenMRCT naming, ``_0000`` MR, ``_0001`` CT):
    ``imagesTr/phantom_XXXX_000{0,1}.nii.gz`` (float32) and ``labelsTr/phantom_XXXX_000{0,1}.nii.gz`` (uint8),
    with a RAS affine of spacing ``field_of_view / spatial_size`` mm. The JSON, written last, holds
    ``{"training": [...], "validation": [...], "test": [...]}`` (pairs in that order), each item with keys
    ``fixed_image``, ``moving_image``, ``fixed_label``, ``moving_label`` (paths relative to the JSON's folder),
    plus descriptive keys (``name``, ``description``, ``modality``, ``labels``, ``spacing``, ...). With
    ``save_true_ddf``, each item also has ``true_ddf``: ``ddfTr/phantom_XXXX.nii.gz``, the generating displacement
    in the network's convention (:func:`make_phantom_pair`'s ``ddf``: voxels, on the fixed grid,
    ``warped(x) = moving(x + ddf(x))``), stored (H, W, D, 3) float32 with channel i along spatial axis i, so
    ``LoadImaged("true_ddf", ensure_channel_first=True)`` gives (3, H, W, D). Evaluation ignores the key; the
    uncertainty-versus-error benchmark reads it.

    Args:
        out_dir: output folder, created when missing; existing files of the same names are overwritten.
        num_pairs: number of pairs, >= 1.
        spatial_size: image size (H, W, D), each >= 8.
        seed: non-negative base seed.
        field_of_view: image extent in mm along each axis.
        num_val: validation pairs; default ``num_pairs // 8`` (at least 1 when ``num_pairs >= 3``).
        num_test: test pairs; same default as ``num_val``. ``num_val + num_test`` must not exceed ``num_pairs``.
        datalist_name: file name of the JSON inside ``out_dir``.
        preset: ``"easy"`` (the quick-start's) or ``"hard"``, a key of :data:`PHANTOM_PRESETS`: the generator
            settings of every pair.
        generator_kwargs: keyword arguments of :func:`make_phantom_pair` (``breathing_amplitude``,
            ``deformation_amplitude``, ``mr_noise``, ...) that override the preset's.
        reuse_existing: when the datalist already exists in ``out_dir`` and was written by this function with
            the same arguments (its ``"generator"`` record), return it without generating anything. The bundle
            uses this so that only its first run generates the data.
        save_true_ddf: also write each pair's true displacement and the ``true_ddf`` key (see above).

    Raises:
        ValueError: when a count, size or seed is invalid, or the split does not fit into ``num_pairs``.

    Example::

        path = make_phantom_dataset("/tmp/phantom", num_pairs=8, spatial_size=(32, 32, 24))
        monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir="/tmp/phantom")
    """
    if isinstance(num_pairs, bool) or not isinstance(num_pairs, (int, np.integer)) or num_pairs < 1:
        raise ValueError(f"num_pairs must be an int >= 1, got {num_pairs!r}.")
    default = num_pairs // 8 if num_pairs < 3 or num_pairs >= 8 else 1
    split = {}
    for name, value in (("num_val", num_val), ("num_test", num_test)):
        value = default if value is None else value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}.")
        split[name] = int(value)
    if split["num_val"] + split["num_test"] > num_pairs:
        raise ValueError(
            f"num_val + num_test must not exceed num_pairs ({num_pairs}), got num_val={split['num_val']}, "
            f"num_test={split['num_test']}."
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}.")
    if not isinstance(datalist_name, str) or not datalist_name or os.path.basename(datalist_name) != datalist_name:
        raise ValueError(f"datalist_name must be a plain file name, got {datalist_name!r}.")
    size = _check_size(spatial_size, "spatial_size", integer=True, minimum=8)
    fov = _check_size(field_of_view, "field_of_view", integer=False, minimum=1e-3)
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, datalist_name)
    if preset not in PHANTOM_PRESETS:
        raise ValueError(f"preset must be one of {sorted(PHANTOM_PRESETS)}, got {preset!r}.")
    unknown = sorted(set(generator_kwargs) - set(PHANTOM_PRESETS[preset]))
    if unknown:
        raise ValueError(f"unknown generator arguments {unknown}; expected some of {sorted(PHANTOM_PRESETS[preset])}.")
    settings = {**PHANTOM_PRESETS[preset], **generator_kwargs}
    generator = {
        "num_pairs": int(num_pairs),
        "spatial_size": list(size),
        "seed": int(seed),
        "field_of_view": list(fov),
        "num_val": split["num_val"],
        "num_test": split["num_test"],
        "preset": preset,
        **{k: _json_number(v, k) for k, v in settings.items()},
        "save_true_ddf": bool(save_true_ddf),
    }
    if reuse_existing and os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f).get("generator")
        except (OSError, ValueError):
            previous = None
        if previous == generator:
            logger.info("reusing the phantom dataset %s", path)
            return path
    for sub in ("imagesTr", "labelsTr", "ddfTr") if save_true_ddf else ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    items = []
    for i in range(num_pairs):
        pair = make_phantom_pair(size, (seed, i), fov, **settings)
        item = {}
        for role, suffix in (("fixed", "0000"), ("moving", "0001")):
            for kind, folder in (("image", "imagesTr"), ("label", "labelsTr")):
                rel = f"{folder}/phantom_{i:04d}_{suffix}.nii.gz"
                _save(pair[f"{role}_{kind}"], pair["affine"], os.path.join(out_dir, rel))
                item[f"{role}_{kind}"] = rel
        if save_true_ddf:
            item["true_ddf"] = f"ddfTr/phantom_{i:04d}.nii.gz"
            _save(np.moveaxis(pair["ddf"], 0, -1), pair["affine"], os.path.join(out_dir, item["true_ddf"]))
        items.append(item)
    n_train = num_pairs - split["num_val"] - split["num_test"]
    datalist = {
        "name": f"mtreg_monai synthetic abdominal CT-MR phantom ({preset} preset)",
        "description": "intra-patient pairs: fixed = MR (T2-weighted-like), moving = CT (portal venous) after "
        "breathing-like motion; see mtreg_monai.data.make_phantom_dataset",
        "modality": {"fixed": "MR", "moving": "CT"},
        "labels": {"0": "background", **{str(v): k for k, v in ORGAN_LABELS.items()}},
        "spatial_size": list(size),
        "spacing": [float(f / n) for f, n in zip(fov, size)],
        "seed": int(seed),
        "generator": generator,
        "training": items[:n_train],
        "validation": items[n_train : n_train + split["num_val"]],
        "test": items[n_train + split["num_val"] :],
    }
    write_text_atomic(path, json.dumps(datalist, indent=2))
    logger.info("wrote %d phantom pairs and %s", num_pairs, path)
    return path
