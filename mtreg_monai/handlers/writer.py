"""Writes registration results as NIfTI on the fixed image's original grid (inference)."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor, decollate_batch
from monai.transforms import Invertd

from mtreg_monai.data.robust import FAILED_KEY, exception_reason
from mtreg_monai.engines.utils import RegistrationKeys
from mtreg_monai.handlers.failures import record_failure
from mtreg_monai.utils import atomic_path

__all__ = ["RegistrationWriter", "ddf_to_world", "RAS_TO_LPS"]

Keys = RegistrationKeys
logger = logging.getLogger(__name__)

#: flips the first two world axes: RAS (nibabel, MONAI) <-> LPS (ITK, SimpleITK, DICOM).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def ddf_to_world(ddf: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """
    Turn a displacement in voxels into a displacement in world millimetres.

    Args:
        ddf: (3, H, W, D) displacement in voxels, channel i along array axis i.
        affine: (4, 4) voxel-to-world (RAS, mm) affine of the grid the displacement is sampled on.

    Returns:
        (3, H, W, D) displacement in mm, channel j along world axis j (R, A, S): ``u = A[:3, :3] @ ddf``.
    """
    if ddf.ndim != 4 or ddf.shape[0] != 3:
        raise ValueError(f"Expecting a (3, H, W, D) displacement, got shape {tuple(ddf.shape)}.")
    rot = torch.as_tensor(affine, dtype=torch.float64, device=ddf.device)[:3, :3]
    return torch.einsum("ji,i...->j...", rot, ddf.double()).to(ddf.dtype)


def _item_path(item: dict, key: str) -> str | None:
    value = item.get(key)
    meta = getattr(value, "meta", {}) if value is not None else {}
    path = meta.get("filename_or_obj")
    return str(path) if path else None


def _array_to_sitk(array: np.ndarray, reference: sitk.Image, vector: bool = False) -> sitk.Image:
    """(C, I, J, K) or (I, J, K) array in nibabel index order -> SimpleITK image on ``reference``'s grid."""
    arr = np.moveaxis(array, 0, -1) if vector else array  # (I, J, K[, C])
    arr = np.ascontiguousarray(np.transpose(arr, (2, 1, 0, 3) if vector else (2, 1, 0)))  # SimpleITK: (K, J, I[, C])
    image = sitk.GetImageFromArray(arr, isVector=vector)
    image.CopyInformation(reference)
    return image


def _write(image: sitk.Image, path: str) -> None:
    """Write a compressed NIfTI file atomically (:func:`~mtreg_monai.utils.atomic_path`)."""
    with atomic_path(path, suffix=".nii.gz") as tmp:
        sitk.WriteImage(image, tmp, useCompression=True)


