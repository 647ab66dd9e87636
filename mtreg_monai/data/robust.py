"""Fail-safe batch loading: a pair that cannot be loaded becomes a failure marker, the batch goes on."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monai.data import Dataset, list_data_collate

from mtreg_monai.transforms.utils import IMAGE_KEYS

__all__ = [
    "FAILED_KEY",
    "FailSafeDataset",
    "exception_reason",
    "fail_safe_collate",
    "failure_marker",
    "is_failure_marker",
]

logger = logging.getLogger(__name__)

#: key of a failure marker's flag, and of the list of markers in a collated batch and in ``engine.state.output``.
FAILED_KEY = "failed"


def exception_reason(exc: BaseException) -> str:
    """
    A one-line reason for a failed pair: ``"<ExceptionType>: <message>"`` of the most informative exception.

    MONAI's ``Compose`` re-raises a transform's error as ``RuntimeError("applying transform ...")`` with the original
    as ``__cause__``; such wrappers are skipped, and the first exception in the chain that is not one is used (the
    package's transforms raise errors that name the key and the file there).

    Args:
        exc: the exception raised while loading or transforming a pair.

    Returns:
        the reason, with newlines replaced by spaces.
    """
    chosen, current, seen = exc, exc, set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if not (isinstance(current, RuntimeError) and str(current).startswith("applying transform")):
            chosen = current
            break
        current = current.__cause__ or current.__context__
    message = " ".join(str(chosen).split())
    return f"{type(chosen).__name__}: {message}" if message else type(chosen).__name__


def failure_marker(item: Any, reason: str, stage: str = "load") -> dict[str, Any]:
    """
    The small dictionary that stands for a pair that failed.

    Args:
        item: the datalist entry (a dict of file paths) or anything else (then the paths are ``""``).
        reason: why it failed, for example from :func:`exception_reason`.
        stage: where it failed (``"load"``: reading or preprocessing, ``"write"``: writing the results).

    Returns:
        ``{"failed": True, "stage": stage, "reason": reason, "fixed_image": path, "moving_image": path}``.
    """
    paths = {k: str(item.get(k, "")) if isinstance(item, Mapping) else "" for k in IMAGE_KEYS}
    return {FAILED_KEY: True, "stage": str(stage), "reason": str(reason), **paths}


def is_failure_marker(item: Any) -> bool:
    """Whether ``item`` is a marker made by :func:`failure_marker`."""
    return isinstance(item, Mapping) and item.get(FAILED_KEY) is True


class FailSafeDataset(Dataset):
    """
    MONAI ``Dataset`` whose items never raise: a pair whose loading or preprocessing raises an ``Exception`` is
    returned as a failure marker (:func:`failure_marker`) naming its files and the reason, and a warning is logged.

    Use it with :func:`fail_safe_collate` as the ``collate_fn`` of the ``DataLoader`` for batch inference: the
    evaluator skips the network for a marker-only batch and :class:`~mtreg_monai.handlers.FailureReportHandler`
    writes the markers to ``failures.csv``. ``KeyboardInterrupt`` and ``SystemExit`` still stop the run.

    Args:
        data: datalist entries, dicts of file paths (``fixed_image``, ``moving_image``, optional labels).
        transform: the preprocessing (for example :func:`~mtreg_monai.transforms.registration_pair_transforms`).

    Example::

        ds = FailSafeDataset([{"fixed_image": "mr.nii.gz", "moving_image": "missing.nii.gz"}], transform=xform)
        ds[0]  # {"failed": True, "stage": "load", "reason": "FileNotFoundError: ... 'missing.nii.gz' ...", ...}
    """

    def __init__(self, data: Sequence, transform: Sequence[Callable] | Callable | None = None) -> None:
        if not isinstance(data, Sequence) or isinstance(data, (str, bytes)):
            raise TypeError(f"data must be a sequence of datalist entries, got {type(data).__name__}.")
        super().__init__(data=data, transform=transform)

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:  # one bad pair must not stop a batch run: report it instead
            item = self.data[index]
            marker = failure_marker(item, exception_reason(e), stage="load")
            logger.warning(
                "skipping pair %d (fixed %s, moving %s): %s",
                index,
                os.path.basename(marker["fixed_image"]) or "?",
                os.path.basename(marker["moving_image"]) or "?",
                marker["reason"],
            )
            return marker


def fail_safe_collate(batch: Sequence[Any]) -> dict[str, Any]:
    """
    ``collate_fn`` for :class:`FailSafeDataset`: collates the good pairs with MONAI ``list_data_collate`` and puts
    the failure markers, uncollated, in a list under ``"failed"``.

    Args:
        batch: the items of one batch (pair dicts and markers).

    Returns:
        the collated good pairs (``(B_good, 1, H, W, D)`` tensors) plus ``"failed": [markers]`` when any failed; a
        batch of markers only is ``{"failed": [markers]}``.
    """
    failed = [item for item in batch if is_failure_marker(item)]
    good = [item for item in batch if not is_failure_marker(item)]
    out: dict[str, Any] = dict(list_data_collate(good)) if good else {}
    if failed:
        out[FAILED_KEY] = failed
    return out
