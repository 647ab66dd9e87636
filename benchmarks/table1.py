"""Reproduce the paper's Table 1 and Figures 2/3 on the embedded phantom dataset, next to classical registration.

Run (figures in docs/results.md and docs/performance.md)::

    pip install -e ".[benchmark]"
    python benchmarks/table1.py --preset quick      # 2-core CPU: 36.5 minutes measured
    python benchmarks/table1.py --preset full       # the paper's 176x176x128, meant for a GPU

Every learned row is trained with the bundle's own command (``python -m monai.bundle run training`` with
``bundle/configs/train.json``, one child process and one ``bundle_root`` per row, wall time and peak RSS of that
process recorded), all with the same phantom dataset, split, seed, input size and number of iterations; only
``--method`` and ``--lambda_phi`` differ. Every row, learned or classical, is then scored by the bundle's own
evaluator (``bundle/configs/evaluate.json`` on the ``test`` section): the classical tools are wrapped as
"networks" (``benchmarks/classical.py``), so warping, Dice, ASD, Jacobian figures and the per-pair timing are the
same code for all rows.

Rows: Initial, SyN (ANTsPy), elastix B-spline (itk-elastix), VM with fixed lambda_phi in ``--grid`` (default
1..5, the five-run grid search; the paper's table shows 1, 3 and 5, ours all five), DIF-VM, VM (CIR-DM), AS,
S+TC, AS+TC, AS+ATC. The learned rows are scored twice: with the best-validation and with the last checkpoint.
The paper's orderings are decided by paired Wilcoxon tests over the test pairs; the grid's "best" run is the one
with the best validation Dice, as a grid search would choose it.

Outputs (``--docs docs``):

- ``docs/results/table1_<preset>.csv``: one row per method, mean and sample std over the test pairs of every
  column, training wall time, steps, peak RSS; ``docs/results/table1_<preset>_pairs.csv``: every pair;
- ``docs/results/table1_<preset>.json``: the settings, versions and the paired comparisons;
  ``docs/results/table1_<preset>_final*.csv``: the same with the last checkpoints;
  ``docs/results/table1_<preset>_weights_<row>.csv``: lambda_phi and lambda_c per training step;
- ``docs/figures/table1_<preset>_weights.png`` (Fig. 3 b/d), ``..._uncertainty.png`` (Fig. 3 a/c),
  ``..._slices.png`` (Fig. 2);
- the generated part of ``docs/results.md`` between ``<!-- table1:<preset>:begin -->`` and
  ``<!-- table1:<preset>:end -->`` (the rest of the page is left as written).

The multi-seed test (issue 10), e.g. ``python benchmarks/table1.py --preset full --seeds 0 1 2 --rows ...``: every seed
uses the same phantom dataset (data seed ``--data_seed``, bundle id ``phantom#seed``; the pre-registered protocol
varies only the training seed) and trains every learned row in ``<out>/runs/seed<k>/<row>``.
The primary result is the LAST checkpoint of every run (``models/model_final.pt``), the best-validation checkpoint
(``models/model.pt``) is secondary; both are scored per seed. Results are recorded as they land, after every
(seed, row, checkpoint) evaluation: ``results/table1_<preset>_seeds_pairs.csv`` (every pair, ``seed`` column) and
``results/table1_<preset>_seeds.csv`` (per seed and pooled, ``seed = all``); at the end the pooled paired tests
(:func:`pooled_paired_test`: Wilcoxon over seeds x pairs, mean difference, Cohen's d_z, rank-biserial) go to
``results/table1_<preset>_seeds.json`` and the ``table1:<preset>:seeds`` section of ``results.md``. Without
``--seeds`` (one seed, ``--seed``) the layout and outputs are those above (plus ``table1_<preset>_runs*.csv``, the
same record as it lands). Each learned row is scored as soon as its training ends, before the next one starts.
Several processes may train disjoint rows at once (``--no_docs``, so that they do not overwrite each other's
records); ``--collect`` then writes the record of every finished run into ``docs/`` without training anything.
A multi-seed run that writes into ``docs/`` keeps the runs already recorded there (:meth:`RunRecorder.load`: runs
of earlier sessions, whose training folders are gone) and replaces only the (seed, row, checkpoint) it scores again,
so ``--collect --seeds 0 --rows as`` adds one run to the record of all the others.

Nothing finished is redone: a training whose ``train_done.json`` records the same command is reused (``--retrain``
forces it); an interrupted one (``train_started.json`` with the same command and an epoch checkpoint in
``models/``) is resumed with ``--resume True`` (the bundle refuses a checkpoint of another configuration), its
``train.log`` appended to; otherwise it starts clean. An evaluation whose ``scores_<best|final>.csv`` and
``.json`` record match the settings and the checkpoint file is read back (see :func:`scored_row`).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtreg_monai.metrics import finite_summary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment_info, run_measured  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # the quick-start setting of the bundle (64x64x48, 20 epochs of 30 pairs = 600 steps), with more test pairs
    "quick": {"spatial_size": [64, 64, 48], "epochs": 20, "num_pairs": 50, "num_val": 5, "num_test": 15},
    # the paper's input size, batch 1, N = 6; 100 epochs of 30 pairs = 3000 steps (our choice, for a GPU)
    "full": {"spatial_size": [176, 176, 128], "epochs": 100, "num_pairs": 50, "num_val": 5, "num_test": 15},
    # the pre-registered multi-seed test of docs/results.md (25 / 10 / 15 pairs): 120 epochs = 3000 steps, the
    # rule's cap (the amendment after the pilot run, docs/results.md); its secondary checkpoint is the best
    # validation of the second half of training (bundle id best_checkpoint_from_epoch = epochs // 2 + 1)
    "protocol": {"spatial_size": [64, 64, 48], "epochs": 120, "num_pairs": 50, "num_val": 10, "num_test": 15,
                 "best_from_second_half": True},
}

#: the learned rows after the grid: row id -> (label, bundle overrides)
LEARNED_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "dif_vm": ("DIF-VM", {"method": "dif_vm"}),
    "cir_dm": ("VM (CIR-DM)", {"method": "cir_dm"}),
    "as": ("AS", {"method": "as"}),
    "s_tc": ("S+TC", {"method": "s_tc"}),
    "as_tc": ("AS+TC", {"method": "as_tc"}),
    "as_atc": ("AS+ATC", {"method": "as_atc"}),
}
CLASSICAL_ROWS: dict[str, tuple[str, str]] = {
    "initial": ("Initial", "classical.NoRegistration"),
    "syn": ("SyN (ANTsPy)", "classical.ANTsSyN"),
    "elastix": ("elastix B-spline", "classical.ElastixBSpline"),
}
#: the order of the rows in the tables and figures (the paper's, with the whole lambda grid)
TABLE_ORDER = ["initial", "syn", "elastix", "vm_l1", "vm_l2", "vm_l3", "vm_l4", "vm_l5", "dif_vm", "cir_dm", "as",
               "s_tc", "as_tc", "as_atc"]


def grid_row(lam: float) -> str:
    return f"vm_l{lam:g}".replace(".", "p")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    ap.add_argument("--out", default="", help="work folder (default benchmarks/out/table1_<preset>)")
    ap.add_argument("--docs", default=str(ROOT / "docs"), help="docs folder the results are written into")
    ap.add_argument("--rows", nargs="*", default=None, help="only these rows (default all)")
    ap.add_argument("--grid", nargs="+", type=float, default=[1, 2, 3, 4, 5], help="lambda_phi of the VM grid")
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--spatial_size", nargs=3, type=int, default=None, help="override the preset's size")
    ap.add_argument("--num_pairs", type=int, default=None)
    ap.add_argument("--num_val", type=int, default=None)
    ap.add_argument("--num_test", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="the one seed of a single run (folders runs/<row>)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="the multi-seed test: these training seeds, one shared phantom dataset (--data_seed), "
                         "trainings in runs/seed<k>/<row>; results in table1_<preset>_seeds*.csv/json and the "
                         "table1:<preset>:seeds section of results.md; the classical rows (deterministic) are scored "
                         "for the first seed only")
    ap.add_argument("--data_seed", type=int, default=0, help="seed of the phantom dataset (bundle id phantom#seed)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch / ITK threads (default: all)")
    ap.add_argument("--figure_pair", type=int, default=0, help="index of the test pair shown in the figures")
    ap.add_argument("--retrain", action="store_true", help="train again even when a row's training finished")
    ap.add_argument("--no_docs", action="store_true", help="do not write into docs/ (smoke runs)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: report the finished trainings among --rows / --seeds (scoring them if "
                         "needed) and list the others as pending; for runs trained by several processes at once")
    ap.add_argument("--no_final", action="store_true",
                    help="do not also score the learned rows' last checkpoint (models/model_final.pt)")
    args = ap.parse_args()

    cfg = dict(PRESETS[args.preset])
    for key in ("epochs", "spatial_size", "num_pairs", "num_val", "num_test"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["seed"], cfg["data_seed"] = args.seed, args.data_seed
    out = Path(args.out or ROOT / "benchmarks" / "out" / f"table1_{args.preset}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)

    rows = all_rows(args.grid)
    if args.rows:
        unknown = set(args.rows) - set(rows)
        if unknown:
            raise ValueError(f"--rows: unknown {sorted(unknown)}, expected some of {sorted(rows)}.")
        rows = {k: v for k, v in rows.items() if k in args.rows}

    per_seed = args.seeds is not None
    seeds = list(dict.fromkeys(args.seeds)) if per_seed else [args.seed]
    res_dir = (out if args.no_docs else Path(args.docs)) / "results"
    recorder = RunRecorder(res_dir / f"table1_{args.preset}_{'seeds' if per_seed else 'runs'}", all_rows(args.grid),
                           out, per_seed)
    if per_seed and not args.no_docs:
        kept = recorder.load()
        print(f"[table1] kept {kept} (seed, row, checkpoint) results recorded in {res_dir}", flush=True)
    started = time.time()
    spacing = [f / s for f, s in zip(common_overrides(cfg, out)["phantom#field_of_view"], cfg["spatial_size"])]
    checked = False
    runs: dict[int, dict[str, Any]] = {}
    for seed in seeds:
        overrides = common_overrides({**cfg, "seed": seed}, out, per_seed=per_seed)
        key = seed if per_seed else None
        datalist = make_dataset(overrides)
        print(f"[table1] seed {seed}: dataset {datalist}, {({**cfg, 'seed': seed})}", flush=True)
        figure_pair = -1 if per_seed else args.figure_pair
        trained: dict[str, dict[str, Any]] = {}
        pairs: dict[str, list[dict[str, Any]]] = {}
        slices: dict[str, dict[str, np.ndarray]] = {}
        final_pairs: dict[str, list[dict[str, Any]]] = {}
        # the learned rows first, each scored as soon as it is trained, so that its results land (and can be
        # committed) before the next training starts; then the classical rows
        for row, spec in sorted(rows.items(), key=lambda kv: kv[1]["kind"] != "learned"):
            if spec["kind"] == "learned":
                root = run_dir(out, row, key)
                if args.collect and training_action(root, training_command(root, spec, overrides)) != "reuse":
                    print(f"[table1] seed {seed} {row}: training not finished, pending ({root})", flush=True)
                    continue
                trained[row] = train_row(row, spec, overrides, out, args.retrain, args.threads, seed=key)
            elif seed != seeds[0]:
                continue  # deterministic: another training seed would repeat the first seed's registrations
            elif not checked:
                check_classical(rows, spacing, args.threads)
                checked = True
            t = time.time()
            pairs[row], slices[row] = scored_row(row, spec, overrides, out, spacing, args.threads, figure_pair,
                                                 seed=key, checkpoint="best")
            recorder.add(seed, "best", row, pairs[row], trained.get(row))
            print(f"[table1] seed {seed} {row}: {len(pairs[row])} pairs (best checkpoint) in "
                  f"{time.time() - t:.0f} s", flush=True)
            if args.no_final:
                continue
            # the last checkpoint: the primary result of the multi-seed test (a classical row has one result)
            final_pairs[row] = pairs[row] if spec["kind"] != "learned" else scored_row(
                row, spec, overrides, out, spacing, args.threads, -1, seed=key, checkpoint="final")[0]
            recorder.add(seed, "final", row, final_pairs[row], trained.get(row))
        pairs, slices, final_pairs = ({r: d[r] for r in rows if r in d} for d in (pairs, slices, final_pairs))
        runs[seed] = {"overrides": overrides, "trained": trained, "pairs": pairs, "slices": slices,
                      "final_pairs": final_pairs}

    if per_seed:
        write_seed_outputs(args, cfg, out, rows, runs, spacing, time.time() - started, recorder)
    else:
        r = runs[seeds[0]]
        pairs, trained, final_pairs = r["pairs"], r["trained"], r["final_pairs"]
        rows = {k: v for k, v in rows.items() if k in pairs}  # --collect: the finished ones
        summary = summarise(rows, pairs, trained, out)
        comparisons = paired_comparisons(pairs)
        final = {"summary": summarise(rows, final_pairs, trained, out, "final"),
                 "comparisons": paired_comparisons(final_pairs),
                 "pairs": final_pairs} if final_pairs else None
        info = run_info(args, cfg, spacing, time.time() - started, trained)
        write_outputs(args, cfg, out, rows, pairs, summary, comparisons, info, r["slices"], r["overrides"], trained,
                      final)
    print(f"[table1] done in {(time.time() - started) / 60:.1f} min", flush=True)


def check_classical(rows: Mapping[str, Mapping[str, Any]], spacing: Sequence[float], threads: int) -> None:
    """Check the classical tools' displacement convention before they are scored."""
    for row, spec in rows.items():
        if spec["kind"] == "classical" and row != "initial":
            from classical import ANTsSyN, ElastixBSpline, check_displacement_convention

            tool = {"syn": ANTsSyN, "elastix": ElastixBSpline}[row](spacing=spacing, num_threads=threads)
            check_displacement_convention(tool)
            print(f"[table1] {row}: displacement convention checked", flush=True)


