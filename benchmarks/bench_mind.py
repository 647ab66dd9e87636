"""Forward + backward time of the MIND-SSC loss: reference vs ``mtreg_monai.losses.MINDSSCLoss``.

Run (figures in docs/losses.md)::

    python benchmarks/bench_mind.py --threads 2 --repeats 10

Three implementations of the same loss ``mean((MIND(pred) - MIND(target))**2)`` (r = 2, d = 2):

- ``reference``: the conv-kernel MIND-SSC of ConvexAdam/TransMorph (two 12-channel 3x3x3 shift
  convolutions, a 5x5x5 ``avg_pool3d``), autograd backward.
- ``separable``: the first version of ours: shifted slices and a separable ``avg_pool3d`` box,
  autograd backward.
- ``mtreg``: :class:`mtreg_monai.losses.MINDSSCLoss` (direction maps, shifted-slice box sums,
  in-place normalisation, hand-written backward); also with the target descriptor precomputed.

Each timing is one loss forward + backward to ``pred``; the runs of the implementations are
interleaved and the minimum and median over ``--repeats`` runs are printed (the machine is shared).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from mtreg_monai.losses import MINDSSCLoss, mind_ssc_reference
from mtreg_monai.losses.mind import _PAIRS


def separable_mind_ssc(img: torch.Tensor, radius: int = 2, dilation: int = 2) -> torch.Tensor:
    """Our first version: 12 shifted-slice differences, separable avg_pool3d box, autograd backward."""
    d, (h, w, dd) = dilation, img.shape[2:]
    p = F.pad(img, (d,) * 6, mode="replicate")

    def sl(o):
        s0, s1, s2 = (d + d * oi for oi in o)
        return p[:, 0, s0 : s0 + h, s1 : s1 + w, s2 : s2 + dd]

    ssd = torch.stack([sl(a) - sl(b) for a, b in _PAIRS], 1) ** 2
    k = 2 * radius + 1
    for axis, kernel in ((2, (k, 1, 1)), (3, (1, k, 1)), (4, (1, 1, k))):
        pad = [0] * 6
        pad[2 * (4 - axis)] = pad[2 * (4 - axis) + 1] = radius
        ssd = F.avg_pool3d(F.pad(ssd, pad, mode="replicate"), kernel, stride=1)
    mind = ssd - ssd.min(1, keepdim=True)[0]
    var = mind.mean(1, keepdim=True)
    gm = var.detach().mean()
    var = torch.clamp(var, gm * 0.001, gm * 1000)
    return torch.exp(-(mind / var))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--shapes", default="64x64x48,96x112x80")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loss_fn = MINDSSCLoss(radius=2, dilation=2)

    for shape in [tuple(int(s) for s in item.split("x")) for item in args.shapes.split(",")]:
        pred = torch.rand(1, 1, *shape, requires_grad=True)
        target = torch.rand(1, 1, *shape)
        with torch.no_grad():
            target_mind = loss_fn.descriptor(target)

        def run_ref(fn=mind_ssc_reference, pred=pred, target=target):
            ((fn(pred) - fn(target)) ** 2).mean().backward()

        runs = {
            "reference (conv + avg_pool3d)": run_ref,
            "separable (first version)": lambda: run_ref(separable_mind_ssc),
            "mtreg MINDSSCLoss": lambda pred=pred, target=target: loss_fn(pred, target).backward(),
            "mtreg, target precomputed": lambda pred=pred, target_mind=target_mind: loss_fn.forward_descriptors(
                loss_fn.descriptor(pred), target_mind
            ).backward(),
        }
        with torch.no_grad():
            ref = mind_ssc_reference(target)
            err = max((fn(target) - ref).abs().max().item() for fn in (separable_mind_ssc, loss_fn.descriptor))
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in runs.items():
                pred.grad = None
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        ref_min = min(times["reference (conv + avg_pool3d)"])
        print(
            f"shape {shape}, torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}, "
            f"max |descriptor - reference| {err:.1e}"
        )
        for name, ts in times.items():
            print(
                f"  {name:32s} min {min(ts) * 1e3:8.1f} ms  median {statistics.median(ts) * 1e3:8.1f} ms"
                f"  speed-up (min) {ref_min / min(ts):4.1f}x"
            )


if __name__ == "__main__":
    main()
