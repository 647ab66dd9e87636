"""Figures written at the end of training: the weights over the steps, and one registered pair."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.networks.blocks import Warp
from monai.networks.utils import eval_mode
from monai.utils import optional_import

from mtreg_monai.engines.utils import PrepareRegistrationBatch, RegistrationKeys
from mtreg_monai.handlers.uncertainty import coefficient_of_variation, mc_predictions
from mtreg_monai.metrics import jacobian_determinant
from mtreg_monai.utils import atomic_path, atomic_write

plt, has_matplotlib = optional_import("matplotlib.pyplot")

__all__ = ["WeightCurveHandler", "RegistrationFigureHandler", "save_weight_curves", "save_pair_figure"]

logger = logging.getLogger(__name__)


def _savefig(fig: Any, path: str) -> None:
    """Write a figure atomically (:func:`~mtreg_monai.utils.atomic_path`) in the format of its extension, close it."""
    try:
        with atomic_path(path, suffix=os.path.splitext(path)[1] or ".png") as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def save_weight_curves(history: Mapping[str, Sequence[float]], steps: Sequence[int], path: str) -> None:
    """
    Plot each weight's value per training step (the paper's Fig. 3 b/d) into a PNG.

    Args:
        history: ``{name: values}``, one value per step.
        steps: the iteration numbers.
        path: output PNG path.
    """
    if not has_matplotlib:
        logger.warning("matplotlib is not installed: %s not written (pip install 'mtreg_monai[bundle]').", path)
        return
    names = [n for n in history if len(history[n])]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(5 * max(len(names), 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(steps, history[name], lw=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    _savefig(fig, path)


class WeightCurveHandler:
    """
    Records per-iteration scalars of the trainer's output (default ``lambda_phi``, ``lambda_c``) and, when training
    completes, writes them as a CSV (``<name>.csv``) and a PNG plot (``<name>.png``) in ``output_dir``.

    Has ``state_dict``/``load_state_dict`` so a resumed run keeps the curves from the start.

    Args:
        output_dir: folder of the figure.
        keys: output keys to record; a (B,) value is averaged over the batch.
        name: file name stem.
    """

    def __init__(
        self,
        output_dir: str,
        keys: Sequence[str] = (RegistrationKeys.LAMBDA_PHI, RegistrationKeys.LAMBDA_C),
        name: str = "weights",
    ) -> None:
        if isinstance(keys, str) or not keys:
            raise ValueError(f"keys must be a non-empty sequence of output keys, got {keys!r}.")
        self.output_dir = str(output_dir)
        self.keys = [str(k) for k in keys]
        self.name = name
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {k: [] for k in self.keys}

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self.record, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self.record)
        if not engine.has_event_handler(self.write, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self.write)

    def record(self, engine: Engine) -> None:
        out = engine.state.output
        if not isinstance(out, Mapping):
            return
        self.steps.append(int(engine.state.iteration))
        for k in self.keys:
            value = out.get(k)
            self.history[k].append(float("nan") if value is None else float(torch.as_tensor(value).float().mean()))

    def write(self, engine: Engine | None = None) -> None:
        def write_csv(f: Any) -> None:
            writer = csv.writer(f)
            writer.writerow(["iteration", *self.keys])
            writer.writerows([s, *(self.history[k][i] for k in self.keys)] for i, s in enumerate(self.steps))

        atomic_write(os.path.join(self.output_dir, f"{self.name}.csv"), write_csv)
        save_weight_curves(self.history, self.steps, os.path.join(self.output_dir, f"{self.name}.png"))

    def state_dict(self) -> dict:
        return {"steps": torch.as_tensor(self.steps, dtype=torch.int64), **{
            f"history.{k}": torch.as_tensor(v, dtype=torch.float64) for k, v in self.history.items()}}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.steps = [int(s) for s in state_dict["steps"]]
        self.history = {k: [float(v) for v in state_dict.get(f"history.{k}", [])] for k in self.keys}


def save_pair_figure(panels: Mapping[str, np.ndarray], path: str, cmaps: Mapping[str, str] | None = None) -> None:
    """Write 2-D panels side by side (one axial slice each) into a PNG with a colour bar for each."""
    if not has_matplotlib:
        logger.warning("matplotlib is not installed: %s not written (pip install 'mtreg_monai[bundle]').", path)
        return
    cmaps = dict(cmaps or {})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, img) in zip(axes[0], panels.items()):
        img = np.asarray(img, dtype=np.float64)
        finite = img[np.isfinite(img)]
        top = float(np.percentile(finite, 99.5)) if finite.size else None  # |sigma/mu| has a few huge values
        im = ax.imshow(np.rot90(img), cmap=cmaps.get(title, "gray"), vmax=top)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    _savefig(fig, path)


class RegistrationFigureHandler:
    """
    When training completes, registers one pair and writes a PNG of its middle axial slice: fixed, moving, warped,
    Jacobian determinant, transformation uncertainty (mean of ``u_phi`` over the channels) and appearance
    uncertainty ``u_image`` from ``num_samples`` MC dropout passes (the paper's Figs. 2 and 3 a/c).

    Args:
        network: the network that registers (the student).
        pair: one collated pair dictionary (``fixed_image``, ``moving_image``: (1, 1, H, W, D)) or a data loader /
            dataset whose first item is used.
        output_path: PNG path.
        uncertainty_network: network for the MC samples; default ``network`` (pass the teacher to show its maps).
        num_samples: MC samples, >= 2.
        ddf_floor: see :class:`~mtreg_monai.handlers.MCUncertaintyHandler`.
        image_floor: see :class:`~mtreg_monai.handlers.MCUncertaintyHandler`.
        device: device to run on; default the engine's.
    """

    def __init__(
        self,
        network: nn.Module,
        pair: Any,
        output_path: str,
        uncertainty_network: nn.Module | None = None,
        num_samples: int = 6,
        ddf_floor: float | None = None,
        image_floor: float | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {num_samples}.")
        self.network = network
        self.pair = pair
        self.output_path = str(output_path)
        self.uncertainty_network = uncertainty_network
        self.num_samples = num_samples
        self.ddf_floor = ddf_floor
        self.image_floor = image_floor
        self.device = device

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.COMPLETED):
            engine.add_event_handler(Events.COMPLETED, self)

    def _first_pair(self) -> Mapping[str, Any]:
        pair = self.pair
        if isinstance(pair, Mapping):
            return pair
        item = next(iter(pair))
        if isinstance(item, Mapping) and torch.as_tensor(item[RegistrationKeys.FIXED_IMAGE]).ndim == 4:
            item = {k: v.unsqueeze(0) if isinstance(v, torch.Tensor) else v for k, v in item.items()}  # dataset item
        return item

    def __call__(self, engine: Engine | None = None) -> None:
        device = self.device or (engine.state.device if engine is not None else "cpu")
        batch = PrepareRegistrationBatch()(self._first_pair(), device)
        moving, fixed = batch[RegistrationKeys.MOVING_IMAGE], batch[RegistrationKeys.FIXED_IMAGE]
        warp = Warp()
        with eval_mode(self.network):
            ddf = self.network(torch.cat([moving, fixed], dim=1))
            warped = warp(moving, ddf)
        jac = jacobian_determinant(ddf)
        unet = self.uncertainty_network or self.network
        with eval_mode(unet):
            ddfs, warped_samples = mc_predictions(unet, moving, fixed, self.num_samples, warp)
        u_phi = coefficient_of_variation(ddfs, self.ddf_floor)[1].mean(dim=1, keepdim=True)
        u_img = coefficient_of_variation(warped_samples, self.image_floor)[1]
        k = fixed.shape[-1] // 2

        def axial(t: torch.Tensor) -> np.ndarray:
            return t[0, 0, :, :, k].detach().float().cpu().numpy()

        panels = {
            "fixed (MR)": axial(fixed),
            "moving (CT)": axial(moving),
            "warped moving": axial(warped),
            "Jacobian determinant": axial(jac),
            "U_phi (mean over axes)": axial(u_phi),
            "U_I": axial(u_img),
        }
        cmaps = {"Jacobian determinant": "coolwarm", "U_phi (mean over axes)": "magma", "U_I": "magma"}
        save_pair_figure(panels, self.output_path, cmaps)