FIGURE_KEYS = ("fixed", "moving", "warped", "fixed_label")
RUN_KEYS = ("seed", "row", "checkpoint")  # the columns scored_row adds to the evaluator's per-pair rows
SCORES_FORMAT = 2  # of scores_<checkpoint>.csv; 2: the evaluator's checkpoint path in checkpoint_file


def _file_stamp(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.is_file():
        return {"path": str(path), "missing": True}
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scored_row(row: str, spec: Mapping[str, Any], overrides: Mapping[str, Any], out: Path, spacing: Sequence[float],
               threads: int, figure_pair: int, *, seed: int | None = None, checkpoint: str = "best"):
    """
    :func:`evaluate_row` with its result kept in the run folder: ``scores_<checkpoint>.csv`` (one line per test
    pair, with ``seed``, ``row`` and ``checkpoint`` columns) and ``scores_<checkpoint>.json`` (what was scored: the
    settings and the checkpoint file's size and mtime). A finished evaluation whose record matches is read back, not
    redone. ``checkpoint``: ``"best"`` (``models/model.pt``) or ``"final"`` (``models/model_final.pt``).
    """
    root = run_dir(out, row, seed)
    learned = spec["kind"] == "learned"
    extra: dict[str, Any] = {}
    if learned and checkpoint == "final":
        extra = {"eval_checkpoint": str(root / "models" / "model_final.pt"),
                 "eval_dir": str(root / "outputs" / "eval_final")}
    ov = {**overrides, **extra}
    ckpt = root / "models" / ("model_final.pt" if checkpoint == "final" else "model.pt") if learned else None
    key = json.loads(json.dumps({"row": row, "spec": spec, "overrides": ov, "checkpoint": checkpoint,
                                 "checkpoint_file": _file_stamp(ckpt), "format": SCORES_FORMAT}, default=str))
    csv_path, key_path = root / f"scores_{checkpoint}.csv", root / f"scores_{checkpoint}.json"
    fig_path = root / f"scores_{checkpoint}_figure{figure_pair}.npz"
    if csv_path.is_file() and _read_json(key_path).get("key") == key and (figure_pair < 0 or fig_path.is_file()):
        with open(csv_path) as f:
            pair_rows = [{k: v for k, v in r.items() if k not in RUN_KEYS} for r in csv.DictReader(f)]
        captured: dict[str, np.ndarray] = {}
        if figure_pair >= 0:
            with np.load(fig_path) as z:
                captured = {k: z[k] for k in z.files}
        print(f"[table1] {row}: scores reused ({csv_path})", flush=True)
        return pair_rows, captured
    key_path.unlink(missing_ok=True)
    pair_rows, captured = evaluate_row(row, spec, ov, out, spacing, threads, figure_pair, seed=seed)
    # the evaluator names the checkpoint file in a "checkpoint" column: kept as checkpoint_file, since "checkpoint"
    # is the run key ("best" / "final") of every record written from here on
    pair_rows = [{("checkpoint_file" if k == "checkpoint" else k): v for k, v in r.items()} for r in pair_rows]
    if figure_pair >= 0 and captured:
        np.savez_compressed(fig_path, **{k: captured[k] for k in FIGURE_KEYS if k in captured})
    tmp = csv_path.with_suffix(".csv.tmp")
    write_csv(tmp, [{"seed": overrides.get("seed"), "row": row, "checkpoint": checkpoint, **r} for r in pair_rows])
    tmp.replace(csv_path)
    key_path.write_text(json.dumps({"key": key}, indent=1))
    return pair_rows, captured


class RunRecorder:
    """
    Results as they land: after every (seed, row, checkpoint) evaluation, ``<stem>_pairs.csv`` (every test pair,
    ``seed``, ``row``, ``checkpoint`` and ``primary`` columns) and ``<stem>.csv`` (mean and sample std per seed,
    row and checkpoint, plus ``seed = all``: seeds x pairs pooled, with ``n_seeds`` and ``dice_mean_seed_std``, the
    sample std of the per-seed means) are rewritten, so that partial results can be committed. The primary result
    is the last checkpoint (``checkpoint = final``), the best-validation one is secondary.
    """

    RECORD_KEYS = (*RUN_KEYS, "primary", "n_seeds")  # the columns write() and summary() add to a run's records

    def __init__(self, stem: Path, rows: Mapping[str, Mapping[str, Any]], out: Path, per_seed: bool):
        self.stem, self.rows, self.out, self.per_seed = stem, rows, out, per_seed
        self.pairs: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
        self.trained: dict[tuple[int, str], dict[str, Any]] = {}
        # per-seed summary lines and training records of runs recorded earlier (:meth:`load`), kept as written
        self.recorded: dict[tuple[int, str, str], dict[str, Any]] = {}
        self.recorded_training: dict[str, Any] = {}

    def load(self) -> int:
        """
        Keep the runs already recorded in ``<stem>_pairs.csv``, ``<stem>.csv`` and ``<stem>.json``: runs land over
        several sessions and a run's training folder does not outlive its session, so its recorded pairs, per-seed
        summary line (validation Dice, training time) and training record are kept as written, unless this process
        scores the same (seed, row, checkpoint) again (:meth:`add` replaces it). Returns the number of runs kept.
        """
        pairs_csv, summary_csv = self.stem.with_name(self.stem.name + "_pairs.csv"), self.stem.with_suffix(".csv")
        if not pairs_csv.is_file() or not summary_csv.is_file():
            return 0
        with open(pairs_csv, newline="") as f:
            for r in csv.DictReader(f):
                key = (int(r["seed"]), r["checkpoint"], r["row"])
                self.pairs.setdefault(key, []).append({k: v for k, v in r.items() if k not in self.RECORD_KEYS})
        with open(summary_csv, newline="") as f:
            for r in csv.DictReader(f):
                if r["seed"] == "all":
                    continue  # the pooled lines are recomputed
                key = (int(r["seed"]), r["checkpoint"], r["row"])
                if key not in self.pairs:
                    continue
                line = {k: _csv_value(v) for k, v in r.items() if k not in self.RECORD_KEYS}
                self.recorded[key] = {"row": r["row"], **line}
                seconds = line.get("train_seconds")
                if isinstance(seconds, (int, float)) and math.isfinite(seconds):
                    self.trained[(key[0], key[2])] = {"train_seconds": seconds,
                                                      "steps": int(line.get("train_steps") or 0),
                                                      "peak_rss_mib": float(line.get("train_peak_rss_mib") or math.nan)}
        missing = sorted(set(self.pairs) - set(self.recorded))
        if missing:
            raise ValueError(f"{pairs_csv}: runs {missing} have pairs but no summary line in {summary_csv}.")
        unknown = sorted({row for _, _, row in self.pairs} - set(self.rows))
        if unknown:
            raise ValueError(f"{pairs_csv}: rows {unknown} recorded, expected some of {sorted(self.rows)}.")
        if self.stem.with_suffix(".json").is_file():
            self.recorded_training = _read_json(self.stem.with_suffix(".json")).get("training", {})
        return len(self.recorded)

    def add(self, seed: int, checkpoint: str, row: str, pair_rows: Sequence[Mapping[str, Any]],
            trained: Mapping[str, Any] | None = None) -> None:
        self.pairs[(seed, checkpoint, row)] = [dict(r) for r in pair_rows]
        self.recorded.pop((seed, checkpoint, row), None)
        if trained:
            self.trained[(seed, row)] = dict(trained)
        self.write()

    def seeds(self) -> list[int]:
        """Every seed with a result, recorded earlier or scored now."""
        return sorted({seed for seed, _, _ in self.pairs})

    def pairs_by_seed(self, checkpoint: str) -> dict[int, dict[str, list[dict[str, Any]]]]:
        by: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for (seed, ck, row), prs in self.pairs.items():
            if ck == checkpoint:
                by.setdefault(seed, {})[row] = prs
        return by

    def summary(self) -> list[dict[str, Any]]:
        table: list[dict[str, Any]] = []
        for ck in ("final", "best"):
            by_seed = self.pairs_by_seed(ck)
            for seed, prs in sorted(by_seed.items()):
                rows = {r: self.rows[r] for r in _order(prs) if (seed, ck, r) not in self.recorded}
                trained = {r: self.trained[(seed, r)] for r in rows if (seed, r) in self.trained}
                fresh = {rec["row"]: rec for rec in summarise(rows, prs, trained, self.out, ck,
                                                             seed=seed if self.per_seed else None)}
                for r in _order(prs):
                    rec = fresh[r] if r in fresh else self.recorded[(seed, ck, r)]
                    table.append({"seed": seed, "checkpoint": ck, "primary": ck == "final", "n_seeds": 1, **rec})
            for row in _order({r: 1 for prs in by_seed.values() for r in prs}):
                seeds = [s for s in sorted(by_seed) if row in by_seed[s]]
                pooled = {row: [p for s in seeds for p in by_seed[s][row]]}
                times = [self.trained[(s, row)] for s in seeds if (s, row) in self.trained]
                trained = {row: {"train_seconds": float(np.mean([t["train_seconds"] for t in times])),
                                 "steps": int(max(t.get("steps", 0) for t in times)),
                                 "peak_rss_mib": float(max(t.get("peak_rss_mib", math.nan) for t in times))}
                           } if times else {}
                (rec,) = summarise({row: self.rows[row]}, pooled, trained)
                means = [float(np.nanmean(column_values(by_seed[s][row], "dice_mean"))) * 100.0 for s in seeds]
                vals = [r["val_dice"] for r in table if r["row"] == row and r["checkpoint"] == ck
                        and r["seed"] != "all" and r.get("val_dice") is not None]
                rec["val_dice"] = float(np.mean(vals)) if vals else None
                rec["dice_mean_seed_std"] = float(np.std(means, ddof=1)) if len(means) > 1 else math.nan
                table.append({"seed": "all", "checkpoint": ck, "primary": ck == "final", "n_seeds": len(seeds),
                              **rec})
        return table

    def write(self) -> None:
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        flat = [{"seed": seed, "row": row, "checkpoint": ck, "primary": ck == "final", **r}
                for (seed, ck, row), prs in sorted(self.pairs.items(), key=lambda kv: (kv[0][0], kv[0][1]))
                for r in prs]
        for path, records in ((self.stem.with_name(self.stem.name + "_pairs.csv"), flat),
                              (self.stem.with_suffix(".csv"), self.summary())):
            tmp = path.with_suffix(".csv.tmp")
            write_csv(tmp, records)
            tmp.replace(path)


def write_seed_outputs(args, cfg, out: Path, rows, runs: Mapping[int, Mapping[str, Any]], spacing, seconds: float,
                       recorder: RunRecorder) -> None:
    """The multi-seed report: pooled tables (last checkpoint first: the primary result), the paper's orderings by
    :func:`pooled_paired_test`, a JSON of the settings and the tests, the ``table1:<preset>:seeds`` section."""
    docs = out if args.no_docs else Path(args.docs)
    stem = recorder.stem.name
    summary = recorder.summary()
    seeds = recorder.seeds()
    trained_all = {**recorder.recorded_training,
                   **{f"seed{s}/{r}": t for s in sorted(runs) for r, t in runs[s]["trained"].items()}}
    info = run_info(args, {**cfg, "seeds": seeds}, spacing, seconds, trained_all)
    size = "x".join(str(v) for v in cfg["spatial_size"])
    lines = [f"### Preset `{args.preset}`, seeds {', '.join(map(str, seeds))}: {size} voxels, {cfg['epochs']} "
             f"epochs per learned row, {cfg['num_test']} test pairs per seed", "",
             f"Generated by `python benchmarks/table1.py --preset {args.preset} --seeds "
             f"{' '.join(map(str, seeds))}{' --collect' if args.collect else ''}` on {info['date']} "
             f"({info['cpu_count']} cores of {info['device_name']}, "
             f"torch {info['torch']}, MONAI {info['monai']}). Every seed trains on the same phantom dataset "
             f"(data seed {cfg.get('data_seed', cfg['seed'])}: {cfg['num_pairs']} pairs, {cfg['num_val']} validation, "
             f"{cfg['num_test']} test); only the training seed differs. "
             "**Primary result: the last checkpoint (`models/model_final.pt`) of every run**; the best-validation "
             "checkpoint (`models/model.pt`) is secondary. Mean ± sample std over seeds x test pairs; paired tests "
             "over seeds x pairs (pairs matched by seed and file names), effect sizes: mean difference, Cohen's d_z "
             "(mean / sd of the differences) and the matched-pairs rank-biserial correlation of the Wilcoxon test. "
             f"Raw numbers: [results/{stem}.csv](results/{stem}.csv) (per seed and pooled, `seed = all`), "
             f"[results/{stem}_pairs.csv](results/{stem}_pairs.csv) (per pair).", ""]
    tests: dict[str, list[dict[str, Any]]] = {}
    for ck, title in (("final", "Primary: last checkpoint"), ("best", "Secondary: best-validation checkpoint")):
        by = {r["row"]: r for r in summary if r["seed"] == "all" and r["checkpoint"] == ck}
        if not by:
            continue
        by_seed = recorder.pairs_by_seed(ck)

        def tester(a, b, col="dice_mean", lower_is_better=False, _by_seed=by_seed):
            return pooled_paired_test(_by_seed, a, b, col, lower_is_better)

        tests[ck] = [tester("as_atc", r) for r in by if r != "as_atc"] if "as_atc" in by else []
        lines += [f"#### {title}", "", *table_markdown(by, "mean over seeds"), "",
                  *orderings_markdown(by, None, tester=tester, over="seeds x test pairs"), ""]
    (docs / "results").mkdir(parents=True, exist_ok=True)
    (docs / "results" / f"{stem}.json").write_text(json.dumps(
        {"info": info, "training": trained_all, "paired_vs_as_atc": tests}, indent=2, default=str))
    path = docs / "results.md"
    replace_section(path, f"table1:{args.preset}:seeds", "\n".join(lines))
    print(f"[table1] wrote {docs / 'results' / stem}.csv, {path}", flush=True)


def all_rows(grid: Sequence[float]) -> dict[str, dict[str, Any]]:
    """Row id -> ``{"label", "kind", "overrides" | "target"}`` in table order."""
    rows: dict[str, dict[str, Any]] = {}
    for row, (label, target) in CLASSICAL_ROWS.items():
        rows[row] = {"label": label, "kind": "classical", "target": target}
    for lam in grid:
        rows[grid_row(lam)] = {"label": f"VM (lambda={lam:g})", "kind": "learned",
                               "overrides": {"method": "vm", "lambda_phi": float(lam)}, "grid": True}
    for row, (label, ov) in LEARNED_ROWS.items():
        rows[row] = {"label": label, "kind": "learned", "overrides": dict(ov)}
    return rows


def common_overrides(cfg: Mapping[str, Any], out: Path, *, per_seed: bool = False) -> dict[str, Any]:
    """The bundle overrides every row shares: dataset, split, size, length, seed. The dataset is drawn with
    ``cfg["data_seed"]`` (default: the training seed), the same for every training seed, so ``per_seed`` runs share
    ``phantom/`` (``per_seed`` is kept for the callers' signature). With ``cfg["best_from_second_half"]`` the
    best-validation checkpoint only considers epochs after the first half (``best_checkpoint_from_epoch``)."""
    second_half = {"best_checkpoint_from_epoch": cfg["epochs"] // 2 + 1} if cfg.get("best_from_second_half") else {}
    return {
        "phantom_dir": str(out / "phantom"),
        "phantom#seed": cfg.get("data_seed", cfg["seed"]),
        "phantom#num_pairs": cfg["num_pairs"],
        "phantom#num_val": cfg["num_val"],
        "phantom#num_test": cfg["num_test"],
        "phantom#field_of_view": [176.0, 176.0, 128.0],
        "spatial_size": list(cfg["spatial_size"]),
        "epochs": cfg["epochs"],
        "seed": cfg["seed"],
        **second_half,
    }


def bundle_parser(config_files: Sequence[str], overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(ROOT / "bundle" / "configs" / f) for f in config_files])
    for k, v in overrides.items():
        parser[k] = v
    parser.parse()
    return parser


def make_dataset(overrides: Mapping[str, Any]) -> str:
    """Generate the phantom dataset once (the training children then reuse it)."""
    parser = bundle_parser(["train.json"], {**overrides, "bundle_root": overrides["phantom_dir"]})
    return str(parser.get_parsed_content("datalist_file"))


def run_dir(out: Path, row: str, seed: int | None = None) -> Path:
    """A row's bundle root: ``runs/<row>`` (one seed, ``--seed``) or ``runs/seed<k>/<row>`` (``--seeds``)."""
    return out / "runs" / row if seed is None else out / "runs" / f"seed{seed}" / row


def training_command(root: Path, spec: Mapping[str, Any], overrides: Mapping[str, Any], resume: bool = False
                     ) -> list[str]:
    """The bundle command of one learned row; ``resume=False`` is its canonical form (the one recorded)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--meta_file", str(ROOT / "bundle/configs/metadata.json"),
           "--config_file", str(ROOT / "bundle/configs/train.json"),
           "--logging_file", str(ROOT / "bundle/configs/logging.conf"),
           "--bundle_root", str(root), "--resume", str(bool(resume))]
    for k, v in {**overrides, **spec["overrides"]}.items():
        cmd += [f"--{k}", json.dumps(v) if isinstance(v, (list, dict)) else str(v)]
    return cmd + FLOAT32


# Every benchmark training runs in float32, whatever the machine: the bundle's ``amp`` default depends on the
# hardware (mtreg_monai.utils.fast_mixed_precision), and the rows of one table must be computed alike.
FLOAT32 = ["--amp", "False"]


def same_command(recorded: Any, command: Sequence[str]) -> bool:
    """
    Whether a recorded command (``train_started.json``/``train_done.json``) is ``command``. A command recorded
    before the bundle had an ``amp`` option has no ``--amp``; it ran in float32, which is ``--amp False``.
    """
    command = list(command)
    return recorded == command or (command[-2:] == FLOAT32 and recorded == command[:-2])


def resume_checkpoints(root: Path) -> list[Path]:
    """The epoch checkpoints the bundle resumes from (``train#last_checkpoint``: the newest by mtime)."""
    return sorted((root / "models").glob("*_checkpoint_epoch=*.pt"), key=lambda f: f.stat().st_mtime)


def training_action(root: Path, command: Sequence[str], retrain: bool = False) -> str:
    """
    What :func:`train_row` does with a row's folder, given the canonical command (``command[1:]`` is recorded):

    - ``"reuse"``: ``train_done.json`` records this command (a finished training is never redone);
    - ``"resume"``: no finished record, but ``train_started.json`` records this command and an epoch checkpoint
      exists: relaunch with ``--resume True`` (the bundle's ``run_identity.check_resume`` refuses a checkpoint of
      another configuration anyway);
    - ``"clean"``: anything else (``--retrain``, other settings, nothing to resume from): start over.
    """
    if retrain:
        return "clean"
    recorded = command[1:]
    done = root / "train_done.json"
    if done.is_file() and same_command(_read_json(done).get("command"), recorded):
        return "reuse"
    started = root / "train_started.json"
    if started.is_file() and same_command(_read_json(started).get("command"), recorded) and resume_checkpoints(root):
        return "resume"
    return "clean"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def train_row(row: str, spec: Mapping[str, Any], overrides: Mapping[str, Any], out: Path, retrain: bool,
              threads: int, *, seed: int | None = None) -> dict[str, Any]:
    """
    Train one learned row with the bundle command in a child process; its wall time and peak RSS.

    A finished training with the same command is reused; an interrupted one (``train_started.json`` with the same
    command, an epoch checkpoint in ``models/``) is resumed with ``--resume True`` and its log appended to; anything
    else starts clean. ``train_seconds`` of a resumed training adds, for each earlier launch, the time from its
    start to its newest epoch checkpoint (the work kept); ``launches`` counts the launches.
    """
    root = run_dir(out, row, seed)
    done, started = root / "train_done.json", root / "train_started.json"
    cmd = training_command(root, spec, overrides)
    action = training_action(root, cmd, retrain)
    if action == "reuse":
        print(f"[table1] {row}: training reused ({done})", flush=True)
        return _read_json(done)
    done.unlink(missing_ok=True)  # a failed training must not leave an old record next to new checkpoints
    root.mkdir(parents=True, exist_ok=True)
    if action == "resume":
        marker = _read_json(started)
        last = resume_checkpoints(root)[-1]
        kept = last.stat().st_mtime - float(marker.get("launched_at", last.stat().st_mtime))
        marker = {**marker, "credited_seconds": float(marker.get("credited_seconds", 0.0)) + max(kept, 0.0),
                  "launches": int(marker.get("launches", 1)) + 1}
        print(f"[table1] {row}: resuming an interrupted training from {last.name}", flush=True)
    else:
        if done.parent.is_dir() and started.is_file():
            print(f"[table1] {row}: settings changed or nothing to resume from: training from scratch", flush=True)
        for old in (root / "models").glob("*.pt"):
            old.unlink()
        marker = {"command": cmd[1:], "credited_seconds": 0.0, "launches": 1}
    marker["launched_at"] = time.time()
    started.write_text(json.dumps(marker, indent=2))
    launch = training_command(root, spec, overrides, resume=action == "resume")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    print(f"[table1] {row}: training ({' '.join(launch[1:])})", flush=True)
    start = time.perf_counter()
    with open(root / "train.log", "a" if action == "resume" else "w") as log:
        if action == "resume":
            log.write(f"\n[table1] ---- resumed {time.strftime('%Y-%m-%d %H:%M:%S')} (launch {marker['launches']}) "
                      "----\n")
            log.flush()
        returncode, peak_mib, _ = run_measured(launch, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                               env=env)
    seconds = time.perf_counter() - start
    if returncode != 0:
        tail = (root / "train.log").read_text()[-3000:]
        raise RuntimeError(f"training of row {row!r} failed (exit {returncode}):\n{tail}")
    result = {"row": row, "train_seconds": seconds + marker["credited_seconds"], "peak_rss_mib": peak_mib,
              "steps": steps_from_log(root / "outputs" / "weights.csv"), "command": cmd[1:],
              "launches": marker["launches"], "seed": overrides.get("seed")}
    done.write_text(json.dumps(result, indent=2))
    print(f"[table1] {row}: trained in {seconds:.0f} s, peak RSS {result['peak_rss_mib']:.0f} MiB", flush=True)
    return result


def steps_from_log(weights_csv: Path) -> int:
    """Training iterations, from the weight curves the bundle writes (one line per iteration)."""
    with open(weights_csv) as f:
        return sum(1 for _ in f) - 1


def evaluate_row(row: str, spec: Mapping[str, Any], overrides: Mapping[str, Any], out: Path,
                 spacing: Sequence[float], threads: int, figure_pair: int, *, seed: int | None = None):
    """Score one row on the test pairs with the bundle's evaluator; per-pair rows and the figure pair's slices."""
    from ignite.engine import Events

    from mtreg_monai.engines import RegistrationKeys as K

    root = run_dir(out, row, seed)
    ov = {"bundle_root": str(root), **overrides, **spec.get("overrides", {})}
    parser = bundle_parser(["train.json", "evaluate.json"], ov)
    if spec["kind"] == "classical":
        import importlib

        module, name = spec["target"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        kwargs = {} if row == "initial" else {"spacing": list(spacing), "num_threads": threads}
        parser["network"] = cls(**kwargs)
        parser["validate#handlers"] = [  # no checkpoint to load (MONAI stores "#" as "::")
            h for h in parser["validate#handlers"] if not (isinstance(h, str) and h.endswith("checkpoint_loader"))]
        parser["validate#report#info#checkpoint"] = spec["target"]
    evaluator = parser.get_parsed_content("validate#evaluator")
    captured: dict[str, np.ndarray] = {}

    def capture(engine) -> None:
        if engine.state.iteration - 1 != figure_pair:
            return
        o = engine.state.output
        for key, name in ((K.FIXED_IMAGE, "fixed"), (K.MOVING_IMAGE, "moving"), (K.WARPED_IMAGE, "warped"),
                          (K.FIXED_LABEL, "fixed_label"), (K.MOVING_LABEL, "moving_label"),
                          (K.WARPED_LABEL, "warped_label"), (K.DDF, "ddf")):
            captured[name] = torch.as_tensor(o[key])[0].detach().float().cpu().numpy()

    evaluator.add_event_handler(Events.ITERATION_COMPLETED, capture)
    evaluator.run()
    eval_dir = Path(parser.get_parsed_content("eval_dir"))
    with open(eval_dir / "metrics.csv") as f:
        pair_rows = [dict(r) for r in csv.DictReader(f)]
    return pair_rows, captured


METRIC_COLUMNS = ["dice_liver", "dice_spleen", "dice_right_kidney", "dice_left_kidney", "dice_mean", "asd_liver",
                  "asd_spleen", "asd_right_kidney", "asd_left_kidney", "asd_mean", "folding_percent",
                  "jacobian_std", "seconds"]


def _csv_value(text: str) -> Any:
    """A value read back from :func:`write_csv`: ``""`` -> None, an integer or float literal -> int or float (so
    ``"nan"`` -> nan), anything else the string."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def column_values(pair_rows: Sequence[Mapping[str, Any]], col: str) -> np.ndarray:
    return np.asarray([float(r[col]) for r in pair_rows if col in r and r[col] not in ("", None)], dtype=np.float64)


def validation_record(train_log: Path, checkpoint: str = "best", epoch: int | None = None
                      ) -> tuple[int | None, float | None]:
    """
    ``(epoch, validation mean Dice)`` of a checkpoint, from the bundle's training log. With ``epoch`` (the epoch of
    the checkpoint scored, which the evaluation records), the validation at that epoch. Without it, ``"final"`` is
    the last validation (``model_final.pt``); ``"best"`` is unknown, ``(None, None)``: the best validation Ignite
    logs is over all epochs, so it is not the saver's pick when ``best_checkpoint_from_epoch`` skips the first ones.
    """
    if epoch is not None:
        found = dict(validation_curve(train_log))
        return epoch, found.get(epoch)
    if checkpoint == "best":
        return None, None
    curve = validation_curve(train_log)
    return curve[-1] if curve else (None, None)


def scored_epoch(pair_rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The training epoch of the checkpoint that scored ``pair_rows`` (their ``checkpoint_epoch``), if one."""
    epochs = {str(r.get("checkpoint_epoch", "")) for r in pair_rows} - {"", "None"}
    if len(epochs) > 1:
        raise ValueError(f"pair_rows were scored by checkpoints of several epochs {sorted(epochs)}, expected one.")
    return int(float(epochs.pop())) if epochs else None


def validation_curve(train_log: Path) -> list[tuple[int, float]]:
    """Every validation of a training, ``[(epoch, validation mean Dice in [0, 1]), ...]``, from the bundle's log."""
    import re

    if not train_log.is_file():
        return []
    text = train_log.read_text(errors="replace")
    found = re.findall(r"Epoch\[(\d+)\] Metrics --.*?val_mean_dice: ([0-9.eE+-]+)", text)
    return [(int(e), float(v)) for e, v in found]


def summarise(rows, pairs, trained, out: Path | None = None, checkpoint: str = "best", *, seed: int | None = None
              ) -> list[dict[str, Any]]:
    """Per row: mean and sample std of every column (Dice in %), the training figures and, for learned rows, the
    epoch and validation Dice of the checkpoint scored (``checkpoint``: "best" or "final")."""
    table = []
    for row, spec in rows.items():
        rec: dict[str, Any] = {"row": row, "label": spec["label"], "n_pairs": len(pairs[row])}
        rec["n_finite_dice"] = int(np.isfinite(column_values(pairs[row], "dice_mean")).sum())
        for col in METRIC_COLUMNS:
            s = finite_summary(column_values(pairs[row], col) * (100.0 if col.startswith("dice_") else 1.0))
            rec[f"{col}_mean"], rec[f"{col}_std"] = s.mean, s.std
        tr = trained.get(row, {})
        rec["train_seconds"] = tr.get("train_seconds", math.nan)
        rec["train_steps"] = tr.get("steps", 0)
        rec["train_peak_rss_mib"] = tr.get("peak_rss_mib", math.nan)
        epoch, val = validation_record(run_dir(out, row, seed) / "train.log", checkpoint, scored_epoch(pairs[row])) \
            if out is not None and tr \
            else (None, None)
        rec["checkpoint_epoch"], rec["val_dice"] = epoch, (val * 100.0 if val is not None else None)
        table.append(rec)
    return table


def paired_test(pairs: Mapping[str, Sequence[Mapping[str, Any]]], a: str, b: str, col: str = "dice_mean",
                lower_is_better: bool = False) -> dict[str, Any]:
    """
    Row ``a`` against row ``b``, pair by pair (pairs matched by their fixed and moving file names, non-finite
    values left out): mean and sample std of ``a - b`` (Dice in points), the number of pairs where ``a`` is better,
    and the two-sided Wilcoxon signed-rank p (NaN with fewer than 2 pairs or no difference).
    """
    from scipy.stats import wilcoxon

    d, _ = matched_differences({0: pairs}, a, b, col)
    p = float(wilcoxon(d).pvalue) if d.size > 1 and np.any(d != 0) else math.nan
    better = (d < 0) if lower_is_better else (d > 0)
    return {"row": b, "against": a, "column": col, "lower_is_better": lower_is_better, "n": int(d.size),
            "mean_diff": float(d.mean()) if d.size else math.nan,
            "std_diff": float(d.std(ddof=1)) if d.size > 1 else math.nan,
            "better_pairs": int(better.sum()), "wilcoxon_p": p}


def paired_comparisons(pairs: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """AS+ATC against every other row in mean Dice (:func:`paired_test`)."""
    if "as_atc" not in pairs:
        return []
    return [paired_test(pairs, "as_atc", row) for row in pairs if row != "as_atc"]


def matched_differences(pairs_by_seed: Mapping[Any, Mapping[str, Sequence[Mapping[str, Any]]]], a: str, b: str,
                        col: str = "dice_mean") -> tuple[np.ndarray, dict[str, float]]:
    """
    ``a - b`` per unit (seed, test pair), the pairs of a seed matched by ``(fixed, moving)``, non-finite values left
    out, Dice columns in points; and the mean difference per seed (``{str(seed): mean}``, seeds with both rows).
    """
    scale = 100.0 if col.startswith("dice_") else 1.0
    diffs: list[float] = []
    per_seed: dict[str, float] = {}
    for seed, pairs in pairs_by_seed.items():
        if a not in pairs or b not in pairs:
            continue

        def by_pair(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str], float]:
            return {(str(r.get("fixed")), str(r.get("moving"))): float(r[col]) for r in rows
                    if r.get(col) not in (None, "")}

        va, vb = by_pair(pairs[a]), by_pair(pairs[b])
        common = sorted(k for k in set(va) & set(vb) if math.isfinite(va[k]) and math.isfinite(vb[k]))
        d = [(va[k] - vb[k]) * scale for k in common]
        if d:
            per_seed[str(seed)] = float(np.mean(d))
        diffs += d
    return np.asarray(diffs, dtype=np.float64), per_seed


def pooled_paired_test(pairs_by_seed: Mapping[Any, Mapping[str, Sequence[Mapping[str, Any]]]], a: str, b: str,
                       col: str = "dice_mean", lower_is_better: bool = False) -> dict[str, Any]:
    """
    :func:`paired_test` over seeds x test pairs: ``pairs_by_seed[seed][row]`` are one seed's per-pair rows; pairs are
    matched by ``(seed, fixed, moving)`` (each seed is its own training, so the same file name
    in two seeds is two pairs), non-finite values left out. Besides the keys of :func:`paired_test` (mean and sample
    std of ``a - b``, Dice in points; pairs where ``a`` is better; two-sided Wilcoxon signed-rank p over all pooled
    differences), the effect sizes: ``cohen_dz`` = mean / sample std of the differences (Cohen's d_z, paired) and
    ``rank_biserial`` = (W+ - W-) / (W+ + W-), the matched-pairs rank-biserial correlation of the Wilcoxon test
    (zero differences dropped, average ranks for ties), positive when ``a - b`` tends to be positive. Per seed:
    ``seed_mean_diffs`` and ``better_seeds`` (seeds whose mean difference favours ``a``); pooling treats the pairs as
    independent, the seed counts show whether the direction holds seed by seed.
    """
    from scipy.stats import rankdata, wilcoxon

    d, per_seed = matched_differences(pairs_by_seed, a, b, col)
    p = float(wilcoxon(d).pvalue) if d.size > 1 and np.any(d != 0) else math.nan
    better = (d < 0) if lower_is_better else (d > 0)
    std = float(d.std(ddof=1)) if d.size > 1 else math.nan
    nz = d[d != 0]
    ranks = rankdata(np.abs(nz))
    rb = float((ranks[nz > 0].sum() - ranks[nz < 0].sum()) / ranks.sum()) if nz.size else math.nan
    seed_better = [v < 0 if lower_is_better else v > 0 for v in per_seed.values()]
    return {"row": b, "against": a, "column": col, "lower_is_better": lower_is_better, "n": int(d.size),
            "mean_diff": float(d.mean()) if d.size else math.nan, "std_diff": std,
            "better_pairs": int(better.sum()), "wilcoxon_p": p,
            "cohen_dz": float(d.mean() / std) if d.size > 1 and std > 0 else math.nan, "rank_biserial": rb,
            "n_seeds": len(per_seed), "better_seeds": int(sum(seed_better)), "seed_mean_diffs": per_seed}


def effect_text(t: Mapping[str, Any]) -> str:
    """The effect sizes of a :func:`pooled_paired_test`, for the tables."""
    return (f"diff {t['mean_diff']:+.3g} (d_z {t['cohen_dz']:+.2f}, rank-biserial {t['rank_biserial']:+.2f}), "
            f"{t['better_pairs']}/{t['n']} pairs, {t['better_seeds']}/{t['n_seeds']} seeds")


def run_info(args, cfg, spacing, seconds, trained) -> dict[str, Any]:
    train_min = sum(t["train_seconds"] for t in trained.values()) / 60.0
    return {"preset": args.preset, "settings": cfg, "grid": args.grid, "spacing_mm": spacing, "threads": args.threads,
            "total_minutes": seconds / 60.0, "training_minutes": train_min, "date": time.strftime("%Y-%m-%d %H:%M"),
            **environment_info("cuda" if torch.cuda.is_available() else "cpu")}


# ---------------------------------------------------------------------------------------------------- outputs
def write_outputs(args, cfg, out, rows, pairs, summary, comparisons, info, slices, overrides, trained,
                  final=None) -> None:
    docs = Path(args.docs) if not args.no_docs else out
    res_dir, fig_dir = docs / "results", docs / "figures"
    res_dir.mkdir(parents=True, exist_ok=True)
    fig_dir.mkdir(parents=True, exist_ok=True)
    stem = f"table1_{args.preset}"
    write_csv(res_dir / f"{stem}.csv", summary)
    flat = [{"row": row, **r} for row, rs in pairs.items() for r in rs]
    write_csv(res_dir / f"{stem}_pairs.csv", flat)
    if final:
        write_csv(res_dir / f"{stem}_final.csv", final["summary"])
        write_csv(res_dir / f"{stem}_final_pairs.csv", [{"row": row, **r} for row, rs in final["pairs"].items()
                                                       for r in rs])
    (res_dir / f"{stem}.json").write_text(json.dumps(
        {"info": info, "paired_vs_as_atc": comparisons, "training": trained,
         "paired_vs_as_atc_final": final["comparisons"] if final else None}, indent=2, default=str))
    for row in rows:
        curves = out / "runs" / row / "outputs" / "weights.csv"
        if curves.is_file() and row in ("as", "s_tc", "as_tc", "as_atc"):
            (res_dir / f"{stem}_weights_{row}.csv").write_text(curves.read_text())
    figures = {}
    if "as_atc" in rows or "as" in rows:
        figures["weights"] = plot_weight_curves(out, rows, fig_dir / f"{stem}_weights.png")
    if "as_atc" in rows and "initial" in slices and slices["initial"]:
        figures["uncertainty"] = plot_uncertainty(
            out, overrides, slices["initial"], fig_dir / f"{stem}_uncertainty.png"
        )
    if slices:
        figures["slices"] = plot_slices(rows, slices, fig_dir / f"{stem}_slices.png")
    md = results_markdown(args, cfg, rows, summary, comparisons, info, figures, docs, final, pairs)
    path = (docs / "results.md") if not args.no_docs else out / "results.md"
    replace_section(path, f"table1:{args.preset}", md)
    print(f"[table1] wrote {res_dir / stem}.csv, {path}", flush=True)


def write_csv(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)


def replace_section(path: Path, name: str, text: str) -> None:
    """Write ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` of ``path``, keeping the rest."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.is_file() else ""
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) + 1:]
    else:
        new = (old.rstrip() + "\n\n" if old else "# Results\n\n") + block
    path.write_text(new)


def _pm(rec: Mapping[str, Any], col: str, dec: int) -> str:
    m, s = rec.get(f"{col}_mean", math.nan), rec.get(f"{col}_std", math.nan)
    if m is None or (isinstance(m, float) and math.isnan(m)):
        return "n/a"
    return f"{m:.{dec}f} ± {s:.{dec}f}" if not math.isnan(s) else f"{m:.{dec}f}"


def _fmt_time(s: float) -> str:
    return "–" if s is None or math.isnan(s) else f"{s / 60:.1f} min"


def _order(by: Mapping[str, Any]) -> list[str]:
    return [r for r in TABLE_ORDER if r in by] + [r for r in by if r not in TABLE_ORDER]


def table_markdown(by: Mapping[str, Mapping[str, Any]], epoch_label: str = "best epoch") -> list[str]:
    """The Table-1 columns, one line per row; the training column names the epoch of the checkpoint scored."""
    lines = ["| Method | Dice liver | Dice spleen | Dice R kidney | Dice L kidney | Dice mean | ASD mean (mm) "
             f"| % \\|J\\|<=0 | std \\|J\\| | training ({epoch_label}) | s / pair |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in _order(by):
        r = by[row]
        epoch = r.get("checkpoint_epoch")
        train = _fmt_time(r["train_seconds"]) + (f" ({epoch})" if epoch is not None else "")
        lines.append(
            f"| {r['label']} | {_pm(r, 'dice_liver', 1)} | {_pm(r, 'dice_spleen', 1)} "
            f"| {_pm(r, 'dice_right_kidney', 1)} "
            f"| {_pm(r, 'dice_left_kidney', 1)} | **{_pm(r, 'dice_mean', 2)}** | {_pm(r, 'asd_mean', 2)} "
            f"| {_pm(r, 'folding_percent', 3)} | {_pm(r, 'jacobian_std', 3)} | {train} | {r['seconds_mean']:.3f} |"
        )
    return lines


def comparisons_markdown(by: Mapping[str, Mapping[str, Any]], comparisons) -> list[str]:
    if not comparisons:
        return []
    lines = ["AS+ATC against each row, pair by pair (mean Dice difference in points, AS+ATC minus the row; "
             "pairs where AS+ATC is better; two-sided Wilcoxon signed-rank p):", "",
             "| Row | mean diff ± std | AS+ATC better | p |", "|---|---|---|---|"]
    for c in sorted(comparisons, key=lambda c: _order(by).index(c["row"])):
        lines.append(f"| {by[c['row']]['label']} | {c['mean_diff']:+.2f} ± {c['std_diff']:.2f} "
                     f"| {c['better_pairs']}/{c['n']} | {c['wilcoxon_p']:.3g} |")
    return lines


def results_markdown(args, cfg, rows, summary, comparisons, info, figures, docs, final=None, pairs=None) -> str:
    by = {r["row"]: r for r in summary}
    size = "x".join(str(s) for s in cfg["spatial_size"])
    steps = max((r["train_steps"] for r in summary), default=0)
    n_test = max((r["n_pairs"] for r in summary), default=0)
    lines = [
        f"### Preset `{args.preset}`: {size} voxels, {steps} training steps per learned row, {n_test} test pairs",
        "",
        f"Generated by `python benchmarks/table1.py --preset {args.preset}` on {info['date']} "
        f"({info['cpu_count']} cores of {info['device_name']}, {args.threads} threads, torch {info['torch']}, "
        f"MONAI {info['monai']}, ANTsPy {info['antspyx']}, itk-elastix {info['itk-elastix']}). "
        f"The trainings took {info['training_minutes']:.1f} min in all (each timed when it ran); this invocation, "
        f"which scored every row, took {info['total_minutes']:.1f} min. "
        f"Seed {cfg['seed']}; phantom dataset of {cfg['num_pairs']} CT-MR pairs, {cfg['num_val']} validation and "
        f"{cfg['num_test']} test pairs, the rest for training; every learned row trained for {cfg['epochs']} epochs "
        "and scored with its best-validation checkpoint (`models/model.pt`; its epoch in brackets). "
        "Mean ± sample std over the test pairs. "
        f"Raw numbers: [results/table1_{args.preset}.csv](results/table1_{args.preset}.csv) (per row) and "
        f"[results/table1_{args.preset}_pairs.csv](results/table1_{args.preset}_pairs.csv) (per pair).",
        "",
        *table_markdown(by),
        "", "Per-organ ASD (mm):", "",
        "| Method | liver | spleen | R kidney | L kidney |", "|---|---|---|---|---|",
    ]
    for row in _order(by):
        r = by[row]
        lines.append(f"| {r['label']} | {_pm(r, 'asd_liver', 2)} | {_pm(r, 'asd_spleen', 2)} "
                     f"| {_pm(r, 'asd_right_kidney', 2)} | {_pm(r, 'asd_left_kidney', 2)} |")
    lines += ["", *orderings_markdown(by, pairs), "", *comparisons_markdown(by, comparisons)]
    if final:
        fby = {r["row"]: r for r in final["summary"]}
        lines += ["", f"#### The same learned rows scored with their last checkpoint (`models/model_final.pt`, "
                      f"epoch {cfg['epochs']})", "",
                  f"Raw numbers: [results/table1_{args.preset}_final.csv](results/table1_{args.preset}_final.csv), "
                  f"[results/table1_{args.preset}_final_pairs.csv](results/table1_{args.preset}_final_pairs.csv). "
                  "Classical rows repeated from above.", "",
                  *table_markdown(fby, "last epoch"), "", *orderings_markdown(fby, final["pairs"]), "",
                  *comparisons_markdown(fby, final["comparisons"])]
    figure_titles = (
        ("weights", "lambda_phi and lambda_c over the training steps (paper Fig. 3 b/d)"),
        ("uncertainty", "Uncertainty of the AS+ATC teacher at the end of training on a test pair (paper Fig. 3 a/c)"),
        ("slices", "One axial slice per method, fixed-image organ contours over the warped moving image "
                   "(paper Fig. 2)"),
    )
    for key, title in figure_titles:
        if figures.get(key):
            lines += ["", f"{title}:", "", f"![{key}]({os.path.relpath(figures[key], docs)})"]
    return "\n".join(lines)


def verdict(test: Mapping[str, Any], alpha: float = 0.05) -> str:
    """"reproduced" only when the paired test says the expected side is better (p < alpha)."""
    p = test["wilcoxon_p"]
    if not p < alpha:
        return f"**not distinguishable** (p = {p:.2g})"
    mean_better = test["mean_diff"] < 0 if test["lower_is_better"] else test["mean_diff"] > 0
    if mean_better and test["better_pairs"] * 2 > test["n"]:
        return f"reproduced (p = {p:.2g})"
    return f"**not reproduced: reversed** (p = {p:.2g})"


def orderings_markdown(by: Mapping[str, Mapping[str, Any]], pairs: Mapping[str, Sequence[Mapping[str, Any]]] | None,
                       tester=None, over: str = "the test pairs") -> list[str]:
    """The paper's claims as orderings, each decided by a paired test over the test pairs (:func:`verdict`);
    ``tester(a, b, col="dice_mean", lower_is_better=False)`` replaces :func:`paired_test` on ``pairs`` (e.g.
    :func:`pooled_paired_test` over seeds x pairs, whose effect sizes are then shown too)."""
    last: list[dict[str, Any]] = []  # the test just run, for the effect sizes in the figures column

    def test(a: str, b: str, col: str = "dice_mean", lower_is_better: bool = False) -> dict[str, Any]:
        if tester is None:
            return paired_test(pairs, a, b, col, lower_is_better=lower_is_better)
        last[:] = [tester(a, b, col, lower_is_better)]
        return last[0]

    def dice(r: str) -> float:
        return by[r]["dice_mean_mean"]

    def fig(a: str, b: str, col: str = "dice_mean", dec: int = 2) -> str:
        text = f"{by[a][col + '_mean']:.{dec}f} vs {by[b][col + '_mean']:.{dec}f}"
        if last:
            text += "; " + effect_text(last.pop())
        return text

    checks: list[tuple[str, str, str]] = []
    grid = [r for r in by if r.startswith("vm_l")]
    if "as_atc" in by and grid:
        have_val = all(by[r].get("val_dice") is not None for r in grid)
        best = max(grid, key=lambda r: by[r]["val_dice"] if have_val else dice(r))
        how = "chosen by validation Dice, as a grid search would" if have_val else "chosen by test Dice"
        checks.append((f"AS+ATC has a higher mean Dice than the grid's best VM ({by[best]['label']}, {how})",
                       verdict(test("as_atc", best)), fig("as_atc", best)))
        checks.append(("AS+ATC is smoother than that VM (lower std \\|J\\|)",
                       verdict(test("as_atc", best, "jacobian_std", lower_is_better=True)),
                       fig("as_atc", best, "jacobian_std", 3)))
        t_grid = sum(by[r]["train_seconds"] for r in grid)
        t_as = by["as_atc"]["train_seconds"]
        if not math.isnan(t_grid) and not math.isnan(t_as) and len(grid) == 5:
            checks.append(("One AS+ATC training costs less than the five-run grid (paper: about 4.2x less)",
                           ("reproduced (measured once)" if tester is None else "reproduced (mean over seeds)")
                           if t_as < t_grid else "**not reproduced**",
                           f"grid {t_grid / 60:.1f} min / AS+ATC {t_as / 60:.1f} min = {t_grid / t_as:.2f}x"))
    for a, b in (("as_atc", "as_tc"), ("as_tc", "as"), ("as_atc", "s_tc"), ("as_tc", "s_tc"), ("as_atc", "as")):
        if a in by and b in by:
            checks.append((f"{by[a]['label']} > {by[b]['label']} in mean Dice (ablation)",
                           verdict(test(a, b)), fig(a, b)))
    for b in ("dif_vm", "cir_dm", "syn", "elastix"):
        if "as_atc" in by and b in by:
            checks.append((f"AS+ATC > {by[b]['label']} in mean Dice", verdict(test("as_atc", b)),
                           fig("as_atc", b)))
    if "initial" in by:
        for r in by:
            if r != "initial":
                v = verdict(test(r, "initial"))
                if not v.startswith("reproduced"):
                    checks.append((f"{by[r]['label']} improves on Initial", v, fig(r, "initial")))
    if not checks:
        return []
    lines = [f"The paper's orderings, each decided by a two-sided Wilcoxon signed-rank test over {over} "
             "(p < 0.05, not corrected for the number of tests):", "",
             "| Claim | Here | Figures |", "|---|---|---|"]
    lines += [f"| {claim} | {v} | {figs} |" for claim, v, figs in checks]
    return lines


def _axial_index(label: np.ndarray) -> int:
    """Axial slice (last axis, RAS) with the most organ voxels in the fixed label."""
    return int(np.argmax((label[0] > 0).sum(axis=(0, 1))))


def _view(a: np.ndarray) -> np.ndarray:
    """An axial RAS slice (x, y) as seen in radiology: anterior up, the patient's right on the screen's left."""
    return np.fliplr(np.rot90(a))


def _show(ax, img: np.ndarray, title: str, cmap: str = "gray", **kw) -> Any:
    h = ax.imshow(_view(img), cmap=cmap, **kw)
    ax.set_title(title, fontsize=8)
    ax.axis("off")
    return h


def _contours(ax, label: np.ndarray) -> None:
    colours = ["#e41a1c", "#4daf4a", "#377eb8", "#ff7f00", "#984ea3", "#ffff33"]
    for i, v in enumerate(v for v in np.unique(label) if v > 0):
        ax.contour(_view((label == v).astype(float)), levels=[0.5], colors=colours[i % len(colours)],
                   linewidths=0.8)


def plot_slices(rows, slices, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = next(s for s in slices.values() if s)
    k = _axial_index(ref["fixed_label"])
    panels = [("Fixed (MR), its organs", ref["fixed"][0][:, :, k], ref["fixed_label"][0][:, :, k]),
              ("Moving (CT), fixed organs", ref["moving"][0][:, :, k], ref["fixed_label"][0][:, :, k])]
    order = [r for r in TABLE_ORDER if r in slices and slices[r]] + [r for r in slices if r not in TABLE_ORDER
                                                                      and slices[r]]
    for row in order:
        if row == "initial":
            continue
        s = slices[row]
        panels.append((rows[row]["label"], s["warped"][0][:, :, k], ref["fixed_label"][0][:, :, k]))
    cols = 5
    nrow = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(2.6 * cols, 2.6 * nrow), squeeze=False)
    for ax, (title, img, lab) in zip(axes.flat, panels):
        _show(ax, img, title)
        _contours(ax, lab)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"test pair, axial slice {k}: warped moving image, fixed-image organ contours", fontsize=9)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def plot_weight_curves(out: Path, rows, path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for row in ("as", "as_tc", "as_atc", "s_tc"):
        f = out / "runs" / row / "outputs" / "weights.csv"
        if row not in rows or not f.is_file():
            continue
        data = np.genfromtxt(f, delimiter=",", names=True)
        for ax, key in zip(axes, ("lambda_phi", "lambda_c")):
            if key in data.dtype.names:
                steps, values = _smooth(data["iteration"], data[key])
                ax.plot(steps, values, lw=0.9, label=rows[row]["label"])
    for ax, key in zip(axes, ("lambda_phi", "lambda_c")):
        ax.set_xlabel("training step")
        ax.set_ylabel(f"{key} (moving average of 10 steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


def _smooth(steps: np.ndarray, v: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Moving average over ``n`` steps, only where the window is full (no edge artefacts)."""
    steps, v = np.asarray(steps, dtype=float), np.asarray(v, dtype=float)
    if v.size < n:
        return steps, v
    return steps[n - 1:], np.convolve(v, np.ones(n) / n, mode="valid")


def plot_uncertainty(out: Path, overrides: Mapping[str, Any], pair: Mapping[str, np.ndarray], path: Path) -> str:
    """U_phi and U_I of the AS+ATC teacher at the end of training (``model_final.pt``; N MC samples, the
    training settings) on the figure pair; the fractions above tau are those of Eq. 5 (all voxels and axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from monai.networks.blocks import Warp

    from mtreg_monai.handlers import MeanTeacherHandler, load_checkpoint
    from mtreg_monai.handlers.uncertainty import coefficient_of_variation, mc_predictions
    from mtreg_monai.handlers.weighting import uncertain_fraction

    root = out / "runs" / "as_atc"
    parser = bundle_parser(["train.json"], {**overrides, "bundle_root": str(root), "method": "as_atc",
                                            "device": torch.device("cpu")})
    net = parser.get_parsed_content("network_def")
    ckpt = load_checkpoint(root / "models" / "model_final.pt", map_location="cpu")
    net.load_state_dict(MeanTeacherHandler.teacher_weights(ckpt["teacher"]))
    n = int(parser.get_parsed_content("num_mc_samples"))
    moving = torch.as_tensor(pair["moving"])[None]
    fixed = torch.as_tensor(pair["fixed"])[None]
    torch.manual_seed(0)
    ddfs, warped = mc_predictions(net, moving, fixed, n, Warp())
    u_phi3 = coefficient_of_variation(ddfs, parser.get_parsed_content("ddf_floor"))[1][0].numpy()
    u_img = coefficient_of_variation(warped, parser.get_parsed_content("image_floor"))[1][0, 0].numpy()
    u_phi = u_phi3.mean(axis=0)
    k = _axial_index(pair["fixed_label"])
    tau1, tau2 = float(parser.get_parsed_content("tau1")), float(parser.get_parsed_content("tau2"))
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    _show(axes[0], pair["fixed"][0][:, :, k], "fixed (MR)")
    _show(axes[1], pair["moving"][0][:, :, k], "moving (CT)")
    # U_phi and U_I live on the fixed grid (displacements sampled there, moving image warped onto it)
    for ax, u, u_all, title, tau in ((axes[2], u_phi, u_phi3, "U_phi (mean of the 3 axes)", tau1),
                                     (axes[3], u_img, u_img, "U_I", tau2)):
        _show(ax, pair["fixed"][0][:, :, k], "")
        h = ax.imshow(_view(u[:, :, k]), cmap="magma", alpha=0.65, vmin=0, vmax=float(np.percentile(u, 99.5)))
        frac = float(uncertain_fraction(torch.as_tensor(u_all)[None], tau)[0]) * 100
        ax.set_title(f"{title} over the fixed image\n{frac:.1f} % of the volume above tau = {tau:g} (Eq. 5)",
                     fontsize=8)
        fig.colorbar(h, ax=ax, fraction=0.046)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path)


if __name__ == "__main__":
    main()
