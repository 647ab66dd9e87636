"""The verdicts of the pre-registered multi-seed protocol (issue 10), by the rules written in docs/results.md.

Run (after any number of ``python benchmarks/table1.py --preset protocol --seeds ...`` runs)::

    python benchmarks/protocol_report.py                                  # reads and writes docs/
    python benchmarks/protocol_report.py --no_docs --out /tmp/protocol    # writes into /tmp/protocol instead

Inputs (``--pairs``, ``--summary``; default ``<docs>/results/table1_protocol_seeds_pairs.csv`` and
``<docs>/results/table1_protocol_seeds.csv``, as :class:`table1.RunRecorder` writes them): every scored test pair
per (seed, row, checkpoint), and the per-seed summary lines (validation Dice, training wall time, mean std |J| and
Dice of each run). The runs land over days, so whatever (seed, row) runs are in are analysed: a claim computed on
part of its runs says so ("partial: seeds ..., missing: ..."), one that cannot be computed yet is "pending
(missing: ...)". The classical rows are deterministic and run once (seed 0); none of the claims uses them.

For the primary result (the last checkpoint, ``final``) and, apart, the secondary one (best validation in the second
half of training, ``best``): the grid's best (the VM lambda with the highest mean validation Dice of that checkpoint
over its seeds), then the five claims of the protocol. Paired tests are :func:`table1.pooled_paired_test` over the
units (seed, test pair) (two-sided Wilcoxon signed-rank, mean difference, Cohen's d_z, rank-biserial), with a 95 %
percentile bootstrap interval of the mean difference (10 000 resamples of the units) and Holm's correction within
each claim; a planned test whose runs are not in yet counts as p = 1 in that correction, so an early verdict is
never less conservative than the final one.

1. AS+ATC > grid best in Dice, seeds pooled.
2. AS+ATC's std |J| lower than the grid best's (p < 0.05) and its Dice not lower (p < 0.05); reversed if higher.
3. AS+ATC's Dice on or above the grid's Dice-versus-std |J| curve (piecewise linear, the nearest end outside it)
   at its own std |J|, per seed, for all 3 seeds; reversed if below for all 3.
4. On seed 0: AS > grid best, S+TC > VM lambda=3, AS+TC > AS, AS+ATC > AS+TC in Dice, one verdict each.
5. AS+ATC's mean training wall time below the sum of the five grid rows' means.

Outputs (``<docs>``, or ``--out`` with ``--no_docs``): ``results/table1_protocol_verdicts.json`` (every test, the
grid pick, which runs are in), ``results/table1_protocol_tradeoff.csv`` and ``figures/table1_protocol_tradeoff.png``
(per seed, mean test Dice against mean std |J|, last checkpoints), and the ``table1:protocol:verdicts`` section of
``results.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_table import DEFAULT_PAPER, side_by_side_markdown  # noqa: E402
from table1 import (  # noqa: E402
    CLASSICAL_ROWS,
    TABLE_ORDER,
    _order,
    all_rows,
    grid_row,
    matched_differences,
    pooled_paired_test,
    replace_section,
    write_csv,
)

PROTOCOL_SEEDS = (0, 1, 2)
LAMBDAS = (1, 2, 3, 4, 5)
GRID = [grid_row(lam) for lam in LAMBDAS]
ADAPTIVE = ("dif_vm", "cir_dm", "as", "s_tc", "as_tc", "as_atc")
SINGLE_SEED = ("dif_vm", "cir_dm", "as", "s_tc", "as_tc")
LABELS = {row: spec["label"] for row, spec in all_rows(LAMBDAS).items()}
ALPHA = 0.05
CHECKPOINTS = {"final": "Primary: last checkpoint (`models/model_final.pt`)",
               "best": "Secondary: best-validation checkpoint of the second half of training (`models/model.pt`)"}
SUMMARY_COLUMNS = ("val_dice", "train_seconds", "jacobian_std_mean", "dice_mean_mean")
SECTION = "table1:protocol:verdicts"

Run = tuple[int, str]  # (seed, row)
PairsBySeed = dict[int, dict[str, list[dict[str, str]]]]


# ---------------------------------------------------------------------------------------------------- inputs
def read_pairs(path: Path) -> dict[str, PairsBySeed]:
    """The pairs CSV as ``{checkpoint: {seed: {row: [pair rows]}}}`` (values kept as the CSV's strings)."""
    out: dict[str, PairsBySeed] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["checkpoint"], {}).setdefault(int(r["seed"]), {}).setdefault(r["row"], []).append(r)
    return out


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_summary(path: Path) -> list[dict[str, Any]]:
    """The per-seed lines of the summary CSV (``seed = all`` left out): seed, checkpoint, row and the used columns
    as floats (NaN where empty)."""
    with open(path, newline="") as f:
        lines = [r for r in csv.DictReader(f) if r["seed"] != "all"]
    return [{"seed": int(r["seed"]), "checkpoint": r["checkpoint"], "row": r["row"],
             **{k: _number(r.get(k)) for k in SUMMARY_COLUMNS}} for r in lines]


