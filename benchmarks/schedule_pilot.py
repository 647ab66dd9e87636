"""The pilot run that fixes the schedule length of the pre-registered multi-seed test (``docs/results.md``).

Run::

    python benchmarks/schedule_pilot.py --threads 2          # AS+ATC, training seed 100, up to 3000 steps
    python benchmarks/schedule_pilot.py --cap_steps 60 --num_pairs 8 --num_val 2 --num_test 2 --spatial_size 32 32 32 \\
        --out /tmp/pilot --no_docs                            # smoke run

One AS+ATC training with the bundle's own command (``benchmarks/table1.py``'s ``train_row``, so an interrupted
pilot resumes from its last epoch checkpoint and a finished one is never redone) on the protocol's dataset
(``--preset protocol``: 25 training / 10 validation / 15 test pairs, data seed 0, shared with the protocol runs in
``benchmarks/out/table1_protocol/phantom``), trained for the cap (``--cap_steps``, rounded up to whole epochs).
Only the training weights (``outputs/weights.csv``) and the validation pairs are looked at, never the test pairs.

The rule (:func:`schedule_length`, written in ``docs/results.md`` before the pilot ran): the schedule is the first
step ``s`` at which the moving average of ``lambda_phi`` over ``--window`` steps changes by less than
``--tolerance`` (relative) at every step of the next ``--horizon`` steps, rounded up to a whole epoch, capped at
``--cap_steps``.

Outputs (``--docs``, default ``docs``): ``results/protocol_pilot.json`` (the rule, the length found, the
validation curve, the environment), ``results/protocol_pilot_weights.csv`` (lambda_phi, lambda_c and the moving
average per step) and ``figures/protocol_pilot.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_info  # noqa: E402
from table1 import (  # noqa: E402
    PRESETS,
    common_overrides,
    make_dataset,
    run_dir,
    train_row,
    validation_curve,
    write_csv,
)


def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps: element ``i`` is the mean of ``values[i - window + 1 : i + 1]``;
    NaN for the first ``window - 1`` steps (not enough history)."""
    v = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}.")
    out = np.full(v.shape, np.nan)
    if v.size >= window:
        c = np.concatenate([[0.0], np.cumsum(v)])
        out[window - 1 :] = (c[window:] - c[:-window]) / window
    return out


def schedule_length(lambda_phi: Sequence[float], *, window: int = 100, horizon: int = 200, tolerance: float = 0.05,
                    steps_per_epoch: int = 1, cap_steps: int = 3000) -> dict[str, Any]:
    """
    The pre-registered schedule rule on one pilot's per-step ``lambda_phi`` (step 1 first).

    With ``m`` the trailing ``window``-step moving average, the levelling step is the first step ``s`` (1-based,
    ``s >= window``) such that ``|m[t] - m[s]| < tolerance * |m[s]|`` for every ``t`` in ``s+1 .. s+horizon``. The
    schedule is that step rounded up to a whole epoch, at most ``cap_steps``; without such a step (or with a
    curve too short to test) the schedule is the cap.

    Returns:
        ``{"levelled_at_step": s or None, "steps": schedule in steps, "epochs": schedule in epochs,
        "reason": "levelled" | "cap", "max_relative_change": per-step worst change over the horizon}``.
    """
    if steps_per_epoch < 1 or cap_steps < 1 or horizon < 1 or not tolerance > 0:
        raise ValueError(
            f"Expecting steps_per_epoch, cap_steps, horizon >= 1 and tolerance > 0, got {steps_per_epoch}, "
            f"{cap_steps}, {horizon}, {tolerance}."
        )
    m = moving_average(lambda_phi, window)
    n = m.size
    worst = np.full(n, np.nan)
    for i in range(window - 1, n - horizon):
        if m[i] != 0:
            worst[i] = float(np.max(np.abs(m[i + 1 : i + horizon + 1] - m[i]))) / abs(m[i])
    hits = np.flatnonzero(worst < tolerance)
    cap_epochs = math.ceil(cap_steps / steps_per_epoch)
    if hits.size and hits[0] + 1 <= cap_steps:
        step = int(hits[0]) + 1
        epochs = min(math.ceil(step / steps_per_epoch), cap_epochs)
        return {"levelled_at_step": step, "steps": epochs * steps_per_epoch, "epochs": epochs, "reason": "levelled",
                "max_relative_change": worst}
    return {"levelled_at_step": None, "steps": cap_epochs * steps_per_epoch, "epochs": cap_epochs, "reason": "cap",
            "max_relative_change": worst}


def read_weights(path: Path) -> dict[str, np.ndarray]:
    """The bundle's ``outputs/weights.csv``: ``iteration``, ``lambda_phi``, ``lambda_c`` per training step."""
    data = np.genfromtxt(path, delimiter=",", names=True)
    return {k: np.atleast_1d(data[k]) for k in data.dtype.names}


