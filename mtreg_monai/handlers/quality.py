"""A quality-control record of an inference run: one CSV row per registered pair, for triage."""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events

from mtreg_monai.engines.utils import RegistrationKeys
from mtreg_monai.handlers.weighting import uncertain_fraction
from mtreg_monai.metrics.jacobian import compute_folding_percentage, compute_jacobian_std
from mtreg_monai.utils import atomic_write

__all__ = ["QC_COLUMNS", "QC_MC_COLUMNS", "QualityControlHandler"]

Keys = RegistrationKeys
logger = logging.getLogger(__name__)

#: columns of the quality-control CSV, in order.
QC_COLUMNS = (
    "fixed_image",
    "moving_image",
    "seconds",
    "total_seconds",
    "folding_percent",
    "jacobian_std",
    "median_u_phi",
    "uncertain_fraction_phi",
)
#: the columns that need Monte Carlo dropout passes; empty when the run computed no ``u_phi``.
QC_MC_COLUMNS = ("median_u_phi", "uncertain_fraction_phi")


def _file_names(engine: Engine, key: str, batch_size: int) -> list[str]:
    """The file name of ``key`` for each pair of the batch, from the tensors' metadata ("" when unknown)."""
    for source in (engine.state.output, engine.state.batch):
        value = source.get(key) if isinstance(source, Mapping) else None
        names = getattr(value, "meta", {}).get("filename_or_obj") if value is not None else None
        if names is None:
            continue
        names = [names] if isinstance(names, (str, os.PathLike)) else list(names)
        if len(names) == batch_size:
            return [str(n) if n else "" for n in names]
    return [""] * batch_size


