"""Registration evaluator: the student registers each pair; metric handlers read the warped labels."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from ignite.engine import Engine, EventEnum
from ignite.metrics import Metric
from monai.engines import SupervisedEvaluator
from monai.engines.utils import IterationEvents, default_metric_cmp_fn
from monai.inferers import Inferer
from monai.networks.blocks import Warp
from monai.transforms import Transform
from monai.utils import ForwardMode
from torch.utils.data import DataLoader

from mtreg_monai.data.robust import FAILED_KEY
from mtreg_monai.engines.utils import PrepareRegistrationBatch, RegistrationEvents, RegistrationKeys

__all__ = ["RegistrationEvaluator"]

Keys = RegistrationKeys


class RegistrationEvaluator(SupervisedEvaluator):
    """
    Runs a registration network on fixed/moving pairs without gradients (MONAI ``SupervisedEvaluator``).

    For every batch, ``engine.state.output`` holds the inputs and:

    - ``ddf``: (B, 3, H, W, D) displacement in voxels, ``warped(x) = moving(x + ddf(x))``;
    - ``warped_image``: the moving image warped with ``image_warp_mode`` (bilinear);
    - ``warped_label``: when ``moving_label`` is given, the moving label map warped with nearest-neighbour
      interpolation (labels keep their integer values; no gradient is needed at evaluation);
    - ``seconds``: wall time of the registration of the batch (network and warps, on CUDA synchronised), s.
    - ``failed``: the failure markers of pairs that could not be loaded, when the loader uses
      :class:`~mtreg_monai.data.FailSafeDataset` and :func:`~mtreg_monai.data.fail_safe_collate`; a batch of
      failed pairs only skips the network and its output is ``{"failed": [markers]}``.

    Before the registration it fires :attr:`RegistrationEvents.TEACHER_PASS
    <mtreg_monai.engines.RegistrationEvents>`, so that :class:`~mtreg_monai.handlers.MCUncertaintyHandler`
    attached here adds Monte Carlo uncertainty maps (``u_phi``, ``u_image``) of the network it is given.

    Attach :class:`~mtreg_monai.handlers.RegistrationMetricsHandler` (per-organ Dice, ASD, Jacobian figures) as
    ``key_val_metric`` or in ``val_handlers``; the mean Dice is the usual key metric for the best checkpoint.

    Args:
        device: device of the network.
        val_data_loader: loader of pair dictionaries.
        network: ``(B, 2, H, W, D) -> ddf (B, 3, H, W, D)``.
        inferer: runs ``network`` on the ``(B, 2, H, W, D)`` moving/fixed input and returns the displacement;
            default ``SimpleInferer()`` (the whole volume at once). A ``SlidingWindowInferer`` registers volumes
            larger than memory window by window and blends the windows' displacements.
        image_warp_mode: interpolation of the moving image.
        warp_padding_mode: padding outside the moving grid.
        other args: as :class:`monai.engines.SupervisedEvaluator`; ``prepare_batch`` defaults to
            :class:`~mtreg_monai.engines.PrepareRegistrationBatch`, ``decollate`` to ``False``.
    """

    def __init__(
        self,
        device: str | torch.device,
        val_data_loader: Iterable | DataLoader,
        network: torch.nn.Module,
        image_warp_mode: str = "bilinear",
        warp_padding_mode: str = "border",
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable | None = None,
        iteration_update: Callable[[Engine, Any], Any] | None = None,
        inferer: Inferer | None = None,
        postprocessing: Transform | None = None,
        key_val_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable = default_metric_cmp_fn,
        val_handlers: Sequence | None = None,
        amp: bool = False,
        mode: ForwardMode | str = ForwardMode.EVAL,
        event_names: list[str | EventEnum | type[EventEnum]] | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
        to_kwargs: dict | None = None,
        amp_kwargs: dict | None = None,
    ) -> None:
        super().__init__(
            device=torch.device(device),
            val_data_loader=val_data_loader,
            network=network,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=PrepareRegistrationBatch() if prepare_batch is None else prepare_batch,
            iteration_update=iteration_update,
            inferer=inferer,
            postprocessing=postprocessing,
            key_val_metric=key_val_metric,
            additional_metrics=additional_metrics,
            metric_cmp_fn=metric_cmp_fn,
            val_handlers=val_handlers,
            amp=amp,
            mode=mode,
            event_names=[RegistrationEvents, *(event_names or [])],
            event_to_attr=event_to_attr,
            decollate=decollate,
            to_kwargs=to_kwargs,
            amp_kwargs=amp_kwargs,
        )
        self.image_warp = Warp(mode=image_warp_mode, padding_mode=warp_padding_mode)
        self.label_warp = Warp(mode="nearest", padding_mode=warp_padding_mode)

    def _iteration(self, engine: RegistrationEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        failed = batchdata.get(FAILED_KEY, []) if isinstance(batchdata, dict) else []
        if failed and set(batchdata) == {FAILED_KEY}:  # only pairs that failed to load (FailSafeDataset): no network
            engine.state.output = {FAILED_KEY: list(failed)}
            return engine.state.output
        if failed:
            batchdata = {k: v for k, v in batchdata.items() if k != FAILED_KEY}
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        engine.state.output = out = dict(batch)
        if failed:
            out[FAILED_KEY] = list(failed)
        fixed, moving = out[Keys.FIXED_IMAGE], out[Keys.MOVING_IMAGE]
        engine.fire_event(RegistrationEvents.TEACHER_PASS)
        device_type = torch.device(engine.state.device).type
        start = time.perf_counter()
        with engine.mode(engine.network), torch.autocast(device_type, enabled=engine.amp, **engine.amp_kwargs):
            ddf = engine.inferer(torch.cat([moving, fixed], dim=1), engine.network).float()
            out[Keys.DDF] = ddf
            out[Keys.WARPED_IMAGE] = self.image_warp(moving.float(), ddf)
            if Keys.MOVING_LABEL in out:
                moving_label = out[Keys.MOVING_LABEL]
                out[Keys.WARPED_LABEL] = self.label_warp(moving_label.float(), ddf).round().to(moving_label.dtype)
        if device_type == "cuda":
            torch.cuda.synchronize(torch.device(engine.state.device))
        out[Keys.SECONDS] = time.perf_counter() - start
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out