def plot_pilot(weights: dict[str, np.ndarray], avg: np.ndarray, result: dict[str, Any],
               val: Sequence[tuple[int, float]], steps_per_epoch: int, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    it = weights["iteration"]
    ax.plot(it, weights["lambda_phi"], color="0.8", lw=0.5, label="lambda_phi per step")
    ax.plot(it, avg, color="C0", lw=1.5, label="moving average")
    step = result["levelled_at_step"]
    if step:
        ax.axvline(step, color="C3", ls="--", label=f"levels off: step {step}")
    ax.axvline(result["steps"], color="k", ls=":", label=f"schedule: {result['steps']} steps")
    ax.set_xlabel("training step")
    ax.set_ylabel("lambda_phi")
    if val:
        ax2 = ax.twinx()
        ax2.plot([e * steps_per_epoch for e, _ in val], [100 * v for _, v in val], "o-", color="C2", ms=3)
        ax2.set_ylabel("validation mean Dice (%)", color="C2")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Pilot AS+ATC run (seed 100): lambda_phi and validation Dice")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=100, help="training seed of the pilot (not a protocol seed)")
    ap.add_argument("--data_seed", type=int, default=0, help="the protocol's dataset seed")
    ap.add_argument("--cap_steps", type=int, default=3000)
    ap.add_argument("--window", type=int, default=100, help="moving-average window in steps")
    ap.add_argument("--horizon", type=int, default=200, help="steps over which the average must stay within tolerance")
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative change allowed over the horizon")
    ap.add_argument("--num_validations", type=int, default=20, help="validations over the pilot's training")
    ap.add_argument("--spatial_size", nargs=3, type=int, default=None)
    ap.add_argument("--num_pairs", type=int, default=None)
    ap.add_argument("--num_val", type=int, default=None)
    ap.add_argument("--num_test", type=int, default=None)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="", help="work folder (default benchmarks/out/table1_protocol)")
    ap.add_argument("--docs", default=str(ROOT / "docs"))
    ap.add_argument("--no_docs", action="store_true", help="write the results into --out, not docs/")
    ap.add_argument("--retrain", action="store_true")
    args = ap.parse_args()

    cfg = dict(PRESETS["protocol"])
    for key in ("spatial_size", "num_pairs", "num_val", "num_test"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    steps_per_epoch = cfg["num_pairs"] - cfg["num_val"] - cfg["num_test"]
    if steps_per_epoch < 1:
        raise ValueError(f"Expecting at least one training pair, got the split {cfg}.")
    cfg.update(epochs=math.ceil(args.cap_steps / steps_per_epoch), seed=args.seed, data_seed=args.data_seed)
    out = Path(args.out or ROOT / "benchmarks" / "out" / "table1_protocol").resolve()
    out.mkdir(parents=True, exist_ok=True)
    overrides = {**common_overrides(cfg, out), "num_validations": args.num_validations}
    datalist = make_dataset(overrides)
    print(f"[pilot] dataset {datalist}, {cfg}", flush=True)
    started = time.time()
    trained = train_row("as_atc", {"overrides": {"method": "as_atc"}}, overrides, out, args.retrain, args.threads,
                        seed=args.seed)
    root = run_dir(out, "as_atc", args.seed)
    weights = read_weights(root / "outputs" / "weights.csv")
    result = schedule_length(weights["lambda_phi"], window=args.window, horizon=args.horizon,
                             tolerance=args.tolerance, steps_per_epoch=steps_per_epoch, cap_steps=args.cap_steps)
    avg = moving_average(weights["lambda_phi"], args.window)
    val = validation_curve(root / "train.log")
    res_dir = (out if args.no_docs else Path(args.docs)) / "results"
    fig_dir = (out if args.no_docs else Path(args.docs)) / "figures"
    res_dir.mkdir(parents=True, exist_ok=True)
    write_csv(res_dir / "protocol_pilot_weights.csv", [
        {"iteration": int(i), "lambda_phi": float(lp), "lambda_c": float(lc), "lambda_phi_moving_average": float(a),
         "max_relative_change_next_horizon": float(w)}
        for i, lp, lc, a, w in zip(weights["iteration"], weights["lambda_phi"], weights["lambda_c"], avg,
                                   result["max_relative_change"])])
    figure = plot_pilot(weights, avg, result, val, steps_per_epoch, fig_dir / "protocol_pilot.png")
    summary = {k: v for k, v in result.items() if k != "max_relative_change"}
    record = {
        "rule": {"window": args.window, "horizon": args.horizon, "tolerance": args.tolerance,
                 "cap_steps": args.cap_steps, "steps_per_epoch": steps_per_epoch},
        "schedule": summary, "settings": cfg, "training": trained,
        "validation_curve": [{"epoch": e, "step": e * steps_per_epoch, "val_mean_dice": v} for e, v in val],
        "lambda_phi_mean_last_window": float(avg[-1]) if avg.size else None,
        "figure": figure, "seconds": time.time() - started, "environment": environment_info(),
    }
    (res_dir / "protocol_pilot.json").write_text(json.dumps(record, indent=2))
    print(f"[pilot] schedule: {summary} -> python benchmarks/table1.py --preset protocol --epochs {summary['epochs']}",
          flush=True)


if __name__ == "__main__":
    main()