def _format(value: float | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return "nan" if math.isnan(value) else f"{value:.6g}"


class QualityControlHandler:
    """
    Writes ``output_dir/filename``, one row per registered pair, so that a deployment can flag pairs for review.

    After every evaluator iteration (a :class:`~mtreg_monai.engines.RegistrationEvaluator`) it adds one row per pair
    of the batch, with the columns :data:`QC_COLUMNS`:

    - ``fixed_image``, ``moving_image``: the file names (from the images' metadata; empty when unknown);
    - ``seconds``: the evaluator's wall time of the registration (network and warps, the output's ``seconds``)
      divided by the number of pairs in the batch; at batch size 1, the pair's time;
    - ``total_seconds``: the wall time from the start of the iteration (the batch loaded) to this handler, divided
      likewise: moving to the device, Monte Carlo passes, registration and the handlers attached before this one
      (in the bundle, the writer);
    - ``folding_percent``, ``jacobian_std``: % of voxels with Jacobian determinant <= 0 and the population standard
      deviation of the determinant of the displacement ``ddf``, over the whole network grid (the preprocessed fixed
      image: reoriented, padded to multiples of 16), as
      :func:`~mtreg_monai.metrics.compute_folding_percentage` and :func:`~mtreg_monai.metrics.compute_jacobian_std`
      (NaN for a non-finite displacement);
    - ``median_u_phi``: the median of the transformation uncertainty ``u_phi`` (:class:`MCUncertaintyHandler`,
      coefficient of variation of the MC displacements) over its 3 channels and all voxels (a median: with the
      paper's ``|sigma / mu|`` a few voxels where the mean displacement is near 0 would dominate a mean);
    - ``uncertain_fraction_phi``: the fraction, in [0, 1], of the elements of ``u_phi`` (3 channels x voxels) above
      ``tau``, :func:`~mtreg_monai.handlers.uncertain_fraction`: with ``tau`` = the bundle's ``tau1`` this is exactly
      the fraction that sets the spatial weight ``lambda_phi = k1 * fraction`` in training
      (:class:`AdaptiveWeightHandler`), where it is logged under the same name.

    The last two are empty when the output holds no ``u_phi`` (no :class:`MCUncertaintyHandler` attached, the
    bundle's ``mc_uncertainty`` false). Pairs that failed to load produce no row (see ``failures.csv``). The file is
    rewritten atomically after every iteration (a run stopped half-way leaves the rows so far) and written with
    its header at the start of a run, so it exists even when no pair was registered. The rows, with numbers as
    floats and empty columns as ``None``, are also in ``engine.state.quality_control``.

    Args:
        output_dir: folder of the CSV (created if needed).
        tau: threshold of ``u_phi`` for ``uncertain_fraction_phi``, >= 0 (the bundle's ``tau1``, 0.1).
        filename: name of the CSV file.
        ddf_key: output key of the displacement (B, 3, H, W, D), voxels.
        uncertainty_key: output key of the transformation uncertainty (B, 3, H, W, D).
        fixed_key: key of the fixed image (its metadata gives the file name).
        moving_key: key of the moving image.

    Example::

        QualityControlHandler("out", tau=0.1).attach(evaluator)
        evaluator.run()
        evaluator.state.quality_control[0]["folding_percent"]  # e.g. 0.0
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tau: float = 0.1,
        filename: str = "quality_control.csv",
        ddf_key: str = Keys.DDF,
        uncertainty_key: str = Keys.UNCERTAINTY_PHI,
        fixed_key: str = Keys.FIXED_IMAGE,
        moving_key: str = Keys.MOVING_IMAGE,
    ) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau >= 0:
            raise ValueError(f"tau must be a number >= 0, got {tau!r}.")
        if not isinstance(filename, str) or not filename or os.path.basename(filename) != filename:
            raise ValueError(f"filename must be a plain file name, got {filename!r}.")
        self.output_dir = os.fspath(output_dir)
        self.tau = float(tau)
        self.filename = filename
        self.ddf_key, self.uncertainty_key = str(ddf_key), str(uncertainty_key)
        self.fixed_key, self.moving_key = str(fixed_key), str(moving_key)
        self._iteration_start = time.perf_counter()

    @property
    def path(self) -> str:
        """Path of the CSV file."""
        return os.path.join(self.output_dir, self.filename)

    def attach(self, engine: Engine) -> None:
        for event, handler in (
            (Events.STARTED, self.started),
            (Events.ITERATION_STARTED, self.iteration_started),
            (Events.ITERATION_COMPLETED, self),
        ):
            if not engine.has_event_handler(handler, event):
                engine.add_event_handler(event, handler)

    def started(self, engine: Engine) -> None:
        engine.state.quality_control = []
        self.write(engine.state.quality_control)

    def iteration_started(self, engine: Engine) -> None:
        self._iteration_start = time.perf_counter()

    def __call__(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, Mapping) or self.ddf_key not in out:  # a batch of pairs that failed to load
            return
        total = time.perf_counter() - self._iteration_start
        ddf = torch.as_tensor(out[self.ddf_key]).detach()
        batch_size = ddf.shape[0]
        folding = compute_folding_percentage(ddf).cpu().tolist()
        jac_std = compute_jacobian_std(ddf).cpu().tolist()
        median_u: list[float | None] = [None] * batch_size
        fraction: list[float | None] = [None] * batch_size
        if self.uncertainty_key in out:
            u = torch.as_tensor(out[self.uncertainty_key]).detach().float()
            median_u = u.flatten(1).median(dim=1).values.cpu().tolist()
            fraction = uncertain_fraction(u, self.tau).cpu().tolist()
        seconds = out.get(Keys.SECONDS)
        seconds = None if seconds is None else float(seconds) / batch_size
        fixed = _file_names(engine, self.fixed_key, batch_size)
        moving = _file_names(engine, self.moving_key, batch_size)
        rows = getattr(engine.state, "quality_control", None)
        if rows is None:
            rows = engine.state.quality_control = []
        for b in range(batch_size):
            rows.append(
                {
                    "fixed_image": fixed[b],
                    "moving_image": moving[b],
                    "seconds": seconds,
                    "total_seconds": total / batch_size,
                    "folding_percent": float(folding[b]),
                    "jacobian_std": float(jac_std[b]),
                    "median_u_phi": median_u[b],
                    "uncertain_fraction_phi": fraction[b],
                }
            )
        self.write(rows)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` (the header first) to :attr:`path`, atomically."""

        def write(f: Any) -> None:
            writer = csv.writer(f)
            writer.writerow(QC_COLUMNS)
            writer.writerows([_format(row.get(c)) for c in QC_COLUMNS] for row in rows)

        atomic_write(self.path, write)
