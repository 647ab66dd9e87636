"""Registration trainer: one student step of the (mean-teacher) registration objective as a MONAI engine."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, EventEnum
from ignite.metrics import Metric
from monai.engines import SupervisedTrainer, Trainer
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.inferers import Inferer
from monai.networks.blocks import Warp
from monai.transforms import Transform
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader

from mtreg_monai.engines.utils import PrepareRegistrationBatch, RegistrationEvents, RegistrationKeys, per_pair

__all__ = ["RegistrationTrainer"]

Keys = RegistrationKeys


def _pair_weight(value: Any, default: float, batch_size: int, ref: torch.Tensor, name: str) -> torch.Tensor:
    """A (B,) weight from a handler's value (scalar or (B,)) or the fixed default; never carries a gradient."""
    w = torch.as_tensor(default if value is None else value, dtype=ref.dtype, device=ref.device).detach()
    if w.ndim == 0:
        return w.expand(batch_size)
    if w.shape != (batch_size,):
        raise ValueError(f"{name} must be a scalar or a ({batch_size},) tensor, got shape {tuple(w.shape)}.")
    return w


class RegistrationTrainer(SupervisedTrainer):
    """
    Trains a registration network on fixed/moving pairs with the objective of Xu et al. (MICCAI 2022), Eq. 3::

        L = S(I_ws, I_f) + lambda_phi * R(phi_s) + lambda_c * C(I_ws, I_wt)

    with ``S`` the similarity loss (MIND-SSC), ``R`` the smoothness of the student's displacement ``phi_s``,
    ``C`` the temporal consistency between the student's warped image ``I_ws`` and the teacher's ``I_wt``.

    One iteration:

    1. ``prepare_batch`` puts the pair on the device; ``engine.state.output`` holds it
       (keys of :class:`~mtreg_monai.engines.RegistrationKeys`).
    2. :attr:`RegistrationEvents.TEACHER_PASS <mtreg_monai.engines.RegistrationEvents>`: teacher handlers add
       ``teacher_warped_image`` and uncertainty maps (:class:`~mtreg_monai.handlers.MCUncertaintyHandler`).
    3. ``RegistrationEvents.REG_WEIGHTING``: weighting handlers add ``lambda_phi`` / ``lambda_c`` per pair
       (:class:`~mtreg_monai.handlers.AdaptiveWeightHandler`); without one, the fixed ``lambda_phi`` and
       ``lambda_c`` given here are used. A handler may also set ``reg_weight`` (B,), which is then passed to the
       network as its second argument (conditional registration, CIR-DM).
    4. Student forward ``ddf = network(cat(moving, fixed))``, ``warped = Warp(moving, ddf)``
       (``IterationEvents.FORWARD_COMPLETED``), the three loss terms per pair and their weighted sum
       (``LOSS_COMPLETED``), backward (``BACKWARD_COMPLETED``), optimiser step, ``MODEL_COMPLETED``.
       A non-finite loss skips backward and step, sets ``engine.state.output["nonfinite"] = True`` (so the
       EMA teacher skips its update too), and is logged with the pair's file names; more than
       ``max_nonfinite_steps`` in a row stops training with a ``RuntimeError``.

    ``engine.state.output`` then holds, besides the inputs, ``ddf``, ``warped_image``, and the detached scalars
    ``loss``, ``loss_sim``, ``loss_smooth``, ``loss_cons`` and (B,) tensors ``lambda_phi``, ``lambda_c``:
    log them with :func:`~mtreg_monai.engines.loss_terms` as ``output_transform`` of ``StatsHandler``.

    Args:
        device: device of the networks.
        max_epochs: number of epochs.
        train_data_loader: loader of pair dictionaries (keys ``fixed_image``, ``moving_image``).
        network: the student, ``(B, 2, H, W, D) -> ddf (B, 3, H, W, D)`` in voxels.
        inferer: runs ``network`` on the moving/fixed input (and the regularisation weight of a conditional
            network); default ``SimpleInferer()``.
        optimizer: optimiser of the student.
        similarity_loss: ``S(warped, fixed)``, e.g. :class:`~mtreg_monai.losses.MINDSSCLoss`; build losses with
            ``reduction="none"`` so that per-pair weights apply per pair (a scalar loss is used for every pair).
        smoothness_loss: ``R(ddf)``, e.g. :class:`~mtreg_monai.losses.SmoothnessLoss`.
        consistency_loss: ``C(warped, teacher_warped)``, e.g. ``torch.nn.MSELoss(reduction="none")``; ``None`` for
            no consistency term. The term is computed only when a teacher handler provided ``teacher_warped_image``.
        lambda_phi: fixed smoothness weight, used when no handler sets ``lambda_phi``.
        lambda_c: fixed consistency weight, used when no handler sets ``lambda_c``.
        warp_mode: interpolation of the moving image, ``"bilinear"`` (MONAI ``Warp``).
        warp_padding_mode: padding of the moving image outside its grid (MONAI ``Warp``).
        max_nonfinite_steps: consecutive non-finite losses tolerated before training stops.
        amp: automatic mixed precision for the student (and, through
            :class:`~mtreg_monai.handlers.MCUncertaintyHandler`, the teacher's MC passes): ``torch.autocast`` on the
            engine's device, bfloat16 on a CPU; the network's output convolution stays float32. The bundle's default is
            :func:`~mtreg_monai.utils.fast_mixed_precision` of the device.
        other args: as :class:`monai.engines.SupervisedTrainer`; ``prepare_batch`` defaults to
            :class:`~mtreg_monai.engines.PrepareRegistrationBatch`, ``decollate`` to ``False``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        optimizer: Optimizer,
        similarity_loss: Callable,
        smoothness_loss: Callable,
        consistency_loss: Callable | None = None,
        lambda_phi: float = 1.0,
        lambda_c: float = 0.0,
        warp_mode: str = "bilinear",
        warp_padding_mode: str = "border",
        max_nonfinite_steps: int = 10,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        optim_set_to_none: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        for name, value in (("lambda_phi", lambda_phi), ("lambda_c", lambda_c)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        if isinstance(max_nonfinite_steps, bool) or not isinstance(max_nonfinite_steps, int) or max_nonfinite_steps < 0:
            raise ValueError(f"max_nonfinite_steps must be a non-negative int, got {max_nonfinite_steps!r}.")
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            loss_function=similarity_loss,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=PrepareRegistrationBatch() if prepare_batch is None else prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_train_metric=key_train_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            train_handlers=train_handlers,
            amp=amp,
            event_names=[RegistrationEvents, *(event_names or [])],
            event_to_attr=event_to_attr,
            decollate=decollate,
            optim_set_to_none=optim_set_to_none,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.similarity_loss = similarity_loss
        self.smoothness_loss = smoothness_loss
        self.consistency_loss = consistency_loss
        self.lambda_phi = float(lambda_phi)
        self.lambda_c = float(lambda_c)
        self.warp = Warp(mode=warp_mode, padding_mode=warp_padding_mode)
        self.max_nonfinite_steps = max_nonfinite_steps
        self.nonfinite_in_a_row = 0
        self.logger = logging.getLogger(__name__)

    def run(self) -> None:  # type: ignore[override]
        """
        Run the training (MONAI's ``Trainer.run``), with a gradient scaler only where one is needed: float16
        autocast on CUDA. CPU autocast computes in bfloat16, whose float32 exponent range needs no loss scaling
        (MONAI would build a ``torch.cuda.amp.GradScaler`` that warns and disables itself on a CPU).
        """
        cuda = torch.device(self.state.device).type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and cuda else None
        super(Trainer, self).run()  # Workflow.run: Trainer.run would replace the scaler

    def _iteration(self, engine: RegistrationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        fixed, moving = batch[Keys.FIXED_IMAGE], batch[Keys.MOVING_IMAGE]
        b = fixed.shape[0]
        engine.state.output = out = dict(batch)

        engine.network.train()
        engine.fire_event(RegistrationEvents.TEACHER_PASS)
        engine.fire_event(RegistrationEvents.REG_WEIGHTING)
        lambda_phi = _pair_weight(out.get(Keys.LAMBDA_PHI), self.lambda_phi, b, fixed, "lambda_phi")
        lambda_c = _pair_weight(out.get(Keys.LAMBDA_C), self.lambda_c, b, fixed, "lambda_c")
        out[Keys.LAMBDA_PHI], out[Keys.LAMBDA_C] = lambda_phi, lambda_c

        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast(
            device_type=torch.device(engine.state.device).type, enabled=engine.amp, **engine.amp_kwargs
        ):
            x = torch.cat([moving, fixed], dim=1)
            reg_weight = out.get(Keys.REG_WEIGHT)
            args = () if reg_weight is None else (reg_weight,)
            ddf = engine.inferer(x, engine.network, *args)
            warped = self.warp(moving, ddf)
            out[Keys.DDF], out[Keys.WARPED_IMAGE] = ddf, warped
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss_sim = per_pair(self.similarity_loss(warped, fixed), b)
            loss_smooth = per_pair(self.smoothness_loss(ddf), b)
            teacher_warped = out.get(Keys.TEACHER_WARPED_IMAGE)
            if self.consistency_loss is not None and teacher_warped is not None:
                loss_cons = per_pair(self.consistency_loss(warped, teacher_warped.detach()), b)
            else:  # no consistency term this step: its weight is 0, not the configured fixed value
                loss_cons = torch.zeros_like(loss_sim)
                lambda_c = torch.zeros_like(lambda_c)
                out[Keys.LAMBDA_C] = lambda_c
            loss = (loss_sim + lambda_phi * loss_smooth + lambda_c * loss_cons).mean()
        out[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if torch.isfinite(loss):
            self.nonfinite_in_a_row = 0
            out[Keys.NONFINITE] = False
            if engine.amp and engine.scaler is not None:
                engine.scaler.scale(loss).backward()
                engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                loss.backward()
                engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
                engine.optimizer.step()
        else:
            self._on_nonfinite(engine, batchdata, loss)
        out[Keys.LOSS] = loss.detach()
        out[Keys.LOSS_SIM], out[Keys.LOSS_SMOOTH] = loss_sim.detach().mean(), loss_smooth.detach().mean()
        out[Keys.LOSS_CONS] = loss_cons.detach().mean()
        out[Keys.DDF], out[Keys.WARPED_IMAGE] = ddf.detach(), warped.detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out

    def _on_nonfinite(self, engine: RegistrationTrainer, batchdata: Any, loss: torch.Tensor) -> None:
        engine.state.output[Keys.NONFINITE] = True
        self.nonfinite_in_a_row += 1
        names = {}
        for key in (Keys.FIXED_IMAGE, Keys.MOVING_IMAGE):
            meta = getattr(batchdata.get(key), "meta", {}) if isinstance(batchdata, dict) else {}
            names[str(key)] = meta.get("filename_or_obj", "unknown")
        self.logger.warning(
            "Non-finite loss %s at iteration %d for pair %s: the student and the teacher are not updated "
            "(%d in a row).",
            loss.item(),
            engine.state.iteration,
            names,
            self.nonfinite_in_a_row,
        )
        if self.nonfinite_in_a_row > self.max_nonfinite_steps:
            raise RuntimeError(
                f"{self.nonfinite_in_a_row} non-finite losses in a row "
                f"(max_nonfinite_steps={self.max_nonfinite_steps}); "
                f"last pair {names}. Check the input images and the learning rate."
            )
