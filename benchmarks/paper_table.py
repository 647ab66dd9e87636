"""The paper's Table 1 beside ours, for the rows we have.

Run::

    python benchmarks/paper_table.py docs/results/table1_quick_seeds.csv   # or table1_quick.csv (one seed)

The paper's figures are those published in Xu et al., MICCAI 2022, Table 1 (abdominal CT-MR, mean ± std over their
10 test pairs), copied verbatim into ``docs/results/paper_table1.csv`` (the default ``--paper``; entries such as
"<0.001" kept as printed). Our figures come from a summary CSV of ``benchmarks/table1.py``: the one-seed summary
(``table1_<preset>.csv``) or the multi-seed one (``table1_<preset>_seeds.csv``, whose pooled ``seed = all`` rows of
the primary, last checkpoint are used). The paper has one kidney column (both kidneys, the paper does not say how);
ours is the mean of the right and left kidney means, its std the mean of the two stds. Dice in %, ASD in mm (the
paper's voxels are 1 mm). Each cell reads "paper / ours".
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: our row id -> the paper's method name
PAPER_METHOD = {
    "initial": "Initial", "syn": "SyN", "dif_vm": "DIF-VM", "vm_l1": "VM (lambda=1)",
    "vm_l3": "VM (lambda=3) grid best", "vm_l5": "VM (lambda=5)", "cir_dm": "VM (CIR-DM)", "as": "VM (AS)",
    "s_tc": "VM (S+TC)", "as_tc": "VM (AS+TC)", "as_atc": "VM (AS+ATC)",
}  # fmt: skip
#: table column -> (paper mean column, paper std column, our columns averaged, decimals)
COLUMNS = [
    ("Dice liver", "dice_liver_mean", "dice_liver_std", ["dice_liver"], 2),
    ("Dice spleen", "dice_spleen_mean", "dice_spleen_std", ["dice_spleen"], 2),
    ("Dice kidney", "dice_kidney_mean", "dice_kidney_std", ["dice_right_kidney", "dice_left_kidney"], 2),
    ("ASD liver", "asd_liver_mean", "asd_liver_std", ["asd_liver"], 2),
    ("ASD spleen", "asd_spleen_mean", "asd_spleen_std", ["asd_spleen"], 2),
    ("ASD kidney", "asd_kidney_mean", "asd_kidney_std", ["asd_right_kidney", "asd_left_kidney"], 2),
    ("% \\|J\\|<=0", "nonpositive_jacobian_percent", None, ["folding_percent"], 3),
    ("std \\|J\\|", "jacobian_std", None, ["jacobian_std"], 3),
]
DEFAULT_PAPER = ROOT / "docs" / "results" / "paper_table1.csv"
SHARED_PAPER = ROOT.parent / "shared" / "paper" / "table1.csv"


def _read(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def our_rows(summary: list[Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
    """Row id -> summary line; from a multi-seed summary the pooled (``seed = all``) last-checkpoint lines."""
    if summary and "seed" in summary[0]:
        summary = [r for r in summary if r.get("seed") == "all" and r.get("checkpoint", "final") == "final"]
    return {r["row"]: r for r in summary}


def _paper_cell(p: Mapping[str, str] | None, mean_col: str, std_col: str | None) -> str:
    if p is None or not p.get(mean_col):
        return "–"
    return p[mean_col] + (f" ± {p[std_col]}" if std_col and p.get(std_col) else "")  # as printed


def _our_cell(r: Mapping[str, str], cols: list[str], dec: int) -> str:
    means = [_float(r.get(f"{c}_mean")) for c in cols]
    stds = [_float(r.get(f"{c}_std")) for c in cols]
    if any(math.isnan(m) for m in means):
        return "n/a"
    m, s = sum(means) / len(means), sum(stds) / len(stds)
    return f"{m:.{dec}f}" + ("" if math.isnan(s) else f" ± {s:.{dec}f}")


def side_by_side_markdown(our_summary_csv: str | Path, paper_csv: str | Path = DEFAULT_PAPER) -> str:
    """A markdown table, one line per row of ours that the paper has too (in the paper's order), each cell
    "paper / ours"; our label names the number of seeds pooled where the summary has it."""
    ours = our_rows(_read(our_summary_csv))
    paper = {r["method"]: r for r in _read(paper_csv)}
    lines = ["| Method (paper / ours) | " + " | ".join(c[0] for c in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row, method in PAPER_METHOD.items():
        if row not in ours:
            continue
        p, r = paper.get(method), ours[row]
        cells = [f"{_paper_cell(p, mc, sc)} / {_our_cell(r, oc, dec)}" for _, mc, sc, oc, dec in COLUMNS]
        n = r.get("n_seeds", "")
        label = r.get("label", row) + (f" ({n} seed{'' if n == '1' else 's'})" if n else "")
        lines.append(f"| {method} / {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours", help="a summary CSV of benchmarks/table1.py")
    ap.add_argument("--paper", default=str(DEFAULT_PAPER if DEFAULT_PAPER.is_file() else SHARED_PAPER),
                    help="the paper's Table 1 (default docs/results/paper_table1.csv, a copy of "
                         "ROOT/../shared/paper/table1.csv)")
    args = ap.parse_args()
    print(side_by_side_markdown(args.ours, args.paper))


if __name__ == "__main__":
    main()
