"""Test-time refinement on the embedded phantom: Dice, folding and time per pair for several settings.

Starts from a zero displacement (no trained network checkpoint is shipped), so the rows measure the
refinement alone. Writes a JSON with one row per setting (means over the pairs) and prints a
markdown table for ``docs/inferers.md``::

    python benchmarks/refinement.py --pairs 3 --out docs/results/refinement.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch
from monai.networks.blocks import Warp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment_info

from mtreg_monai.data.phantom import make_phantom_pair
from mtreg_monai.inferers import refine_ddf
from mtreg_monai.metrics import compute_folding_percentage, compute_jacobian_std, compute_label_dice
from mtreg_monai.transforms.intensity import DEFAULT_CT_WINDOW, DEFAULT_PERCENTILES

LABELS = {1: "liver", 2: "spleen", 3: "kidney_r", 4: "kidney_l"}


def load_pairs(n: int, size: tuple[int, int, int]) -> list[dict[str, torch.Tensor]]:
    """Phantom pairs as (1, 1, H, W, D) tensors, scaled to [0, 1] as the bundle does (CT window, MR percentiles)."""
    pairs = []
    for i in range(n):
        p = make_phantom_pair(size, seed=(0, i))
        ct = np.clip((p["moving_image"] - DEFAULT_CT_WINDOW[0]) / (DEFAULT_CT_WINDOW[1] - DEFAULT_CT_WINDOW[0]), 0, 1)
        lo, hi = np.percentile(p["fixed_image"], DEFAULT_PERCENTILES)
        mr = np.clip((p["fixed_image"] - lo) / (hi - lo), 0, 1)

        def t(a: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32))[None, None]

        pairs.append(
            {
                "moving": t(ct), "fixed": t(mr), "moving_label": t(p["moving_label"]),
                "fixed_label": t(p["fixed_label"]), "true_ddf": torch.as_tensor(p["ddf"])[None],
            }
        )  # fmt: skip
    return pairs


def evaluate(pair: dict[str, torch.Tensor], ddf: torch.Tensor) -> dict[str, float]:
    warped = Warp(mode="nearest", padding_mode="border")(pair["moving_label"], ddf).round()
    dice = compute_label_dice(warped.long(), pair["fixed_label"].long(), LABELS)
    return {
        "dice_mean": float(torch.nanmean(dice)),
        "folding_percent": float(compute_folding_percentage(ddf)),
        "jacobian_std": float(compute_jacobian_std(ddf)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=3, default=[64, 64, 48])
    parser.add_argument("--out", default="docs/results/refinement.json")
    parser.add_argument("--quick", action="store_true", help="only the default setting")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*native grid_sample")
    torch.manual_seed(0)
    pairs = load_pairs(args.pairs, tuple(args.size))
    base = {
        "steps": 50, "learning_rate": 0.5, "smoothness_weight": 4.0, "control_spacing": 2, "mind_radius": 1,
        "warp_features": False,
    }  # fmt: skip
    settings: list[dict] = [dict(base)]
    if not args.quick:
        settings += [{**base, "steps": s} for s in (20, 100)]
        settings += [{**base, "control_spacing": c} for c in (1, 4)]
        settings += [{**base, "smoothness_weight": w} for w in (1.0, 0.25)]
        settings += [{**base, "learning_rate": 1.0}, {**base, "steps": 100, "lr_decay": True}]
        settings += [{**base, "warp_features": True}, {**base, "smoothness_weight": 2.0}]
        settings += [{**base, "steps": 100, "control_spacing": 4}, {**base, "steps": 100, "smoothness_weight": 2.0}]
    rows = []
    env = environment_info("cpu")
    references = (("unregistered", lambda p: torch.zeros_like(p["true_ddf"])), ("true ddf", lambda p: p["true_ddf"]))
    for name, ddf_of in references:
        res = [evaluate(p, ddf_of(p)) for p in pairs]
        rows.append({"setting": name, **{k: float(np.mean([r[k] for r in res])) for k in res[0]}, "seconds": 0.0})
    for s in settings:
        res, secs = [], []
        for p in pairs:
            t0 = time.perf_counter()
            ddf = refine_ddf(p["moving"], p["fixed"], None, **s)
            secs.append(time.perf_counter() - t0)
            res.append(evaluate(p, ddf))
        row = {"setting": s, **{k: float(np.mean([r[k] for r in res])) for k in res[0]}}
        row["seconds"] = float(np.mean(secs))
        row["dice_per_pair"] = [r["dice_mean"] for r in res]
        rows.append(row)
        print(json.dumps(row), flush=True)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:  # after every row: a partial run keeps what it measured
            json.dump({"pairs": args.pairs, "size": args.size, "rows": rows, "environment": env}, f, indent=1)
    print("| setting | Dice mean | % \\|J\\| <= 0 | std \\|J\\| | s / pair (wall) |")
    print("|---|---|---|---|---|")
    for r in rows:
        s = r["setting"]
        if isinstance(s, dict):
            s = ", ".join(f"{k}={v}" for k, v in s.items() if base.get(k, None) != v) or "default"
        figures = f"{r['dice_mean']:.3f} | {r['folding_percent']:.3f} | {r['jacobian_std']:.3f} | {r['seconds']:.1f}"
        print(f"| {s} | {figures} |")


if __name__ == "__main__":
    main()
