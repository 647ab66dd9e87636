"""Seconds per training step of each registration variant, side by side, through the bundle's own config.

Run (figures in docs/performance.md)::

    python benchmarks/step_time.py --methods vm as_atc --steps 30 --threads 2
    python benchmarks/step_time.py --methods vm as_atc \
        --variant as_atc_decoder '{"method": "as_atc", "dropout_scope": "decoder"}'   # a variant with its overrides

Each variant's trainer is built from ``bundle/configs/train.json`` with ``--method <variant>`` (nothing else
changed: same network, losses, handlers, data pipeline), on a small phantom dataset at ``--spatial_size``. The
variants run interleaved in rounds of ``--steps`` iterations after ``--warmup`` iterations, and the median
per-iteration wall time (ITERATION_STARTED -> ITERATION_COMPLETED, validation excluded) is reported, with its
ratio to the first variant. ``--variant NAME JSON`` (repeatable) adds a variant named ``NAME`` with its own bundle
overrides (which must include ``"method"``), on top of ``--override``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from ignite.engine import Events
from monai.bundle import ConfigParser

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["vm", "as_atc"])
    ap.add_argument("--spatial_size", nargs=3, type=int, default=[64, 64, 48])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--override", default="{}", help="JSON dict of extra config overrides")
    ap.add_argument("--json", default="", help="write the results to this JSON file")
    ap.add_argument("--variant", nargs=2, action="append", default=[], metavar=("NAME", "JSON"),
                    help="an extra variant: its name and a JSON dict of bundle overrides including 'method'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    extra = json.loads(args.override)
    variants = {m: {"method": m} for m in args.methods}
    for name, value in args.variant:
        ov = json.loads(value)
        if not isinstance(ov, dict) or "method" not in ov or name in variants:
            raise ValueError(f"--variant {name}: expecting a new name and a JSON dict with 'method', got {value!r}.")
        variants[name] = ov
    names = list(variants)
    results: dict[str, list[float]] = {m: [] for m in names}
    with tempfile.TemporaryDirectory() as tmp:
        loaders = {}
        for m in names:
            loaders[m] = make_step_runner(m, tmp, args.spatial_size, {**extra, **variants[m]})
            loaders[m](args.warmup)
        for _ in range(args.rounds):
            for m in names:
                results[m] += loaders[m](args.steps)
    base = statistics.median(results[names[0]])
    rows = []
    print(f"spatial_size {args.spatial_size}, threads {args.threads}, {args.rounds} x {args.steps} steps per variant")
    print(f"{'variant':<16} {'s/step (median)':>16} {'ratio to ' + names[0]:>14}")
    for m in names:
        med = statistics.median(results[m])
        rows.append({"method": m, "overrides": variants[m], "seconds_per_step": med, "ratio": med / base,
                     "steps": len(results[m])})
        print(f"{m:<16} {med:>16.3f} {med / base:>14.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


def make_step_runner(method: str, workdir: str, spatial_size: list[int], extra: dict):
    """A function ``run(n) -> per-step seconds`` that trains ``n`` more iterations of ``method``'s trainer
    (``method`` also names the variant's folder; ``extra`` may override the method itself)."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundle" / "configs" / "train.json"))
    overrides = {
        "bundle_root": f"{workdir}/{method}",
        "phantom_dir": f"{workdir}/phantom",
        "method": method,
        "spatial_size": spatial_size,
        "phantom#num_pairs": 6,
        "phantom#num_val": 1,
        "phantom#num_test": 1,
        "resume": False,
        **extra,
    }
    for k, v in overrides.items():
        parser[k] = v
    parser.parse()
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    step = trainer._iteration
    loader = parser.get_parsed_content("train#dataloader")
    trainer.state.iteration = 0
    trainer.state.epoch = 1
    trainer.state.max_epochs = 1
    trainer.state.epoch_length = 10**6
    batches = []

    def run(n: int) -> list[float]:
        times = []
        for _ in range(n):
            if not batches:
                batches.extend(loader)
            batch = batches.pop()
            trainer.state.iteration += 1
            t = time.perf_counter()
            trainer.fire_event(Events.ITERATION_STARTED)
            trainer.state.output = step(trainer, batch)
            trainer.fire_event(Events.ITERATION_COMPLETED)
            times.append(time.perf_counter() - t)
        return times

    return run


if __name__ == "__main__":
    sys.exit(main())
