"""Side-by-side registration on the hard phantom preset (issue 13): classical tools, networks, test-time refinement.

One run, same test pairs, same CPU. Rows:

- ``initial`` (no registration), ``syn`` (ANTsPy SyN), ``elastix`` (B-spline), see ``classical.py``;
- learned rows trained with the bundle on the preset's few training pairs (``--learned``, default: VM with
  lambda = 3 and AS+ATC at ``--lr``, plus AS+ATC at the paper's 1e-4 for the learning-rate comparison);
- every row again with the bundle's test-time refinement (``refine_steps`` = ``--refine_steps``), which starts from
  that row's displacement.

Each (row, refinement) scores the test pairs with the bundle's evaluator (Dice, ASD, % |J| <= 0, std |J|, seconds
per pair, the last checkpoint of learned rows) and writes ``<out>/scores/<row>[+refine].csv``. A finished score or
training is never redone (delete the file to redo it); an interrupted training starts again. The summary goes to
``docs/results/hard_preset.csv`` and ``docs/results/hard_preset_pairs.csv``.

Run (about 45 min on 2 cores)::

    python benchmarks/hard_preset.py --threads 2
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from mtreg_monai.metrics import finite_summary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from table1 import (  # noqa: E402
    CLASSICAL_ROWS,
    METRIC_COLUMNS,
    ROOT,
    column_values,
    evaluate_row,
    make_dataset,
    replace_section,
    train_row,
    write_csv,
)  # fmt: skip

#: learned rows: id -> (label, bundle overrides); the learning rate is added from --lr unless given here
LEARNED: dict[str, tuple[str, dict[str, Any]]] = {
    "vm_l3": ("VM (lambda=3)", {"method": "vm", "lambda_phi": 3.0}),
    "as_atc": ("AS+ATC", {"method": "as_atc"}),
    "as_atc_lr1e-4": ("AS+ATC, lr 1e-4 (paper)", {"method": "as_atc", "learning_rate": 1e-4}),
}


#: learned rows also refined with the smoothness weight from their own MC dropout uncertainty (Eq. 5 at test time)
MC_WEIGHT_ROWS = ("as_atc",)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "hard_preset"))
    ap.add_argument("--docs", default=str(ROOT / "docs" / "results"), help="where the summary CSVs go")
    ap.add_argument("--results_md", default=str(ROOT / "docs" / "results.md"),
                    help="page whose <!-- hard_preset:begin/end --> section receives the table ('' : none)")
    ap.add_argument("--spatial_size", nargs=3, type=int, default=[64, 64, 48])
    ap.add_argument("--num_pairs", type=int, default=24, help="8 training, 4 validation and 12 test pairs")
    ap.add_argument("--num_val", type=int, default=4)
    ap.add_argument("--num_test", type=int, default=12)
    ap.add_argument("--num_steps", type=int, default=1000, help="training iterations of every learned row")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate of the learned rows without their own")
    ap.add_argument("--refine_steps", type=int, default=100)
    ap.add_argument("--rows", nargs="*", default=None, help="subset of rows (default: all)")
    ap.add_argument("--no_refine", action="store_true", help="skip the refined variants")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    (out / "scores").mkdir(parents=True, exist_ok=True)
    common = {
        "phantom_dir": str(out / "phantom"), "phantom#preset": "hard", "phantom#num_pairs": args.num_pairs,
        "phantom#num_val": args.num_val, "phantom#num_test": args.num_test,
        "phantom#field_of_view": [176.0, 176.0, 128.0], "spatial_size": list(args.spatial_size),
        "num_steps": args.num_steps, "seed": args.seed, "learning_rate": args.lr,
    }  # fmt: skip
    print(f"[hard] dataset {make_dataset(common)}", flush=True)
    spacing = [f / s for f, s in zip(common["phantom#field_of_view"], args.spatial_size)]
    rows: dict[str, dict[str, Any]] = {
        r: {"label": label, "kind": "classical", "target": target} for r, (label, target) in CLASSICAL_ROWS.items()
    }
    rows.update({r: {"label": label, "kind": "learned", "overrides": ov} for r, (label, ov) in LEARNED.items()})
    if args.rows:
        rows = {r: s for r, s in rows.items() if r in args.rows}
    trained = {r: train_row(r, s, common, out, False, args.threads) for r, s in rows.items() if s["kind"] == "learned"}
    summary, pair_records = [], []
    for row, spec in rows.items():
        variants = [(0, False)] if args.no_refine else [(0, False), (args.refine_steps, False)]
        if row in MC_WEIGHT_ROWS and not args.no_refine:
            variants.append((args.refine_steps, True))
        for steps, mc_weight in variants:
            name = row + (f"+refine{steps}" if steps else "") + ("_mc" if mc_weight else "")
            path = out / "scores" / f"{name}.csv"
            if not path.is_file():
                extra = {"refine_steps": steps, "eval_dir": str(out / "runs" / row / "outputs" / f"eval_{name}")}
                if mc_weight:  # the refinement's smoothness weight set per pair from the network's MC uncertainty
                    extra["refine_smoothness_weight"] = {
                        "_target_": "mtreg_monai.inferers.MCSmoothnessWeight", "num_samples": "@num_mc_samples",
                        "k": "@k1", "tau": "@tau1", "ddf_floor": "@ddf_floor",
                    }  # fmt: skip
                if spec["kind"] == "learned":
                    extra["eval_checkpoint"] = str(out / "runs" / row / "models" / "model_final.pt")
                t = time.time()
                records = evaluate_row(row, spec, {**common, **extra}, out, spacing, args.threads, -1)[0]
                write_csv(path, records)
                print(f"[hard] {name}: {len(records)} pairs in {time.time() - t:.0f} s", flush=True)
            with open(path) as f:
                records = list(csv.DictReader(f))
            for r in records:
                pair_records.append({"row": name, **{c: r.get(c, "") for c in ["fixed_image", *METRIC_COLUMNS]}})
            values = {c: finite_summary(column_values(records, c)) for c in METRIC_COLUMNS}
            label = spec["label"] + (f" + refinement ({steps} steps)" if steps else "")
            label += ", MC-uncertainty weight" if mc_weight else ""
            rec: dict[str, Any] = {"row": name, "label": label, "pairs": len(records)}
            for c, s in values.items():  # the project's one rule: finite values, sample std (n - 1)
                rec[c], rec[c + "_sd"] = s.mean, s.std
            if row in trained:
                rec["train_seconds"], rec["train_steps"] = trained[row]["train_seconds"], trained[row]["steps"]
            summary.append(rec)
            print(f"[hard] {name}: Dice {rec['dice_mean']:.4f}, fold {rec['folding_percent']:.4f} %, "
                  f"std|J| {rec['jacobian_std']:.3f}, {rec['seconds']:.2f} s/pair", flush=True)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    write_csv(docs / "hard_preset.csv", summary)
    write_csv(docs / "hard_preset_pairs.csv", pair_records)
    (docs / "hard_preset.json").write_text(json.dumps({"args": vars(args), "overrides": common}, indent=2))
    if args.results_md:
        replace_section(Path(args.results_md), "hard_preset", table_markdown(summary))


def table_markdown(summary: list[dict[str, Any]]) -> str:
    """The side-by-side table: mean +- sd over the test pairs of every (row, refinement)."""
    lines = ["| row | Dice % | ASD mm | % \\|J\\| <= 0 | std \\|J\\| | s/pair |", "|---|---|---|---|---|---|"]
    for r in summary:
        lines.append(
            f"| {r['label']} | {100 * r['dice_mean']:.1f} +- {100 * r['dice_mean_sd']:.1f} "
            f"| {r['asd_mean']:.2f} +- {r['asd_mean_sd']:.2f} | {r['folding_percent']:.3f} "
            f"| {r['jacobian_std']:.3f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
