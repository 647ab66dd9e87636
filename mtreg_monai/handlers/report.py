"""Evaluation report: one CSV row per registered pair and a Markdown summary (mean ± std, the paper's Table 1)."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from mtreg_monai.engines.utils import RegistrationKeys
from mtreg_monai.metrics import finite_summary
from mtreg_monai.utils import write_text_atomic

__all__ = ["RegistrationReportHandler", "format_mean_std", "summarise_columns"]

logger = logging.getLogger(__name__)

#: column-name prefix or name -> (label template, scale, decimals); ``{}`` in the template takes the rest of the name.
COLUMN_FORMATS: dict[str, tuple[str, float, int]] = {
    "dice_": ("Dice {} (%)", 100.0, 2),
    "asd_": ("ASD {} (mm)", 1.0, 2),
    "folding_percent": ("% \\|J\\| <= 0", 1.0, 3),
    "jacobian_std": ("std \\|J\\|", 1.0, 3),
    "log_jacobian_std": ("std log\\|J\\|", 1.0, 3),
    "seconds": ("time (s)", 1.0, 3),
}


def _column_format(name: str) -> tuple[str, float, int]:
    if name in COLUMN_FORMATS:
        return COLUMN_FORMATS[name]
    for prefix, (template, scale, decimals) in COLUMN_FORMATS.items():
        if prefix.endswith("_") and name.startswith(prefix):
            return template.format(name[len(prefix) :].replace("_", " ")), scale, decimals
    return name, 1.0, 4


def format_mean_std(mean: float, std: float, decimals: int) -> str:
    """``"mean ± std"`` with ``decimals`` digits; a NaN std (one value) is written ``–``, a NaN mean ``n/a``."""
    if math.isnan(mean):
        return "n/a"
    std_txt = "–" if math.isnan(std) else f"{std:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std_txt}"


def summarise_columns(table: np.ndarray, names: Sequence[str]) -> list[dict[str, Any]]:
    """
    Mean and sample standard deviation (n - 1) of every column over its finite values
    (:func:`~mtreg_monai.metrics.finite_summary`: NaN and ±inf left out and counted).

    Args:
        table: (num_pairs, num_columns) values in the metric's own units (Dice in [0, 1], ASD in mm, ...).
        names: column names, one per column of ``table``.

    Returns:
        one dict per column: ``name``, ``label``, ``mean``, ``std`` (scaled, e.g. Dice in %), ``text``
        (``"mean ± std"``), ``n`` (finite values used), ``nan`` and ``inf`` (values left out).

    Raises:
        ValueError: when ``table`` is not 2-d or ``names`` does not match its columns.
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(names):
        raise ValueError(f"table must have shape (num_pairs, {len(names)}) to match names, got {table.shape}.")
    out = []
    for c, name in enumerate(names):
        label, scale, decimals = _column_format(name)
        stats = finite_summary(table[:, c])
        mean, std = stats.mean * scale, stats.std * scale
        out.append(
            {
                "name": name,
                "label": label,
                "mean": mean,
                "std": std,
                "text": format_mean_std(mean, std, decimals),
                "n": stats.n,
                "nan": stats.nan,
                "inf": stats.inf,
            }
        )
    return out


def _file_names(value: Any, meta: Any, batch_size: int) -> list[str] | None:
    """The ``filename_or_obj`` of a collated ``MetaTensor`` (or of a ``<key>_meta_dict``), one per batch item."""
    names = None
    if isinstance(value, MetaTensor):
        names = value.meta.get("filename_or_obj")
    if names is None and isinstance(meta, Mapping):
        names = meta.get("filename_or_obj")
    if names is None:
        return None
    if isinstance(names, (str, os.PathLike)):
        names = [names]
    names = [os.path.basename(str(n)) for n in names]
    return names if len(names) == batch_size else None