class RegistrationWriter:
    """
    After every evaluator iteration, writes each pair's results into ``output_dir/<pair name>/`` on the fixed image's
    **original** grid and affine (the preprocessing's padding and reorientation undone with MONAI ``Invertd``):

    - ``ddf.nii.gz``: the displacement as an ITK displacement field: a 3-component vector image in **mm, in LPS
      world coordinates** (ITK's convention), on the fixed grid, such that ``warped(p) = moving(p + u(p))`` for a
      world point ``p``. SimpleITK's ``DisplacementFieldTransform`` and ANTs/ITK tools use it as is (the NIfTI
      file has the vector intent, dims (X, Y, Z, 1, 3)). For RAS (nibabel) components negate the first two.
    - ``warped_moving.nii.gz``: the original moving image (its own intensities and grid) resampled with that field
      onto the fixed grid, linear interpolation; ``warped_moving_label.nii.gz`` likewise with nearest neighbour
      when a moving label is given. Both are computed from the written field, so the files agree with each other.
    - ``uncertainty_phi.nii.gz`` (mean over the three displacement channels) and ``uncertainty_image.nii.gz`` when
      the output holds ``u_phi`` / ``u_image`` (an :class:`~mtreg_monai.handlers.MCUncertaintyHandler` attached).

    Args:
        output_dir: root folder of the results.
        preprocessing: the ``Compose`` that prepared the pairs (its recorded operations are inverted).
        fixed_key: key of the fixed image in the batch.
        moving_key: key of the moving image.
        moving_label_key: key of the moving label.
    """

    def __init__(
        self,
        output_dir: str,
        preprocessing: Any,
        fixed_key: str = Keys.FIXED_IMAGE,
        moving_key: str = Keys.MOVING_IMAGE,
        moving_label_key: str = Keys.MOVING_LABEL,
    ) -> None:
        self.output_dir = str(output_dir)
        self.preprocessing = preprocessing
        self.fixed_key, self.moving_key, self.moving_label_key = str(fixed_key), str(moving_key), str(moving_label_key)
        self.written: list[str] = []

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _invert(self, item: dict, outputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        keys = list(outputs)
        data = {self.fixed_key: item[self.fixed_key], **outputs}
        inverted = Invertd(keys=keys, transform=self.preprocessing, orig_keys=self.fixed_key, nearest_interp=False)(
            data
        )
        return {k: np.asarray(torch.as_tensor(inverted[k]).detach().cpu().float().numpy()) for k in keys}

    def pair_name(self, item: dict, index: int) -> str:
        fixed = _item_path(item, self.fixed_key)
        moving = _item_path(item, self.moving_key)
        if fixed is None or moving is None:
            return f"pair_{index:04d}"

        def stem(p: str) -> str:
            name = os.path.basename(p)
            for ext in (".nii.gz", ".nii", ".mha", ".nrrd"):
                if name.endswith(ext):
                    return name[: -len(ext)]
            return os.path.splitext(name)[0]

        return f"{stem(moving)}_to_{stem(fixed)}"

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, dict) or Keys.DDF not in out:  # a batch of pairs that failed to load: nothing to write
            return
        batch = {k: v for k, v in engine.state.batch.items() if k != FAILED_KEY}
        items = decollate_batch(batch, detach=True)
        for b, item in enumerate(items):
            fixed = item[self.fixed_key]
            if not isinstance(fixed, MetaTensor):
                raise TypeError("RegistrationWriter needs the batch's fixed image as a MetaTensor (its affine).")
            try:
                self._write_item(item, out, b, self.pair_name(item, engine.state.iteration * len(items) + b))
            except Exception as e:  # one pair's failure must not stop a batch run: it goes to failures.csv
                fixed_path, moving_path = _item_path(item, self.fixed_key), _item_path(item, self.moving_key)
                record_failure(engine, fixed_path or "", moving_path or "", "write", exception_reason(e))

    def _write_item(self, item: dict, out: dict, b: int, name: str) -> None:
        fixed = item[self.fixed_key]
        ddf = torch.as_tensor(out[Keys.DDF][b]).detach().cpu()
        if not bool(torch.isfinite(ddf).all()):
            raise ValueError(
                f"the network's displacement for {name} has {int((~torch.isfinite(ddf)).sum())} non-finite "
                "value(s); expected a finite field. Nothing was written for this pair."
            )
        outputs = {"ddf_world": MetaTensor(ddf_to_world(ddf, fixed.affine))}
        for key, out_name in ((Keys.UNCERTAINTY_PHI, "uncertainty_phi"), (Keys.UNCERTAINTY_IMAGE, "uncertainty_image")):
            if key in out:
                outputs[out_name] = MetaTensor(
                    torch.as_tensor(out[key][b]).detach().cpu().float().mean(0, keepdim=True)
                )
        arrays = self._invert(item, outputs)
        self.write_pair(item, arrays, name)

    def write_pair(self, item: dict, arrays: dict[str, np.ndarray], name: str) -> None:
        fixed_path = _item_path(item, self.fixed_key)
        moving_path = _item_path(item, self.moving_key)
        if fixed_path is None or moving_path is None:
            raise ValueError(
                "RegistrationWriter needs the file names of the fixed and moving images in their metadata."
            )
        # two pairs with the same file names (e.g. case1/mr.nii.gz and case2/mr.nii.gz) must not share a folder:
        # a name already written in this run gets the index of the pair appended
        taken = {os.path.basename(p) for p in self.written}
        if name in taken:
            name = next(f"{name}_{i}" for i in range(2, len(taken) + 3) if f"{name}_{i}" not in taken)
        pair_dir = os.path.join(self.output_dir, name)
        # written into a hidden temporary folder renamed at the end: a pair that fails leaves nothing behind
        final_dir, pair_dir = pair_dir, os.path.join(self.output_dir, f".{name}.partial")
        shutil.rmtree(pair_dir, ignore_errors=True)
        os.makedirs(pair_dir)
        try:
            self._write_files(item, arrays, pair_dir, fixed_path, moving_path)
        except BaseException:
            shutil.rmtree(pair_dir, ignore_errors=True)
            raise
        if os.path.isdir(final_dir):
            shutil.rmtree(final_dir)
        os.replace(pair_dir, final_dir)
        self.written.append(final_dir)
        logger.info("registered %s -> %s: results in %s", moving_path, fixed_path, final_dir)

    def _write_files(
        self, item: dict, arrays: dict[str, np.ndarray], pair_dir: str, fixed_path: str, moving_path: str
    ) -> None:
        fixed_img = sitk.ReadImage(fixed_path)
        # the inverted arrays are in the fixed file's own voxel order, as nibabel (and MONAI's reader) index it
        u_ras = arrays["ddf_world"]
        u_lps = np.einsum("ji,i...->j...", RAS_TO_LPS, u_ras)
        field = _array_to_sitk(u_lps.astype(np.float64), fixed_img, vector=True)
        _write(sitk.Cast(field, sitk.sitkVectorFloat32), os.path.join(pair_dir, "ddf.nii.gz"))
        transform = sitk.DisplacementFieldTransform(sitk.Image(field))
        moving_img = sitk.ReadImage(moving_path, sitk.sitkFloat32)
        lowest = float(sitk.GetArrayViewFromImage(moving_img).min())
        warped = sitk.Resample(moving_img, fixed_img, transform, sitk.sitkLinear, lowest, sitk.sitkFloat32)
        _write(warped, os.path.join(pair_dir, "warped_moving.nii.gz"))
        label_path = _item_path(item, self.moving_label_key)
        if label_path is not None:
            label = sitk.ReadImage(label_path)
            warped_label = sitk.Resample(label, fixed_img, transform, sitk.sitkNearestNeighbor, 0, label.GetPixelID())
            _write(warped_label, os.path.join(pair_dir, "warped_moving_label.nii.gz"))
        for key in ("uncertainty_phi", "uncertainty_image"):
            if key in arrays:
                _write(
                    _array_to_sitk(arrays[key][0].astype(np.float32), fixed_img),
                    os.path.join(pair_dir, f"{key}.nii.gz"),
                )
