"""Collects the pairs that failed in a batch run and writes them to ``failures.csv``."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping
from typing import Any

from ignite.engine import Engine, Events

from mtreg_monai.data.robust import FAILED_KEY
from mtreg_monai.transforms.utils import IMAGE_KEYS
from mtreg_monai.utils import atomic_write

__all__ = ["FAILURE_COLUMNS", "FailureReportHandler", "record_failure"]

logger = logging.getLogger(__name__)

#: columns of ``failures.csv``, in order.
FAILURE_COLUMNS = (*IMAGE_KEYS, "stage", "reason")


def record_failure(engine: Engine, fixed: str, moving: str, stage: str, reason: str) -> dict[str, str]:
    """
    Append one failed pair to ``engine.state.failures`` (a list created on first use) and log a warning.

    Handlers that catch a per-pair error (for example :class:`~mtreg_monai.handlers.RegistrationWriter`) call this
    function; :class:`FailureReportHandler` writes the list.

    Returns:
        the recorded row, ``{"fixed_image", "moving_image", "stage", "reason"}``.
    """
    row = dict(zip(FAILURE_COLUMNS, map(str, (fixed, moving, stage, reason))))
    failures = getattr(engine.state, "failures", None)
    if failures is None:
        failures = []
        engine.state.failures = failures
    failures.append(row)
    logger.warning("pair failed at %s (fixed %s, moving %s): %s", stage, fixed, moving, reason)
    return row


class FailureReportHandler:
    """
    Reports the pairs of a batch run that could not be registered.

    After every iteration it moves the failure markers in ``engine.state.output[FAILED_KEY]`` (``"failed"``, made by
    :class:`~mtreg_monai.data.FailSafeDataset` and passed on by the evaluator) to ``engine.state.failures``, logging a
    warning for each; other handlers may append to that list with :func:`record_failure`. When the run completes it
    writes ``output_dir/filename``, one row per failed pair with the columns ``fixed_image, moving_image, stage,
    reason`` (``stage``: ``load`` for reading/preprocessing, ``write`` for writing results). The file is written
    even when no pair failed (header only), atomically (temporary file, then ``os.replace``).

    Args:
        output_dir: folder of the report (created if needed).
        filename: name of the CSV file.

    Example::

        FailureReportHandler("out").attach(evaluator)
        evaluator.run()
        evaluator.state.failures  # [{"fixed_image": ..., "moving_image": ..., "stage": "load", "reason": ...}]
    """

    def __init__(self, output_dir: str | os.PathLike, filename: str = "failures.csv") -> None:
        if not isinstance(filename, str) or not filename or os.path.basename(filename) != filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}.")
        self.output_dir = os.fspath(output_dir)
        self.filename = filename

    @property
    def path(self) -> str:
        """Path of the CSV report."""
        return os.path.join(self.output_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.started, Events.STARTED):
            engine.add_event_handler(Events.STARTED, self.started)
        if not engine.has_event_handler(self.iteration_completed, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        if not engine.has_event_handler(self.completed, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine: Engine) -> None:
        engine.state.failures = []

    def iteration_completed(self, engine: Engine) -> None:
        output = engine.state.output
        markers = output.get(FAILED_KEY, []) if isinstance(output, Mapping) else []
        for marker in markers:
            fixed, moving = (marker.get(k, "") for k in IMAGE_KEYS)
            record_failure(engine, fixed, moving, marker.get("stage", "load"), marker.get("reason", ""))

    def completed(self, engine: Engine) -> None:
        rows: list[dict[str, Any]] = list(getattr(engine.state, "failures", None) or [])
        def write(f: Any) -> None:
            writer = csv.DictWriter(f, fieldnames=FAILURE_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

        atomic_write(self.path, write)
        if rows:
            logger.warning("%d pair(s) failed; see %s", len(rows), self.path)