class RegistrationReportHandler:
    """
    Writes an evaluation run's per-pair metric rows and their summary, for an evaluator with a per-pair metric.

    Attach it to an evaluator (e.g. :class:`~mtreg_monai.engines.RegistrationEvaluator`) whose metric
    ``metric_name`` leaves a (num_pairs, num_columns) table in ``engine.state.metric_details[metric_name]``, as
    :class:`~mtreg_monai.handlers.RegistrationMetricsHandler` does. For every iteration it records each pair's
    fixed and moving file names (``filename_or_obj`` of the batch's ``MetaTensor`` metadata, ``engine.state.batch``;
    ``pair_<n>`` when there is none) and the registration time (``engine.state.output[seconds_key]`` divided by the
    batch size). When the run completes it writes into ``output_dir``:

    - ``metrics.csv``: ``fixed``, ``moving``, the ``info_columns`` items (the same value on every row, e.g. the
      checkpoint that produced the rows), the metric's columns in their own units (Dice in [0, 1], ASD in mm,
      folding in %, std of the Jacobian determinant), ``seconds``; one row per pair, in the loader's order;
    - ``summary.md``: the ``info`` items and the number of pairs, then mean ± std of every column as one Table-1
      row (Dice in %, ASD in mm, % of |J| <= 0, std |J|, seconds) and as a per-column table that counts, for each
      column, the pairs used and the NaN / inf values left out (NaN: a label absent from both the fixed and the
      warped label maps; inf: an ASD of a label present in only one of them, whose Dice 0 is counted).

    Both files are written atomically, and the summary is logged at INFO. The std is the sample std (n - 1).
    The report is rewritten at the end of every run of the engine.

    Args:
        output_dir: folder of the two files (created when missing).
        metric_name: name of the evaluator's metric that fills ``engine.state.metric_details``.
        columns: column names of the metric's table, or the metric itself (anything with a ``keys`` attribute).
            ``None``: ``engine.state.metric_columns[metric_name]``, where
            :class:`~mtreg_monai.handlers.RegistrationMetricsHandler` puts its column names.
        info: extra ``{item: value}`` lines of the summary (e.g. checkpoint path, datalist section). Kept (copied) as
            the attribute :attr:`info`, read when the run completes, so a handler that runs earlier can fill it in
            (a checkpoint loader given ``record=report.info``).
        info_columns: items of ``info`` also written as columns of every row of ``metrics.csv`` (an item missing
            from ``info`` at the end of the run gives an empty cell).
        csv_name: file name of the per-pair table.
        summary_name: file name of the summary.
        title: first heading of the summary.
        image_keys: batch keys of the fixed and the moving image, whose metadata names the pair.
        seconds_key: output key of the registration time of the batch (s); absent: no ``seconds`` column.

    Example::

        evaluator = RegistrationEvaluator(
            "cpu", loader, net, key_val_metric={"val_mean_dice": RegistrationMetricsHandler(label_names={1: "liver"})}
        )
        RegistrationReportHandler("outputs/eval", metric_name="val_mean_dice").attach(evaluator)
        evaluator.run()  # outputs/eval/metrics.csv, outputs/eval/summary.md
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_name: str = "val_mean_dice",
        columns: Sequence[str] | Any | None = None,
        info: Mapping[str, Any] | None = None,
        info_columns: Sequence[str] = (),
        csv_name: str = "metrics.csv",
        summary_name: str = "summary.md",
        title: str = "Registration evaluation",
        image_keys: Sequence[str] = (RegistrationKeys.FIXED_IMAGE, RegistrationKeys.MOVING_IMAGE),
        seconds_key: str = RegistrationKeys.SECONDS,
    ) -> None:
        if not isinstance(output_dir, (str, os.PathLike)) or not str(output_dir):
            raise TypeError(f"output_dir must be a non-empty path, got {output_dir!r}.")
        if not isinstance(metric_name, str) or not metric_name:
            raise ValueError(f"metric_name must be a non-empty str, got {metric_name!r}.")
        if isinstance(image_keys, str) or len(image_keys) != 2:
            raise ValueError(f"image_keys must be (fixed_key, moving_key), got {image_keys!r}.")
        if info is not None and not isinstance(info, Mapping):
            raise TypeError(f"info must be a mapping of summary items, got {type(info).__name__}.")
        if isinstance(info_columns, str) or not all(isinstance(c, str) and c for c in info_columns):
            raise TypeError(f"info_columns must be a sequence of non-empty item names, got {info_columns!r}.")
        for arg, name in (("csv_name", csv_name), ("summary_name", summary_name)):
            if not isinstance(name, str) or not name or os.path.basename(name) != name:
                raise ValueError(f"{arg} must be a plain file name, got {name!r}.")
        self.output_dir = str(output_dir)
        self.metric_name = metric_name
        self.columns = columns
        self.info = dict(info or {})
        self.info_columns = tuple(info_columns)
        self.csv_name = csv_name
        self.summary_name = summary_name
        self.title = title
        self.image_keys = (str(image_keys[0]), str(image_keys[1]))
        self.seconds_key = str(seconds_key)
        self.pairs: list[tuple[str, str]] = []
        self.seconds: list[float] = []
        self.has_seconds = False

    @property
    def csv_path(self) -> str:
        return os.path.join(self.output_dir, self.csv_name)

    @property
    def summary_path(self) -> str:
        return os.path.join(self.output_dir, self.summary_name)

    def attach(self, engine: Engine) -> None:
        for event, fn in (
            (Events.EPOCH_STARTED, self.reset),
            (Events.ITERATION_COMPLETED, self.iteration_completed),
            (Events.COMPLETED, self.completed),
        ):
            if not engine.has_event_handler(fn, event):
                engine.add_event_handler(event, fn)

    def reset(self, engine: Engine | None = None) -> None:
        """Forget the recorded pairs (at the start of every epoch of the evaluator)."""
        self.pairs, self.seconds, self.has_seconds = [], [], False

    def iteration_completed(self, engine: Engine) -> None:
        """Record the names and the registration time of the batch's pairs."""
        batch = engine.state.batch if isinstance(engine.state.batch, Mapping) else {}
        output = engine.state.output if isinstance(engine.state.output, Mapping) else {}
        fixed_key, moving_key = self.image_keys
        image = batch.get(fixed_key, output.get(fixed_key))
        batch_size = int(image.shape[0]) if isinstance(image, torch.Tensor) and image.ndim > 0 else 1
        names = []
        for key in self.image_keys:
            found = _file_names(batch.get(key), batch.get(f"{key}_meta_dict"), batch_size)
            if found is None:
                found = _file_names(output.get(key), None, batch_size)
            names.append(found)
        start = len(self.pairs)
        for b in range(batch_size):
            default = f"pair_{start + b}"
            self.pairs.append((names[0][b] if names[0] else default, names[1][b] if names[1] else default))
        if self.seconds_key in output:
            self.has_seconds = True
            self.seconds += [float(output[self.seconds_key]) / batch_size] * batch_size
        else:
            self.seconds += [float("nan")] * batch_size

    def _column_names(self, engine: Engine, num_columns: int) -> list[str]:
        """The names of the metric table's columns: ``columns``, else ``engine.state.metric_columns[metric_name]``."""
        columns = self.columns
        if columns is None:
            columns = (getattr(engine.state, "metric_columns", None) or {}).get(self.metric_name)
        if columns is not None and not isinstance(columns, (list, tuple)) and hasattr(columns, "keys"):
            columns = columns.keys() if callable(columns.keys) else columns.keys
        if columns is None:
            logger.warning(
                "No column names for metric %r (pass columns=...): the report uses column_<i>.", self.metric_name
            )
            return [f"column_{i}" for i in range(num_columns)]
        names = [str(c) for c in columns]
        if len(names) != num_columns:
            raise ValueError(
                f"columns has {len(names)} names {names} but metric_details[{self.metric_name!r}] has "
                f"{num_columns} columns."
            )
        return names

    def completed(self, engine: Engine) -> None:
        """Write ``metrics.csv`` and ``summary.md`` and log the summary.

        Raises:
            ValueError: when ``engine.state.metric_details`` has no table for ``metric_name``, or its number of
                columns differs from the column names.
        """
        details = getattr(engine.state, "metric_details", None) or {}
        if self.metric_name not in details:
            raise ValueError(
                f"engine.state.metric_details has no {self.metric_name!r} (it has {sorted(details)}): attach a "
                "per-pair metric such as RegistrationMetricsHandler under that name."
            )
        table = details[self.metric_name]
        if table is None:  # no pair was evaluated
            names = self._column_names(engine, 0) if self.columns is not None else []
            table = np.zeros((0, len(names)))
        else:
            table = torch.as_tensor(table).detach().cpu().double().numpy().reshape(len(table), -1)
            names = self._column_names(engine, table.shape[1])
        pairs, seconds = self.pairs, self.seconds
        if len(pairs) != table.shape[0]:
            logger.warning(
                "%d pairs were recorded but metric %r has %d rows: the pairs are named pair_<n>, times left out.",
                len(pairs),
                self.metric_name,
                table.shape[0],
            )
            pairs = [(f"pair_{i}", f"pair_{i}") for i in range(table.shape[0])]
            seconds = [float("nan")] * table.shape[0]
        if self.has_seconds:
            table = np.concatenate([table, np.asarray(seconds, dtype=np.float64).reshape(-1, 1)], axis=1)
            names = names + ["seconds"]
        constants = {c: self.info.get(c, "") for c in self.info_columns}
        write_text_atomic(self.csv_path, self._csv_text(pairs, table, names, constants))
        summary = self.summary_text(table, names)
        write_text_atomic(self.summary_path, summary)
        logger.info("Evaluation summary (%s, %s):\n%s", self.summary_path, self.csv_path, summary)

    @staticmethod
    def _csv_text(
        pairs: Sequence[tuple[str, str]], table: np.ndarray, names: Sequence[str], constants: Mapping[str, Any]
    ) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["fixed", "moving", *constants, *names])
        for (fixed, moving), row in zip(pairs, table):
            writer.writerow([fixed, moving, *constants.values(), *(f"{v:.8g}" for v in row)])
        return buf.getvalue()

    def summary_text(self, table: np.ndarray, names: Sequence[str]) -> str:
        """The Markdown summary of a (num_pairs, num_columns) table (see the class docstring)."""
        stats = summarise_columns(table, names)
        lines = [f"# {self.title}", "", "| item | value |", "|---|---|", f"| pairs | {table.shape[0]} |"]
        for k, v in self.info.items():
            lines.append(f"| {k} | `{v}` |" if isinstance(v, (str, os.PathLike)) else f"| {k} | {v} |")
        lines += ["", "## Mean ± std over the pairs (Table 1 columns)", ""]
        if stats:
            lines += ["| " + " | ".join(s["label"] for s in stats) + " |", "|" + "---|" * len(stats)]
            lines += ["| " + " | ".join(s["text"] for s in stats) + " |"]
        lines += ["", "## Per column", "", "| column | mean ± std | pairs used | NaN skipped | inf skipped |"]
        lines += ["|---|---|---|---|---|"]
        lines += [f"| {s['label']} | {s['text']} | {s['n']} | {s['nan']} | {s['inf']} |" for s in stats]
        lines += [
            "",
            "Mean and sample std (n - 1) over the pairs with a finite value. NaN (a label absent from both the fixed "
            "and the warped label map) and inf (an ASD whose label is in only one of them; its Dice 0 is counted) are "
            "left out of that column's mean and counted above. Dice in %, ASD in mm (symmetric average surface "
            "distance), % of voxels with Jacobian determinant <= 0, std of the determinant, registration time per "
            f"pair in s. Per-pair values: `{self.csv_name}` (Dice there in [0, 1]).",
            "",
        ]
        return "\n".join(lines)