def multi_seed(rows: Iterable[str]) -> set[Run]:
    """The runs of ``rows`` for every protocol seed."""
    return {(seed, row) for seed in PROTOCOL_SEEDS for row in rows}


def required_runs() -> set[Run]:
    """Every run the protocol plans: the grid and AS+ATC on seeds 0-2, the other rows (classical too) on seed 0."""
    return multi_seed([*GRID, "as_atc"]) | {(0, row) for row in (*SINGLE_SEED, *CLASSICAL_ROWS)}


def missing_runs(required: Iterable[Run], present: set[Run]) -> list[str]:
    """The runs of ``required`` not in ``present``, as "row seed k", in table order."""
    gone = [(seed, row) for seed, row in required if (seed, row) not in present]
    return [f"{row} seed {seed}" for seed, row in sorted(gone, key=lambda sr: (_order_index(sr[1]), sr[0]))]


def _order_index(row: str) -> int:
    """A row's place in table1's TABLE_ORDER (unknown rows last)."""
    return TABLE_ORDER.index(row) if row in TABLE_ORDER else len(TABLE_ORDER)


# ---------------------------------------------------------------------------------------------------- statistics
def grid_validation(summary_rows: Sequence[Mapping[str, Any]], checkpoint: str = "final") -> dict[str, float]:
    """Per grid row (lambda order), the mean validation Dice of ``checkpoint`` over the seeds that have one."""
    out: dict[str, float] = {}
    for row in GRID:
        vals = [_number(r.get("val_dice")) for r in summary_rows if r["row"] == row and r["checkpoint"] == checkpoint]
        vals = [v for v in vals if math.isfinite(v)]
        if vals:
            out[row] = float(np.mean(vals))
    return out


def grid_best(summary_rows: Sequence[Mapping[str, Any]], checkpoint: str = "final") -> str:
    """The grid row with the highest mean validation Dice (:func:`grid_validation`); ties go to the smaller lambda."""
    val = grid_validation(summary_rows, checkpoint)
    if not val:
        raise ValueError(f"no grid row has a validation Dice for checkpoint {checkpoint!r}")
    return max(val, key=lambda row: (val[row], -GRID.index(row)))


