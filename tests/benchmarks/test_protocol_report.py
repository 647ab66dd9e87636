"""The analysis of the pre-registered multi-seed protocol (benchmarks/protocol_report.py): Holm, the bootstrap
interval, the grid pick, the verdict rules, and a whole report on small synthetic results, complete and partial."""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import protocol_report as report  # noqa: E402
import table1  # noqa: E402


def test_holm_hand_example_monotone_capped_and_nan_not_counted():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert report.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert report.holm([0.3, 0.9, 0.2]) == pytest.approx([0.6, 0.9, 0.6])
    assert report.holm([0.5, 0.6]) == [1.0, 1.0]
    nan = report.holm([0.01, math.nan, 0.04])  # m = 2
    assert nan[0] == pytest.approx(0.02) and math.isnan(nan[1]) and nan[2] == pytest.approx(0.04)
    assert report.holm([0.02]) == [0.02] and report.holm([]) == []


def test_bootstrap_ci_deterministic_contains_the_mean_and_narrows_with_more_units():
    d = np.array([1.0, -0.5, 2.0, 0.3, 1.2, 0.8, -0.1, 1.5])
    lo, hi = report.bootstrap_ci(d)
    assert (lo, hi) == report.bootstrap_ci(d) and lo < d.mean() < hi
    lo10, hi10 = report.bootstrap_ci(np.tile(d, 10))
    assert lo10 < d.mean() < hi10 and hi10 - lo10 < (hi - lo) / 2
    assert report.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in report.bootstrap_ci([]))


def _val(seed, row, val, ck="final"):
    return {"seed": seed, "checkpoint": ck, "row": row, "val_dice": val}


def test_grid_best_by_mean_validation_dice_over_the_seeds_that_have_the_row():
    rows = [_val(0, "vm_l1", 80.0), _val(1, "vm_l1", 84.0),  # mean 82
            _val(0, "vm_l2", 85.0), _val(1, "vm_l2", 78.0),  # best single seed, mean 81.5
            _val(0, "vm_l3", 81.0), _val(0, "vm_l4", math.nan),
            _val(0, "vm_l5", 99.0, "best"), _val(0, "as_atc", 99.0)]
    assert report.grid_validation(rows) == {"vm_l1": 82.0, "vm_l2": 81.5, "vm_l3": 81.0}
    assert report.grid_best(rows) == "vm_l1" and report.grid_best(rows, "best") == "vm_l5"
    assert report.grid_best(rows + [_val(2, "vm_l3", 83.0)]) == "vm_l1"  # vm_l3 ties at 82: the smaller lambda
    assert report.grid_best(rows + [_val(0, "vm_l4", "83.5")]) == "vm_l4"  # only seed 0 has it: its mean is 83.5
    with pytest.raises(ValueError, match="no grid row"):
        report.grid_best([_val(0, "as", 90.0)])


def test_claim3_interpolates_the_grid_curve_with_the_nearest_end_outside():
    grid = [(0.3, 86.0), (0.1, 80.0), (0.2, 84.0)]  # sorted by std |J| before interpolating
    assert report.curve_margin(grid, (0.15, 83.0)) == pytest.approx(1.0)  # curve at 0.15: 82
    assert report.curve_margin(grid, (0.25, 84.0)) == pytest.approx(-1.0)  # curve at 0.25: 85
    assert report.curve_margin(grid, (0.05, 79.0)) == pytest.approx(-1.0)  # left of the range: 80
    assert report.curve_margin(grid, (0.40, 87.0)) == pytest.approx(1.0)  # right of the range: 86
    assert report.curve_margin(grid, (0.2, 84.0)) == 0.0
    assert report.curve_verdict([1.0, 0.0, 2.0]) == "reproduced"
    assert report.curve_verdict([-1.0, -2.0, -0.1]) == "reversed"
    assert report.curve_verdict([1.0, -1.0, 0.0]) == "not reproduced"


