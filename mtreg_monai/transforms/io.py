"""Loading with errors that name the file: a thin layer over MONAI's ``LoadImaged``."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImaged

__all__ = ["CheckedLoadImaged", "nifti_voxel_count"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def nifti_data_dtype(path: str | os.PathLike) -> np.dtype | None:
    """The voxel data type declared in a NIfTI header (``None`` for other files or an unreadable header)."""
    if not str(path).lower().endswith(_NIFTI_SUFFIXES):
        return None
    try:
        import nibabel as nib

        return np.dtype(nib.load(str(path)).header.get_data_dtype())
    except Exception:  # reported by the loader itself, with the path
        return None


def nifti_voxel_count(path: str | os.PathLike) -> int | None:
    """Number of voxels declared in a NIfTI header, read without decompressing the data.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        the product of the header's dimensions, or ``None`` for a file that is not NIfTI or whose header
        cannot be read (the loader then reports the problem).
    """
    if not str(path).lower().endswith(_NIFTI_SUFFIXES):
        return None
    try:
        import nibabel as nib

        shape = nib.load(str(path)).header.get_data_shape()
    except Exception:  # an unreadable header is reported by the loader itself, with the path
        return None
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 0


class CheckedLoadImaged(LoadImaged):
    """MONAI ``LoadImaged`` whose errors name the key and the file, with a voxel-count limit.

    MONAI's loader reports a truncated ``.nii.gz`` as a bare ``EOFError`` without the path, and a small
    compressed file can declare a huge volume (a 512^3 zero volume compresses 229x). This subclass

    * raises ``FileNotFoundError`` naming the key and the path for a missing file,
    * refuses a NIfTI file whose header declares more than ``max_voxels`` voxels before decompressing it,
    * re-raises any reader error as ``ValueError`` naming the key and the path (the original is chained).

    All other behaviour (readers, ``dtype``, ``image_only``, ``ensure_channel_first``) is ``LoadImaged``'s.

    Args:
        keys: keys of the entries holding file paths.
        max_voxels: largest accepted voxel count of a NIfTI file (product of the header dimensions);
            ``None`` disables the check. Default ``512**3``.
        reader, image_only, dtype, allow_missing_keys, kwargs: as in ``monai.transforms.LoadImaged``;
            ``image_only`` defaults to ``True`` here (the metadata travels in the ``MetaTensor``).

    Example::

        loader = CheckedLoadImaged(keys=("fixed_image", "moving_image"))
        data = loader({"fixed_image": "mr.nii.gz", "moving_image": "ct.nii.gz"})
    """

    def __init__(
        self,
        keys: KeysCollection,
        reader: type[ImageReader] | str | None = None,
        dtype: Any = np.float32,
        image_only: bool = True,
        max_voxels: int | None = 512**3,
        allow_missing_keys: bool = False,
        **kwargs: Any,
    ) -> None:
        if max_voxels is not None and (isinstance(max_voxels, bool) or not isinstance(max_voxels, int)):
            raise TypeError(f"max_voxels must be an int or None, got {type(max_voxels).__name__}.")
        if max_voxels is not None and max_voxels < 1:
            raise ValueError(f"max_voxels must be positive, got {max_voxels}.")
        super().__init__(
            keys, reader=reader, dtype=dtype, image_only=image_only, allow_missing_keys=allow_missing_keys, **kwargs
        )
        self.max_voxels = max_voxels

    def _check_path(self, key: Hashable, path: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            return  # lists of files (series) and arrays are left to LoadImaged
        if not os.path.exists(path):
            raise FileNotFoundError(f"File of '{key}' not found: '{path}'.")
        dtype = nifti_data_dtype(path)
        if dtype is not None and dtype.kind == "c":  # LoadImaged's float cast would drop the imaginary part silently
            raise TypeError(f"File of '{key}' holds complex voxels ({dtype}); expected a real-valued image: '{path}'.")
        if self.max_voxels is not None:
            count = nifti_voxel_count(path)
            if count is not None and count > self.max_voxels:
                raise ValueError(
                    f"File of '{key}' declares {count} voxels in its header, more than max_voxels={self.max_voxels}: "
                    f"'{path}'."
                )

    def __call__(self, data: Mapping[Hashable, Any], reader: ImageReader | None = None) -> dict[Hashable, Any]:
        """Load every key, checking each path first.

        Raises:
            FileNotFoundError: a path does not exist.
            ValueError: a header declares more than ``max_voxels`` voxels, or the reader fails.
        """
        d = dict(data)
        for key, meta_key, meta_key_postfix in self.key_iterator(d, self.meta_keys, self.meta_key_postfix):
            path = d[key]
            self._check_path(key, path)
            try:
                loaded = self._loader(path, reader)
            except FileNotFoundError:
                raise
            except Exception as e:
                raise ValueError(
                    f"Could not read '{key}' from '{path}': {type(e).__name__}: {e}. "
                    "Expected a complete, readable image file (for example NIfTI .nii/.nii.gz)."
                ) from e
            if self._loader.image_only:
                d[key] = loaded
                continue
            # same bookkeeping as LoadImaged.__call__ for image_only=False
            d[key] = loaded[0]
            meta_key = meta_key or f"{key}_{meta_key_postfix}"
            if meta_key in d and not self.overwriting:
                raise KeyError(f"Metadata with key {meta_key} already exists and overwriting=False.")
            d[meta_key] = loaded[1]
        return d