def bootstrap_ci(diffs: Sequence[float], n_resamples: int = 10000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (units resampled with replacement); NaN if empty."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(n_resamples, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order: monotone, capped at 1; NaN stays NaN, not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for i, j in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, (valid.size - i) * p[j])
        out[j] = min(running, 1.0)
    return out.tolist()


def compare(by_seed: Mapping[int, Mapping[str, Sequence[Mapping[str, Any]]]], a: str, b: str,
            col: str = "dice_mean", lower_is_better: bool = False) -> dict[str, Any]:
    """:func:`table1.pooled_paired_test` of ``a`` against ``b`` plus the bootstrap 95 % interval of the mean
    difference (``ci95``) and the seeds compared (``seeds``)."""
    test = pooled_paired_test(by_seed, a, b, col, lower_is_better)
    d, _ = matched_differences(by_seed, a, b, col)
    return {**test, "ci95": list(bootstrap_ci(d)), "seeds": sorted(int(s) for s in test["seed_mean_diffs"])}


# ---------------------------------------------------------------------------------------------------- verdicts
def ordering_verdict(mean_diff: float, p_adjusted: float, lower_is_better: bool = False, alpha: float = ALPHA
                     ) -> str:
    """Claim "a better than b": reproduced / reversed when the difference favours a / b with adjusted p < alpha."""
    gain = -mean_diff if lower_is_better else mean_diff
    if p_adjusted < alpha and gain > 0:
        return "reproduced"
    if p_adjusted < alpha and gain < 0:
        return "reversed"
    return "not reproduced"


def smoother_verdict(jacobian: str, dice: str) -> str:
    """Claim 2 from the :func:`ordering_verdict` of its std |J| test (lower is better) and its Dice test."""
    if jacobian == "reversed":
        return "reversed"
    if jacobian == "reproduced" and dice != "reversed":
        return "reproduced"
    return "not reproduced"


def curve_margin(grid_points: Sequence[tuple[float, float]], point: tuple[float, float]) -> float:
    """``point``'s Dice minus the grid curve's at its std |J|: the curve through the grid's (std |J|, Dice)
    points sorted by std |J|, linear between them, the nearest end's Dice outside their range."""
    xs, ys = zip(*sorted(grid_points))
    return float(point[1] - np.interp(point[0], xs, ys))


def curve_verdict(margins: Sequence[float]) -> str:
    """Claim 3 from the per-seed margins: on or above everywhere, below everywhere, or mixed."""
    if all(m >= 0 for m in margins):
        return "reproduced"
    if all(m < 0 for m in margins):
        return "reversed"
    return "not reproduced"


def time_verdict(as_atc_seconds: float, grid_seconds: Sequence[float]) -> str:
    """Claim 5: one AS+ATC training (mean) against the five grid trainings (sum of their means)."""
    return "reproduced" if as_atc_seconds < sum(grid_seconds) else "not reproduced"


def missing_text(missing: Sequence[str]) -> str:
    """Missing runs (``"<row> seed <k>"``) grouped by row: ``"vm_l1 seeds 1, 2; as_atc seed 0"``."""
    by_row: dict[str, list[str]] = {}
    for run in missing:
        row, _, seed = run.rpartition(" seed ")
        by_row.setdefault(row, []).append(seed)
    return "; ".join(f"{row} seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}" for row, seeds in by_row.items())


def verdict_text(verdict: str, missing: Sequence[str], seeds: Sequence[int] = ()) -> str:
    """The verdict as reported: "pending (missing: ...)", or marked partial when runs it needs are not in yet."""
    if verdict == "pending":
        return f"pending (missing: {missing_text(missing)})"
    if missing:
        return f"{verdict} (partial: seeds {', '.join(map(str, seeds))}; missing: {missing_text(missing)})"
    return verdict


# ---------------------------------------------------------------------------------------------------- claims
def run_test(by_seed: PairsBySeed, present: set[Run], a: str, b: str | None, required: set[Run],
             col: str = "dice_mean", lower_is_better: bool = False) -> dict[str, Any]:
    """One planned comparison on the runs present; ``verdict = "pending"`` when no unit can be compared yet."""
    rec = {"a": a, "b": b, "column": col, "lower_is_better": lower_is_better,
           "missing": missing_runs(required, present)}
    if b is None or not any(a in rows and b in rows for rows in by_seed.values()):
        return {**rec, "verdict": "pending", "verdict_text": verdict_text("pending", rec["missing"])}
    return {**rec, **compare(by_seed, a, b, col, lower_is_better)}


def holm_family(tests: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Holm within one claim (a pending test counts as p = 1), then each computed test's ordering verdict."""
    adjusted = holm([t.get("wilcoxon_p", 1.0) for t in tests])
    out = []
    for t, p in zip(tests, adjusted):
        if "wilcoxon_p" in t:
            v = ordering_verdict(t["mean_diff"], p, t["lower_is_better"])
            t = {**t, "p_holm": p, "verdict": v, "verdict_text": verdict_text(v, t["missing"], t["seeds"])}
        out.append(t)
    return out


def claim_record(number: int, statement: str, tests: Sequence[dict[str, Any]], verdict: str | None,
                 text: str | None, **extra: Any) -> dict[str, Any]:
    """One claim's entry of the report; ``verdict = None`` when each test has its own (claim 4)."""
    return {"claim": number, "statement": statement, "tests": list(tests), "verdict": verdict,
            "verdict_text": text, **extra}


def claim1(by_seed: PairsBySeed, present: set[Run], best: str | None) -> dict[str, Any]:
    """AS+ATC against the grid best in Dice, seeds pooled (one test: its Holm p is its p)."""
    (t,) = holm_family([run_test(by_seed, present, "as_atc", best, multi_seed([*GRID, "as_atc"]))])
    return claim_record(1, "AS+ATC reaches a higher Dice than the grid's best", [t], t["verdict"], t["verdict_text"])


def claim2(by_seed: PairsBySeed, present: set[Run], best: str | None) -> dict[str, Any]:
    """AS+ATC against the grid best in std |J| and in Dice, Holm across the two (:func:`smoother_verdict`)."""
    required = multi_seed([*GRID, "as_atc"])
    jac, dice = holm_family([run_test(by_seed, present, "as_atc", best, required, "jacobian_std", True),
                             run_test(by_seed, present, "as_atc", best, required)])
    if "pending" in (jac["verdict"], dice["verdict"]):
        verdict = "pending"
    else:
        verdict = smoother_verdict(jac["verdict"], dice["verdict"])
    text = verdict_text(verdict, jac["missing"], jac.get("seeds", ()))
    return claim_record(2, "AS+ATC gives smoother fields (lower std |J|) than the grid's best, at equal or better "
                           "Dice", [jac, dice], verdict, text)


def seed_points(summary_rows: Sequence[Mapping[str, Any]], checkpoint: str = "final"
                ) -> dict[int, dict[str, tuple[float, float]]]:
    """``{seed: {row: (mean std |J|, mean Dice %)}}`` of the grid and adaptive rows over the test pairs."""
    out: dict[int, dict[str, tuple[float, float]]] = {}
    for r in summary_rows:
        x, y = _number(r.get("jacobian_std_mean")), _number(r.get("dice_mean_mean"))
        if r["checkpoint"] == checkpoint and r["row"] in (*GRID, *ADAPTIVE) and math.isfinite(x + y):
            out.setdefault(int(r["seed"]), {})[r["row"]] = (x, y)
    return out


def claim3(points: Mapping[int, Mapping[str, tuple[float, float]]]) -> dict[str, Any]:
    """Per seed with the whole grid and AS+ATC, AS+ATC against the grid curve; pending until seeds 0-2 all are."""
    per_seed = []
    for seed, pts in sorted(points.items()):
        if all(r in pts for r in (*GRID, "as_atc")):
            margin = curve_margin([pts[r] for r in GRID], pts["as_atc"])
            per_seed.append({"seed": seed, "as_atc_jacobian_std": pts["as_atc"][0], "as_atc_dice": pts["as_atc"][1],
                             "grid_dice_at": pts["as_atc"][1] - margin, "margin": margin})
    missing = missing_runs(multi_seed([*GRID, "as_atc"]), {(s, r) for s, pts in points.items() for r in pts})
    verdict = "pending" if missing else curve_verdict([s["margin"] for s in per_seed])
    return claim_record(3, "AS+ATC lies on or above the grid's Dice-versus-std |J| curve", [], verdict,
                        verdict_text(verdict, missing), per_seed=per_seed, missing=missing)


def claim4(by_seed: PairsBySeed, present: set[Run], best: str | None) -> dict[str, Any]:
    """The four seed-0 ablation tests in Dice, Holm across the four, one verdict each."""
    seed0 = {0: by_seed[0]} if 0 in by_seed else {}
    plan = (("as", best, {(0, "as")} | multi_seed(GRID)), ("s_tc", "vm_l3", {(0, "s_tc"), (0, "vm_l3")}),
            ("as_tc", "as", {(0, "as_tc"), (0, "as")}), ("as_atc", "as_tc", {(0, "as_atc"), (0, "as_tc")}))
    tests = holm_family([run_test(seed0, present, a, b, req) for a, b, req in plan])
    return claim_record(4, "Each part adds (AS > grid best, S+TC > VM lambda=3, AS+TC > AS, AS+ATC > AS+TC in Dice, "
                           "seed 0)", tests, None, None)


def claim5(summary_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean training wall time of AS+ATC against the sum of the grid rows' means (the checkpoint-final lines)."""
    timed = [r for r in summary_rows if r["checkpoint"] == "final" and math.isfinite(_number(r.get("train_seconds")))]
    seeds = {row: sorted(r["seed"] for r in timed if r["row"] == row) for row in (*GRID, "as_atc")}
    means = {row: float(np.mean([_number(r["train_seconds"]) for r in timed if r["row"] == row]))
             for row in seeds if seeds[row]}
    missing = missing_runs(multi_seed([*GRID, "as_atc"]), {(r["seed"], r["row"]) for r in timed})
    if len(means) < len(seeds):
        verdict = "pending"
    else:
        verdict = time_verdict(means["as_atc"], [means[g] for g in GRID])
    return claim_record(5, "One AS+ATC run costs less training time than the five-run grid", [], verdict,
                        verdict_text(verdict, missing, seeds["as_atc"]), missing=missing, mean_train_seconds=means,
                        seeds_timed=seeds, grid_sum_seconds=sum(means.get(g, math.nan) for g in GRID))


def analyse(pairs: Mapping[str, PairsBySeed], summary_rows: Sequence[Mapping[str, Any]], checkpoint: str
            ) -> dict[str, Any]:
    """The grid pick and the five claims for one checkpoint type (``final``: primary, ``best``: secondary)."""
    by_seed = pairs.get(checkpoint, {})
    present = {(seed, row) for seed, rows in by_seed.items() for row in rows}
    val = grid_validation(summary_rows, checkpoint)
    best = grid_best(summary_rows, checkpoint) if val else None
    claims = [claim1(by_seed, present, best), claim2(by_seed, present, best),
              claim3(seed_points(summary_rows, checkpoint)), claim4(by_seed, present, best), claim5(summary_rows)]
    return {"checkpoint": checkpoint, "grid_validation_dice": val, "grid_best": best, "claims": claims}


def build_report(pairs: Mapping[str, PairsBySeed], summary_rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Everything the JSON holds: which runs are in, the analysis per checkpoint, the trade-off figure's numbers."""
    runs = {ck: sorted([seed, row] for seed, rows in pairs.get(ck, {}).items() for row in rows) for ck in CHECKPOINTS}
    return {"generated": time.strftime("%Y-%m-%d %H:%M"), "protocol_seeds": list(PROTOCOL_SEEDS), "runs_in": runs,
            "missing": {ck: missing_runs(required_runs(), {tuple(r) for r in runs[ck]}) for ck in CHECKPOINTS},
            "results": {ck: analyse(pairs, summary_rows, ck) for ck in CHECKPOINTS},
            "tradeoff": tradeoff_records(seed_points(summary_rows, "final"))}


# ---------------------------------------------------------------------------------------------------- figure
def tradeoff_records(points: Mapping[int, Mapping[str, tuple[float, float]]]) -> list[dict[str, Any]]:
    """The trade-off figure's numbers, one record per (seed, row), in table order."""
    return [{"seed": seed, "row": row, "jacobian_std_mean": points[seed][row][0], "dice_mean": points[seed][row][1]}
            for seed in sorted(points) for row in _order(points[seed])]


MARKERS = {"dif_vm": "v", "cir_dm": "^", "as": "s", "s_tc": "D", "as_tc": "P"}


def plot_tradeoff(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One panel per seed: the VM grid as a curve over lambda, the adaptive rows as points, AS+ATC highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r["seed"] for r in records})
    fig, axes = plt.subplots(1, len(seeds), figsize=(4.4 * len(seeds), 3.8), squeeze=False, layout="constrained")
    for ax, seed in zip(axes[0], seeds):
        _tradeoff_panel(ax, seed, {r["row"]: (r["jacobian_std_mean"], r["dice_mean"]) for r in records
                                   if r["seed"] == seed})
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _tradeoff_panel(ax: Any, seed: int, pts: Mapping[str, tuple[float, float]]) -> None:
    """One seed's panel of :func:`plot_tradeoff`."""
    grid = [r for r in GRID if r in pts]
    if grid:
        ax.plot(*zip(*(pts[r] for r in grid)), "-o", color="0.45", ms=4, label="VM grid")
        for r in grid:
            ax.annotate(f"$\\lambda$={LAMBDAS[GRID.index(r)]}", pts[r], textcoords="offset points", xytext=(4, 3),
                        fontsize=7, color="0.3")
    for row in (r for r in ADAPTIVE if r in pts):
        style = {"marker": "*", "s": 160, "color": "crimson", "zorder": 3} if row == "as_atc" else \
            {"marker": MARKERS[row], "s": 36}
        ax.scatter(*pts[row], label=LABELS[row], **style)
    ax.set_title(f"training seed {seed}, last checkpoints", fontsize=9)
    ax.set_xlabel("mean std |J| over the test pairs")
    ax.set_ylabel("mean Dice over the test pairs (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


# ---------------------------------------------------------------------------------------------------- markdown
def _num(x: Any, fmt: str) -> str:
    """``x`` formatted, "n/a" when missing or not finite."""
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def runs_markdown(report: Mapping[str, Any]) -> list[str]:
    """Which (seed, row) runs are in, per checkpoint type: one line per row, one column per seed."""
    ins = {ck: {tuple(r) for r in report["runs_in"][ck]} for ck in CHECKPOINTS}
    seeds = sorted(set(PROTOCOL_SEEDS) | {s for runs in ins.values() for s, _ in runs})
    needed = required_runs()
    rows = _order({r: 1 for s, r in needed | ins["final"] | ins["best"]})
    lines = ["| Row | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for row in rows:
        cells = [_run_cell((seed, row), ins, needed) for seed in seeds]
        lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cells) + " |")
    return lines


def _run_cell(run: Run, ins: Mapping[str, set[Run]], needed: set[Run]) -> str:
    """``in`` (both checkpoints scored), ``<checkpoint> only``, ``missing`` (planned, not in) or ``–``."""
    scored = [ck for ck in CHECKPOINTS if run in ins[ck]]
    if len(scored) == len(CHECKPOINTS):
        return "in"
    if scored:
        return f"{scored[0]} only"
    return "**missing**" if run in needed else "–"


def _test_line(claim: Mapping[str, Any], t: Mapping[str, Any]) -> str:
    """One test's line of the claims table (the claim's verdict, or the test's own for claim 4)."""
    what = "Dice (points)" if t["column"] == "dice_mean" else "std \\|J\\| (lower is better)"
    name = f"{LABELS[t['a']]} − {LABELS.get(t['b'], 'grid best')}, {what}"
    verdict = t["verdict_text"] if claim["verdict"] is None else claim["verdict_text"]
    if "n" not in t:
        return f"| {claim['claim']} | {name} | – | – | – | – | – | {verdict} |"
    lo, hi = t["ci95"]
    return (f"| {claim['claim']} | {name} | {t['n']} | {_num(t['mean_diff'], '+.3g')} [{_num(lo, '+.3g')}, "
            f"{_num(hi, '+.3g')}] | {_num(t['wilcoxon_p'], '.3g')} | {_num(t['p_holm'], '.3g')} "
            f"| {_num(t['rank_biserial'], '+.2f')} | {verdict} |")


def claims_markdown(result: Mapping[str, Any]) -> list[str]:
    """The claims table: one line per test; claims 3 and 5 by their verdict (details below the table)."""
    lines = ["| Claim | Comparison | n | Mean diff [95 % CI] | Wilcoxon p | Holm p | Rank-biserial | Verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["claims"]:
        if c["tests"]:
            lines += [_test_line(c, t) for t in c["tests"]]
        else:
            statement = c["statement"].replace("|", "\\|")
            lines.append(f"| {c['claim']} | {statement} | – | – | – | – | – | {c['verdict_text']} |")
    return lines


def curve_markdown(claim: Mapping[str, Any]) -> list[str]:
    """Claim 3's per-seed margins."""
    if not claim["per_seed"]:
        return ["Claim 3: no seed has the whole grid and AS+ATC yet."]
    lines = ["Claim 3, per seed (Dice in %; margin = AS+ATC's Dice minus the grid curve's at AS+ATC's std |J|, "
             "points):", "", "| Seed | AS+ATC std \\|J\\| | AS+ATC Dice | grid curve's Dice there | margin |",
             "|---|---|---|---|---|"]
    lines += [f"| {s['seed']} | {s['as_atc_jacobian_std']:.4f} | {s['as_atc_dice']:.2f} | {s['grid_dice_at']:.2f} "
              f"| {s['margin']:+.2f} |" for s in claim["per_seed"]]
    return lines


def time_markdown(claim: Mapping[str, Any]) -> list[str]:
    """Claim 5's training times."""
    means, seeds = claim["mean_train_seconds"], claim["seeds_timed"]
    parts = [f"{LABELS[row]} {means[row] / 60:.1f} min (seeds {', '.join(map(str, seeds[row]))})"
             for row in (*GRID, "as_atc") if row in means]
    return ["Claim 5, training wall time, mean over the seeds timed (the same for both checkpoints): "
            + ("; ".join(parts) or "none yet") + f". Sum of the grid's five means: "
            f"{_num(claim['grid_sum_seconds'] / 60, '.1f')} min."]


def checkpoint_markdown(result: Mapping[str, Any]) -> list[str]:
    """One checkpoint type's part: the grid pick, the claims table, claim 3's margins, claim 5's times."""
    val = result["grid_validation_dice"]
    picks = ", ".join(f"lambda={LAMBDAS[GRID.index(r)]}: {v:.2f} %" for r, v in val.items()) or "none yet"
    best = LABELS[result["grid_best"]] if result["grid_best"] else "not known yet"
    claims = {c["claim"]: c for c in result["claims"]}
    return [f"#### {CHECKPOINTS[result['checkpoint']]}", "",
            f"Grid best: **{best}**, by mean validation Dice of this checkpoint over the seeds that have it "
            f"({picks}).", "", *claims_markdown(result), "", *curve_markdown(claims[3]), "", *time_markdown(claims[5])]


def report_markdown(report: Mapping[str, Any], docs: Path, inputs: Sequence[Path], figure: Path | None,
                    paper_table: str | None = None) -> str:
    """The ``table1:protocol:verdicts`` section: runs in, then primary and secondary results, then the figure,
    then ``paper_table`` (the paper's Table 1 beside ours, :func:`paper_table.side_by_side_markdown`) if given."""
    src = ", ".join(f"[{os.path.relpath(p, docs)}]({os.path.relpath(p, docs)})" for p in inputs)
    lines = [f"### Protocol verdicts (generated {report['generated']} by `python benchmarks/protocol_report.py` "
             f"from {src})", "",
             "Rules: the pre-registered protocol above. Paired tests over the units (seed, test pair); mean "
             "difference (first row minus second) with its 95 % percentile bootstrap interval (10 000 resamples of "
             "the units); two-sided Wilcoxon signed-rank p; Holm within each claim, a planned test not computed yet "
             "counting as p = 1. A claim computed on part of its runs is marked partial; one that cannot be "
             "computed yet is pending. The classical rows are run once (seed 0).", "",
             "Runs in (`in`: both checkpoints scored):", "", *runs_markdown(report)]
    for ck in CHECKPOINTS:
        lines += ["", *checkpoint_markdown(report["results"][ck])]
    if figure is not None:
        lines += ["", "Dice against std |J| per seed, last checkpoints (numbers in "
                      "[results/table1_protocol_tradeoff.csv](results/table1_protocol_tradeoff.csv)):", "",
                  f"![protocol trade-off]({os.path.relpath(figure, docs)})"]
    if paper_table is not None:
        lines += ["", "#### The paper's Table 1 beside ours", "",
                  "Each cell reads \"paper / ours\": the paper's figure as printed (its Table 1: mean ± std over its "
                  "10 test pairs, [results/paper_table1.csv](results/paper_table1.csv)), then ours pooled over the "
                  "seeds in (last checkpoints, mean ± std over seeds x test pairs; our kidney is the mean of the right "
                  "and left kidney). Only the rows both tables have; the paper has no lambda = 2 or 4 row, we have no "
                  "Deeds. The two settings differ in data, resolution and schedule (\"What differs from the paper\" "
                  "at the top of this page): compare the orderings within a column, not the levels across the two.",
                  "", paper_table]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- outputs
def write_outputs(report: Mapping[str, Any], docs: Path, inputs: Sequence[Path]) -> None:
    """The JSON, the trade-off CSV and figure, and the results.md section, under ``docs``."""
    res_dir, fig_dir = docs / "results", docs / "figures"
    res_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "table1_protocol_verdicts.json").write_text(json.dumps(report, indent=2, default=str))
    write_csv(res_dir / "table1_protocol_tradeoff.csv", report["tradeoff"])
    figure = fig_dir / "table1_protocol_tradeoff.png" if report["tradeoff"] else None
    if figure is not None:
        plot_tradeoff(report["tradeoff"], figure)
    paper = side_by_side_markdown(inputs[1], DEFAULT_PAPER) if DEFAULT_PAPER.is_file() else None
    replace_section(docs / "results.md", SECTION, report_markdown(report, docs, inputs, figure, paper))
    print(f"[protocol_report] wrote {res_dir / 'table1_protocol_verdicts.json'}, {docs / 'results.md'}", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", help="per-pair CSV (default <docs>/results/table1_protocol_seeds_pairs.csv)")
    ap.add_argument("--summary", help="summary CSV (default <docs>/results/table1_protocol_seeds.csv)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="docs folder read from and written into")
    ap.add_argument("--no_docs", action="store_true", help="write into --out instead of --docs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "protocol_report"),
                    help="output folder with --no_docs")
    args = ap.parse_args(argv)
    docs = Path(args.docs)
    pairs = Path(args.pairs or docs / "results" / "table1_protocol_seeds_pairs.csv")
    summary = Path(args.summary or docs / "results" / "table1_protocol_seeds.csv")
    report = build_report(read_pairs(pairs), read_summary(summary))
    write_outputs(report, Path(args.out) if args.no_docs else docs, [pairs, summary])


if __name__ == "__main__":
    main()