def test_verdict_rules():
    v = report.ordering_verdict
    assert v(1.0, 0.01) == "reproduced" and v(-1.0, 0.01) == "reversed"
    assert v(1.0, 0.05) == "not reproduced" and v(-1.0, 0.2) == "not reproduced" and v(1.0, math.nan) == \
        "not reproduced"
    assert v(-0.1, 0.01, lower_is_better=True) == "reproduced" and v(0.1, 0.01, True) == "reversed"
    s = report.smoother_verdict
    assert s("reproduced", "not reproduced") == "reproduced" and s("reproduced", "reproduced") == "reproduced"
    assert s("reproduced", "reversed") == "not reproduced" and s("not reproduced", "reproduced") == "not reproduced"
    assert s("reversed", "reproduced") == "reversed"
    assert report.time_verdict(100.0, [30.0] * 5) == "reproduced"
    assert report.time_verdict(150.0, [30.0] * 5) == "not reproduced"
    assert report.verdict_text("pending", ["as_atc seed 2"]) == "pending (missing: as_atc seed 2)"
    assert report.verdict_text("pending", ["vm_l1 seed 1", "vm_l1 seed 2", "as seed 0"]) == (
        "pending (missing: vm_l1 seeds 1, 2; as seed 0)")
    assert report.verdict_text("reversed", ["as_atc seed 2"], [0, 1]) == \
        "reversed (partial: seeds 0, 1; missing: as_atc seed 2)"
    assert report.verdict_text("reproduced", []) == "reproduced"


def _pair(fixed, value, col="dice_mean"):
    return {"fixed": fixed, "moving": "m" + fixed, col: str(value)}


def test_paired_differences_match_pooled_paired_test_and_pending_without_units():
    by_seed = {0: {"a": [_pair("f1", 0.82), _pair("f2", 0.90), _pair("f3", 0.7)],
                   "b": [_pair("f2", 0.85), _pair("f1", 0.80), _pair("f3", "nan")]},
               1: {"a": [_pair("f1", 0.81)], "b": [_pair("f1", 0.80), _pair("f9", 0.1)]},
               2: {"a": [_pair("f1", 0.5)]}}
    assert report.matched_differences(by_seed, "a", "b")[0] == pytest.approx([2.0, 5.0, 1.0])  # points, by name
    t = report.compare(by_seed, "a", "b")
    assert t["n"] == 3 and t["mean_diff"] == pytest.approx(8 / 3) and t["seeds"] == [0, 1]
    assert t["ci95"][0] <= t["mean_diff"] <= t["ci95"][1] and t["cohen_dz"] > 0
    present = {(s, r) for s, rows in by_seed.items() for r in rows}
    pending = report.run_test(by_seed, present, "a", "c", {(0, "a"), (0, "c")})
    assert pending["verdict"] == "pending" and pending["verdict_text"] == "pending (missing: c seed 0)"
    assert report.run_test(by_seed, present, "a", None, set())["verdict"] == "pending"
    (fam,) = report.holm_family([report.run_test(by_seed, present, "a", "b", {(2, "b")})])
    assert fam["p_holm"] == fam["wilcoxon_p"] and fam["verdict"] == "not reproduced"
    assert fam["verdict_text"] == "not reproduced (partial: seeds 0, 1; missing: b seed 2)"


# ---------------------------------------------------------------------------------------------------- end to end
#: mean test Dice of each row (grid: a curve that peaks at lambda 3), its std |J|, validation Dice per checkpoint
DICE = {"initial": 0.70, "vm_l1": 0.800, "vm_l2": 0.815, "vm_l3": 0.830, "vm_l4": 0.820, "vm_l5": 0.810,
        "as": 0.838, "s_tc": 0.842, "as_tc": 0.845, "as_atc": 0.850}
JAC = {"initial": 0.0, "vm_l1": 0.30, "vm_l2": 0.25, "vm_l3": 0.20, "vm_l4": 0.15, "vm_l5": 0.10, "as": 0.2,
       "s_tc": 0.2, "as_tc": 0.18, "as_atc": 0.15}
VAL = {"final": {"vm_l1": 80.0, "vm_l2": 81.0, "vm_l3": 83.0, "vm_l4": 82.0, "vm_l5": 79.0},
       "best": {"vm_l1": 80.0, "vm_l2": 84.0, "vm_l3": 83.0, "vm_l4": 82.0, "vm_l5": 79.0}}
MULTI = ("vm_l1", "vm_l2", "vm_l3", "vm_l4", "vm_l5", "as_atc")


def _write_protocol(tmp_path: Path, drop=()) -> tuple[Path, Path]:
    """3 seeds x 4 test pairs; the seed-0-only rows on seed 0; (seed, row) runs in ``drop`` left out."""
    pairs, summary = [], []
    for seed in (0, 1, 2):
        for i, row in enumerate(DICE):
            if (seed, row) in drop or (seed > 0 and row not in MULTI):
                continue
            for ck in ("final", "best"):
                # per-pair noise grows with the row's index, so every paired difference has its own size
                vals = [DICE[row] + 0.001 * seed + 1e-4 * k * (i + 1) for k in range(4)]
                pairs += [{"seed": seed, "row": row, "checkpoint": ck, "primary": ck == "final", "fixed": f"f{k}",
                           "moving": f"m{k}", "dice_mean": f"{v:.6f}", "jacobian_std": f"{JAC[row] + 1e-3 * k:.6f}"}
                          for k, v in enumerate(vals)]
                summary.append({"seed": seed, "checkpoint": ck, "row": row, "val_dice": VAL[ck].get(row, ""),
                                "train_seconds": 150.0 if row == "as_atc" else 100.0,
                                "jacobian_std_mean": JAC[row] + 1.5e-3, "dice_mean_mean": 100 * np.mean(vals)})
    summary.append({"seed": "all", "checkpoint": "final", "row": "vm_l5", "val_dice": 99.0})  # not a seed: ignored
    table1.write_csv(tmp_path / "pairs.csv", pairs)
    table1.write_csv(tmp_path / "summary.csv", summary)
    return tmp_path / "pairs.csv", tmp_path / "summary.csv"


def _run(tmp_path: Path, drop=()) -> dict:
    p, s = _write_protocol(tmp_path, drop)
    report.main(["--pairs", str(p), "--summary", str(s), "--no_docs", "--out", str(tmp_path / "out")])
    return json.loads((tmp_path / "out" / "results" / "table1_protocol_verdicts.json").read_text())


def _claims(res: dict, ck: str = "final") -> dict:
    return {c["claim"]: c for c in res["results"][ck]["claims"]}


def test_end_to_end_verdicts_json_markdown_and_figure(tmp_path):
    res = _run(tmp_path)
    out = tmp_path / "out"
    assert res["results"]["final"]["grid_best"] == "vm_l3" and res["results"]["best"]["grid_best"] == "vm_l2"
    assert res["results"]["final"]["grid_validation_dice"]["vm_l3"] == 83.0
    assert res["missing"]["final"] == ["syn seed 0", "elastix seed 0", "dif_vm seed 0", "cir_dm seed 0"]
    c = _claims(res)
    t1 = c[1]["tests"][0]
    assert t1["n"] == 12 and t1["mean_diff"] == pytest.approx(2.0 + 0.06 * 1.5, abs=1e-3)
    assert t1["p_holm"] == t1["wilcoxon_p"] < 0.05 and c[1]["verdict_text"] == "reproduced"
    assert t1["ci95"][0] < t1["mean_diff"] < t1["ci95"][1] and t1["rank_biserial"] == 1.0
    jac, dice = c[2]["tests"]
    assert jac["column"] == "jacobian_std" and jac["mean_diff"] == pytest.approx(-0.05)
    assert [jac["p_holm"], dice["p_holm"]] == report.holm([jac["wilcoxon_p"], dice["wilcoxon_p"]])
    assert max(jac["p_holm"], dice["p_holm"]) < 0.05 and c[2]["verdict"] == "reproduced"
    # the grid curve at AS+ATC's std |J| (0.1515) is vm_l4's point (0.1515, 82.x): AS+ATC 3 points above it
    assert [s["seed"] for s in c[3]["per_seed"]] == [0, 1, 2] and c[3]["verdict"] == "reproduced"
    assert all(s["margin"] == pytest.approx(3.0, abs=0.1) for s in c[3]["per_seed"])
    # seed 0 alone: 4 pairs, exact two-sided p = 2 / 16 at best; Holm across the four: 4 x 0.125 = 0.5
    assert [t["b"] for t in c[4]["tests"]] == ["vm_l3", "vm_l3", "as", "as_tc"]
    assert all(t["n"] == 4 and t["mean_diff"] > 0 and t["wilcoxon_p"] == pytest.approx(0.125)
               and t["p_holm"] == pytest.approx(0.5) and t["verdict"] == "not reproduced" for t in c[4]["tests"])
    assert c[5]["verdict"] == "reproduced" and c[5]["grid_sum_seconds"] == 500.0
    assert c[5]["mean_train_seconds"]["as_atc"] == 150.0
    assert _claims(res, "best")[1]["tests"][0]["b"] == "vm_l2"
    md = (out / "results.md").read_text()
    assert "<!-- table1:protocol:verdicts:begin -->" in md and "Grid best: **VM (lambda=3)**" in md
    assert "| 4 | AS+TC − AS, Dice (points) | 4 |" in md and "figures/table1_protocol_tradeoff.png" in md
    assert (out / "figures" / "table1_protocol_tradeoff.png").stat().st_size > 0
    # the paper's Table 1 beside ours: the pooled (seed = all) last-checkpoint line of vm_l5, the only one written
    assert "#### The paper's Table 1 beside ours" in md
    assert "| VM (lambda=5) / vm_l5 | 84.28 ± 2.93 / n/a |" in md and "| VM (AS+ATC) /" not in md
    with open(out / "results" / "table1_protocol_tradeoff.csv") as f:
        plotted = list(csv.DictReader(f))
    assert len(plotted) == 9 + 6 + 6 and {r["row"] for r in plotted if r["seed"] == "1"} == set(MULTI)


def test_partial_results_decide_on_the_seeds_present_and_leave_claim3_pending(tmp_path):
    res = _run(tmp_path, drop={(2, "as_atc")})
    c = _claims(res)
    assert c[1]["tests"][0]["n"] == 8 and c[1]["tests"][0]["seeds"] == [0, 1]
    assert c[1]["verdict_text"] == "reproduced (partial: seeds 0, 1; missing: as_atc seed 2)"
    assert c[2]["verdict_text"] == "reproduced (partial: seeds 0, 1; missing: as_atc seed 2)"
    assert c[3]["verdict_text"] == "pending (missing: as_atc seed 2)"
    assert [s["seed"] for s in c[3]["per_seed"]] == [0, 1]
    assert c[5]["verdict_text"].startswith("reproduced (partial: seeds 0, 1;")
    assert all("partial" not in t["verdict_text"] for t in c[4]["tests"])
    assert ["as_atc seed 2" in res["missing"][ck] for ck in ("final", "best")] == [True, True]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| AS+ATC | in | in | **missing** |" in md and "pending (missing: as_atc seed 2)" in md


def test_pending_claims_without_as_atc_and_holm_counts_the_planned_tests(tmp_path):
    res = _run(tmp_path, drop={(s, "as_atc") for s in (0, 1, 2)} | {(0, "as_tc")})
    c = _claims(res)
    assert [c[k]["verdict"] for k in (1, 2, 3, 5)] == ["pending"] * 4
    t = c[4]["tests"]
    assert [x["verdict"] for x in t[2:]] == ["pending", "pending"]
    # the two pending tests count as p = 1: the computed two keep Holm's multipliers 4 and 3 (-> 0.5, 0.5)
    assert [x["p_holm"] for x in t[:2]] == pytest.approx([0.5, 0.5])
