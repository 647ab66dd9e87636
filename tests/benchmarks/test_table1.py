"""The benchmark's own logic that needs no optional tool: the classical-row wrappers' contract, the docs section
writer and the orderings it reports (benchmarks/classical.py and benchmarks/table1.py)."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


classical = _load("classical")
table1 = _load("table1")


def test_no_registration_is_identity_and_checks_input():
    x = torch.rand(2, 2, 16, 16, 16)
    ddf = classical.NoRegistration()(x)
    assert ddf.shape == (2, 3, 16, 16, 16) and ddf.abs().max() == 0
    with pytest.raises(ValueError, match="B, 2, H, W, D"):
        classical.NoRegistration()(torch.rand(1, 1, 16, 16, 16))


class _Oracle(classical.ClassicalRegistration):
    """A fake tool that finds the integer shift between the images (FFT cross-correlation) and returns it as a
    field in mm; ``mistake`` breaks the convention the way a faulty wrapper would."""

    def __init__(self, spacing=(2.0, 3.0, 4.0), mistake=""):
        super().__init__(spacing=spacing)
        self.mistake = mistake

    def register(self, moving, fixed):
        corr = np.fft.ifftn(np.fft.fftn(fixed).conj() * np.fft.fftn(moving)).real
        idx = np.unravel_index(np.argmax(corr), corr.shape)
        shift = np.asarray([i if i <= n // 2 else i - n for i, n in zip(idx, corr.shape)], dtype=np.float32)
        mm = shift * np.asarray(self.spacing, dtype=np.float32)
        if self.mistake == "sign":
            mm = -mm
        if self.mistake == "axes":
            mm = mm[[0, 2, 1]]
        field = np.broadcast_to(mm, (*moving.shape, 3))
        if self.mistake == "unit":  # mm handed back as voxels
            return np.ascontiguousarray(np.moveaxis(field, -1, 0))
        return self._mm_to_voxels(field)


def test_base_class_converts_mm_to_voxels_and_check_catches_wrong_conventions():
    assert classical.check_displacement_convention(_Oracle(), size=(16, 16, 16)) == pytest.approx((2.0, 2.0, 2.0))
    for mistake in ("sign", "axes", "unit"):
        with pytest.raises(RuntimeError, match="axis order, sign and units"):
            classical.check_displacement_convention(_Oracle(mistake=mistake), size=(16, 16, 16))
    with pytest.raises(ValueError, match="spacing"):
        classical.ClassicalRegistration(spacing=(1.0, -1.0, 1.0))


def test_replace_section_keeps_the_hand_written_text(tmp_path):
    page = tmp_path / "results.md"
    table1.replace_section(page, "table1:quick", "first")
    assert "first" in page.read_text() and page.read_text().startswith("# Results")
    page.write_text("intro\n\n" + page.read_text().split("# Results\n\n")[1] + "\nafter\n")
    table1.replace_section(page, "table1:quick", "second")
    text = page.read_text()
    assert "second" in text and "first" not in text and text.startswith("intro") and text.rstrip().endswith("after")


def _pairs(values, col="dice_mean"):
    return [{"fixed": f"f{i}", "moving": f"m{i}", col: str(v)} for i, v in enumerate(values)]


def test_paired_test_matches_pairs_by_name_and_skips_missing_and_non_finite():
    a = _pairs([0.80, 0.70, 0.90, 0.60])
    b = list(reversed(_pairs([0.78, 0.69, 0.85, 0.50])))  # other order
    b[0] = {**b[0], "dice_mean": "nan"}  # pair 3 is not finite in b
    t = table1.paired_test({"a": a, "b": b}, "a", "b")
    assert t["n"] == 3 and t["better_pairs"] == 3
    assert t["mean_diff"] == pytest.approx((2.0 + 1.0 + 5.0) / 3)
    assert t["wilcoxon_p"] == pytest.approx(0.25)  # exact two-sided p of 3 positive ranks


def test_orderings_decided_by_paired_tests_and_the_grid_best_by_validation():
    n = 12
    rng = np.random.default_rng(0)
    base = rng.uniform(0.8, 0.9, n)
    pairs = {f"vm_l{i}": _pairs(base + 0.001 * i) for i in range(1, 6)}
    for r in pairs:  # smoothness per pair
        for p in pairs[r]:
            p["jacobian_std"] = "0.05"
    pairs["as_atc"] = _pairs(base + 0.02)  # better than every VM on every pair
    for p in pairs["as_atc"]:
        p["jacobian_std"] = "0.10"  # rougher on every pair
    rows = {r: {"label": r, "kind": "learned"} for r in pairs}
    trained = {r: {"train_seconds": 100.0 if r.startswith("vm") else 150.0} for r in pairs}
    summary = {r["row"]: r for r in table1.summarise(rows, pairs, trained)}
    for r in summary:
        summary[r]["val_dice"] = 90.0 if r == "vm_l2" else 80.0  # the grid search would pick lambda = 2
    text = "\n".join(table1.orderings_markdown(summary, pairs))
    assert "grid's best VM (vm_l2, chosen by validation Dice" in text
    assert "| reproduced (p = 0.00049) |" in text  # 12 of 12 pairs better
    assert "smoother than that VM" in text and "**not reproduced: reversed** (p = 0.00049)" in text
    assert "3.33x" in text


def test_summarise_reports_percent_dice_and_sample_std():
    rows = {"initial": {"label": "Initial", "kind": "classical"}}
    pairs = {"initial": [{"dice_mean": "0.5", "seconds": "1"}, {"dice_mean": "0.7", "seconds": "3"}]}
    (rec,) = table1.summarise(rows, pairs, {})
    assert rec["dice_mean_mean"] == pytest.approx(60.0) and rec["dice_mean_std"] == pytest.approx(math.sqrt(200.0))
    assert rec["seconds_mean"] == pytest.approx(2.0) and math.isnan(rec["train_seconds"])


@pytest.mark.parametrize("tool,module", [("ANTsSyN", "ants"), ("ElastixBSpline", "itk")])
def test_classical_tools_follow_the_displacement_convention(tool, module):
    pytest.importorskip(module, reason="optional benchmark dependency: pip install -e '.[benchmark]'")
    method = getattr(classical, tool)(spacing=(2.0, 2.75, 3.5), num_threads=1)
    assert min(classical.check_displacement_convention(method, size=(32, 32, 32))) > 0.5


# ---------------------------------------------------------------- multi-seed test (issue 10): resume, seeds, stats
def test_training_decision_reuse_resume_or_clean(tmp_path):
    spec = {"overrides": {"method": "vm"}}
    root = table1.run_dir(tmp_path, "vm_l3", 2)
    assert root == tmp_path / "runs" / "seed2" / "vm_l3"
    assert table1.run_dir(tmp_path, "vm_l3") == tmp_path / "runs" / "vm_l3"  # one seed: today's layout
    cmd = table1.training_command(root, spec, {"seed": 2, "spatial_size": [32, 32, 32]})
    assert cmd[cmd.index("--resume") + 1] == "False" and "[32, 32, 32]" in cmd
    relaunch = table1.training_command(root, spec, {"seed": 2, "spatial_size": [32, 32, 32]}, resume=True)
    assert relaunch[relaunch.index("--resume") + 1] == "True"
    other = table1.training_command(root, spec, {"seed": 3, "spatial_size": [32, 32, 32]})
    (root / "models").mkdir(parents=True)
    assert table1.training_action(root, cmd) == "clean"  # nothing there
    (root / "train_started.json").write_text(json.dumps({"command": cmd[1:]}))
    assert table1.training_action(root, cmd) == "clean"  # started, but no epoch checkpoint to resume from
    (root / "models" / "vm_checkpoint_epoch=3.pt").write_bytes(b"x")
    assert table1.training_action(root, cmd) == "resume"  # interrupted with the same command
    assert table1.training_action(root, other) == "clean"  # other settings
    assert table1.training_action(root, cmd, retrain=True) == "clean"
    (root / "train_done.json").write_text(json.dumps({"command": cmd[1:]}))
    assert table1.training_action(root, cmd) == "reuse"  # finished: never redone
    assert table1.training_action(root, other) == "clean"


def test_trainings_are_float32_and_older_records_count_as_such(tmp_path):
    """Every benchmark training passes --amp False; a command recorded before the option (no --amp) ran in float32
    and is the same command, one with --amp True is not."""
    spec = {"overrides": {"method": "vm"}}
    root = table1.run_dir(tmp_path, "vm_l3", 0)
    cmd = table1.training_command(root, spec, {"seed": 0})
    assert cmd[-2:] == ["--amp", "False"]
    legacy, mixed = cmd[1:-2], cmd[1:-2] + ["--amp", "True"]
    assert table1.same_command(cmd[1:], cmd[1:]) and table1.same_command(legacy, cmd[1:])
    assert not table1.same_command(mixed, cmd[1:]) and not table1.same_command(None, cmd[1:])
    (root / "models").mkdir(parents=True)
    (root / "models" / "vm_checkpoint_epoch=3.pt").write_bytes(b"x")
    (root / "train_started.json").write_text(json.dumps({"command": legacy}))
    assert table1.training_action(root, cmd) == "resume"
    (root / "train_done.json").write_text(json.dumps({"command": legacy}))
    assert table1.training_action(root, cmd) == "reuse"
    for record in ("train_done.json", "train_started.json"):
        (root / record).write_text(json.dumps({"command": mixed}))
    assert table1.training_action(root, cmd) == "clean"


def _run_main(monkeypatch, tmp_path, *extra):
    """``table1.main`` over two grid rows and Initial with the training and scoring replaced by stubs that log."""
    calls = []

    def train_row(row, spec, overrides, out, retrain, threads, *, seed=None):
        calls.append(("train", row))
        return {"row": row, "train_seconds": 1.0, "steps": 2, "peak_rss_mib": 3.0}

    def scored_row(row, spec, overrides, out, spacing, threads, figure_pair, *, seed=None, checkpoint="best"):
        calls.append((checkpoint, row))
        return [{"fixed": "f", "moving": "m", "dice_mean": "0.5"}], {}

    monkeypatch.setattr(table1, "make_dataset", lambda overrides: "dataset.json")
    monkeypatch.setattr(table1, "train_row", train_row)
    monkeypatch.setattr(table1, "scored_row", scored_row)
    monkeypatch.setattr(table1, "write_seed_outputs", lambda *a, **k: calls.append(("report",)))
    monkeypatch.setenv("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    monkeypatch.setattr(sys, "argv", ["table1.py", "--preset", "protocol", "--seeds", "0", "--rows", "initial",
                                      "vm_l1", "vm_l2", "--out", str(tmp_path), "--no_docs",
                                      "--threads", str(torch.get_num_threads()), *extra])
    table1.main()
    return calls


def test_each_learned_row_is_scored_right_after_its_training(monkeypatch, tmp_path):
    calls = _run_main(monkeypatch, tmp_path)
    assert calls == [("train", "vm_l1"), ("best", "vm_l1"), ("final", "vm_l1"),
                     ("train", "vm_l2"), ("best", "vm_l2"), ("final", "vm_l2"), ("best", "initial"), ("report",)]
    with open(tmp_path / "results" / "table1_protocol_seeds.csv") as f:
        assert [r["row"] for r in csv.DictReader(f) if r["seed"] == "0"] == ["initial", "vm_l1", "vm_l2"] * 2


def test_classical_rows_are_scored_for_the_first_seed_only(monkeypatch, tmp_path):
    calls = _run_main(monkeypatch, tmp_path, "--seeds", "0", "1")
    learned = [("train", "vm_l1"), ("best", "vm_l1"), ("final", "vm_l1"), ("train", "vm_l2"), ("best", "vm_l2"),
               ("final", "vm_l2")]
    assert calls == [*learned, ("best", "initial"), *learned, ("report",)]


def test_collect_trains_nothing_and_reports_the_finished_runs(monkeypatch, tmp_path):
    cfg = {**table1.PRESETS["protocol"], "seed": 0, "data_seed": 0}
    overrides = table1.common_overrides(cfg, tmp_path, per_seed=True)
    spec = table1.all_rows([1, 2])["vm_l1"]
    root = table1.run_dir(tmp_path, "vm_l1", 0)
    root.mkdir(parents=True)
    (root / "train_done.json").write_text(json.dumps({"command": table1.training_command(root, spec, overrides)[1:]}))
    calls = _run_main(monkeypatch, tmp_path, "--collect")
    # vm_l1 finished: its record is read (train_row reuses it) and scored; vm_l2 never started: left pending
    assert calls == [("train", "vm_l1"), ("best", "vm_l1"), ("final", "vm_l1"), ("best", "initial"), ("report",)]
    with open(tmp_path / "results" / "table1_protocol_seeds.csv") as f:
        assert {r["row"] for r in csv.DictReader(f)} == {"initial", "vm_l1"}


def test_scores_keep_the_run_key_and_the_checkpoint_file_apart(monkeypatch, tmp_path):
    spec = table1.all_rows([1])["vm_l1"]
    root = table1.run_dir(tmp_path, "vm_l1", 0)
    (root / "models").mkdir(parents=True)
    (root / "models" / "model_final.pt").write_bytes(b"x")
    evaluated = []

    def evaluate_row(row, spec, ov, out, spacing, threads, figure_pair, *, seed=None):
        evaluated.append(row)  # the evaluator's rows name the checkpoint file in a "checkpoint" column
        return [{"fixed": "f", "moving": "m", "checkpoint": "/x/model_final.pt", "checkpoint_epoch": "7",
                 "dice_mean": "0.5"}], {}

    monkeypatch.setattr(table1, "evaluate_row", evaluate_row)
    args = ("vm_l1", spec, {"seed": 0}, tmp_path, [1.0, 1.0, 1.0], 1, -1)
    fresh = table1.scored_row(*args, seed=0, checkpoint="final")[0]
    reused = table1.scored_row(*args, seed=0, checkpoint="final")[0]
    assert evaluated == ["vm_l1"] and fresh == reused
    assert reused[0]["checkpoint_file"] == "/x/model_final.pt" and "checkpoint" not in reused[0]
    with open(root / "scores_final.csv") as f:
        (line,) = csv.DictReader(f)
    assert (line["checkpoint"], line["checkpoint_file"], line["seed"]) == ("final", "/x/model_final.pt", "0")
    rec = table1.RunRecorder(tmp_path / "t_seeds", {"vm_l1": spec}, tmp_path, per_seed=True)
    rec.add(0, "final", "vm_l1", fresh)
    with open(tmp_path / "t_seeds_pairs.csv") as f:
        assert [r["checkpoint"] for r in csv.DictReader(f)] == ["final"]


def test_validation_record_of_the_scored_checkpoint(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("".join(f"x Epoch[{e}] Metrics -- dice_mean: {v} val_mean_dice: {v} \n"
                           for e, v in ((0, 0.7), (12, 0.9), (24, 0.8), (36, 0.85)))
                   + "x Key metric: val_mean_dice best value: 0.9 at epoch: 12\n")
    # the saver's pick from epoch 19 on was epoch 36; Ignite's log line names the best over all epochs
    assert table1.validation_record(log, "best", 36) == (36, 0.85)
    assert table1.validation_record(log, "best") == (None, None)  # the saver's pick is not in the log
    assert table1.validation_record(log, "final") == (36, 0.85)
    assert table1.validation_record(log, "best", 30) == (30, None)
    assert table1.scored_epoch([{"checkpoint_epoch": "36"}, {"checkpoint_epoch": "36"}]) == 36
    assert table1.scored_epoch([{"dice_mean": "0.5"}]) is None
    with pytest.raises(ValueError, match="several epochs"):
        table1.scored_epoch([{"checkpoint_epoch": "36"}, {"checkpoint_epoch": "12"}])


def test_common_overrides_share_one_dataset_across_seeds(tmp_path):
    cfg = {"num_pairs": 4, "num_val": 1, "num_test": 1, "spatial_size": [32, 32, 32], "epochs": 1, "data_seed": 0}
    seeds = [table1.common_overrides({**cfg, "seed": s}, tmp_path, per_seed=True) for s in (0, 1, 2)]
    assert {o["phantom_dir"] for o in seeds} == {str(tmp_path / "phantom")}
    assert [o["phantom#seed"] for o in seeds] == [0, 0, 0] and [o["seed"] for o in seeds] == [0, 1, 2]
    assert "best_checkpoint_from_epoch" not in seeds[0]


def test_protocol_secondary_checkpoint_is_from_the_second_half(tmp_path):
    cfg = {**table1.PRESETS["protocol"], "seed": 0, "data_seed": 0}
    for epochs, first in ((24, 13), (47, 24), (1, 1)):
        assert table1.common_overrides({**cfg, "epochs": epochs}, tmp_path)["best_checkpoint_from_epoch"] == first


def test_pooled_paired_test_matches_seed_and_pair_with_effect_sizes():
    # the same file names in two seeds are two pairs; differences (a - b, points): 1, 2, 3, -0.5, 4, 5
    seed0 = {"a": _pairs([0.81, 0.82, 0.83]), "b": _pairs([0.80, 0.80, 0.80])}
    seed1 = {"a": _pairs([0.795, 0.84, 0.85]), "b": _pairs([0.80, 0.80, 0.80]), "c": _pairs([0.1, 0.1, 0.1])}
    t = table1.pooled_paired_test({0: seed0, 1: seed1}, "a", "b")
    d = np.array([1.0, 2.0, 3.0, -0.5, 4.0, 5.0])
    assert t["n"] == 6 and t["better_pairs"] == 5 and t["n_seeds"] == 2 and t["better_seeds"] == 2
    assert t["mean_diff"] == pytest.approx(d.mean()) and t["cohen_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    # ranks of |d|: 0.5 -> 1, 1 -> 2, ..., 5 -> 6; W- = 1, W+ = 20: (20 - 1) / 21
    assert t["rank_biserial"] == pytest.approx(19 / 21)
    assert t["wilcoxon_p"] == pytest.approx(4 / 64)  # exact, two-sided: W- or W+ in {0, 1}, 2 subsets each
    assert t["seed_mean_diffs"] == {"0": pytest.approx(2.0), "1": pytest.approx(8.5 / 3)}
    assert table1.verdict(t) == "**not distinguishable** (p = 0.062)"  # 6 pairs cannot reach p < 0.05 here
    low = table1.pooled_paired_test({0: seed0}, "a", "b", "dice_mean", lower_is_better=True)
    assert low["better_pairs"] == 0 and table1.pooled_paired_test({0: seed0, 1: seed1}, "a", "c")["n"] == 3


def test_recorder_writes_seed_rows_and_the_pooled_last_checkpoint_first(tmp_path):
    rows = {"initial": {"label": "Initial", "kind": "classical"}}
    rec = table1.RunRecorder(tmp_path / "t_seeds", rows, tmp_path, per_seed=True)
    for seed, v in ((0, 0.5), (1, 0.7)):
        rec.add(seed, "final", "initial", [{"fixed": "f", "moving": "m", "dice_mean": str(v)}])
    with open(tmp_path / "t_seeds_pairs.csv") as f:
        assert [(r["seed"], r["checkpoint"], r["primary"]) for r in csv.DictReader(f)] == [
            ("0", "final", "True"), ("1", "final", "True")]
    with open(tmp_path / "t_seeds.csv") as f:
        summary = list(csv.DictReader(f))
    assert [r["seed"] for r in summary] == ["0", "1", "all"]
    assert float(summary[-1]["dice_mean_mean"]) == pytest.approx(60.0)
    assert float(summary[-1]["dice_mean_seed_std"]) == pytest.approx(math.sqrt(200.0))


def test_recorder_keeps_runs_recorded_by_an_earlier_session(tmp_path):
    rows = table1.all_rows([1.0])
    first = table1.RunRecorder(tmp_path / "t_seeds", rows, tmp_path, per_seed=True)
    trained = {"train_seconds": 120.0, "steps": 30, "peak_rss_mib": 900.0}
    for seed in (0, 1):
        first.add(seed, "final", "vm_l1", _pairs([0.6 + 0.1 * seed, 0.7]), trained)
    # the validation Dice comes from the run's train.log, which a later session no longer has
    log = tmp_path / "runs" / "seed0" / "vm_l1" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_text("x Epoch[4] Metrics -- val_mean_dice: 0.8 \n")
    first.write()
    log.unlink()
    written = {name: (tmp_path / name).read_text() for name in ("t_seeds.csv", "t_seeds_pairs.csv")}

    later = table1.RunRecorder(tmp_path / "t_seeds", rows, tmp_path, per_seed=True)
    assert later.load() == 2 and later.seeds() == [0, 1]
    later.write()  # nothing scored again: the record is rewritten as it was
    assert {name: (tmp_path / name).read_text() for name in written} == written
    later.add(0, "final", "as_atc", _pairs([0.9, 0.9]), {**trained, "train_seconds": 60.0})
    summary = later.summary()
    seed0 = {r["row"]: r for r in summary if r["seed"] == 0}
    assert seed0["vm_l1"]["val_dice"] == pytest.approx(80.0) and seed0["vm_l1"]["train_seconds"] == 120.0
    assert seed0["as_atc"]["dice_mean_mean"] == pytest.approx(90.0)
    pooled = {r["row"]: r for r in summary if r["seed"] == "all"}
    assert pooled["vm_l1"]["n_seeds"] == 2 and pooled["vm_l1"]["dice_mean_mean"] == pytest.approx(67.5)
    assert pooled["vm_l1"]["train_seconds"] == pytest.approx(120.0) and pooled["as_atc"]["n_seeds"] == 1
    # scoring a recorded run again replaces it
    later.add(1, "final", "vm_l1", _pairs([0.5, 0.5]), trained)
    assert {r["row"]: r for r in later.summary() if r["seed"] == 1}["vm_l1"]["dice_mean_mean"] == pytest.approx(50.0)
    (tmp_path / "t_seeds.csv").write_text("seed,checkpoint,row\n")
    with pytest.raises(ValueError, match="no summary line"):
        table1.RunRecorder(tmp_path / "t_seeds", rows, tmp_path, per_seed=True).load()


def test_paper_side_by_side_keeps_printed_entries_and_averages_our_kidneys(tmp_path):
    paper_table = _load("paper_table")
    paper = tmp_path / "paper.csv"
    paper.write_text("method,dice_liver_mean,dice_liver_std,dice_kidney_mean,dice_kidney_std,"
                     "nonpositive_jacobian_percent,jacobian_std\n"
                     "VM (AS+ATC),87.01,3.22,84.47,2.86,<0.0005,0.13\nDeeds,82.16,3.15,83.82,3.02,0.01,0.28\n")
    ours = tmp_path / "ours.csv"
    ours.write_text("seed,checkpoint,row,n_seeds,label,dice_liver_mean,dice_liver_std,dice_right_kidney_mean,"
                    "dice_right_kidney_std,dice_left_kidney_mean,dice_left_kidney_std,folding_percent_mean\n"
                    "all,best,as_atc,3,AS+ATC,1,1,1,1,1,1,1\n"
                    "0,final,as_atc,1,AS+ATC,2,2,2,2,2,2,2\n"
                    "all,final,as_atc,3,AS+ATC,90,3,80,2,90,4,0\n"
                    "all,final,elastix,1,elastix,90,3,80,2,90,4,0\n")
    text = paper_table.side_by_side_markdown(ours, paper)
    lines = text.splitlines()
    assert len(lines) == 3 and "Deeds" not in text and "elastix" not in text
    assert lines[2].startswith("| VM (AS+ATC) / AS+ATC (3 seeds) | 87.01 ± 3.22 / 90.00 ± 3.00 |")  # pooled, last
    assert "84.47 ± 2.86 / 85.00 ± 3.00" in lines[2]  # kidney: mean of right and left
    assert "<0.0005 / 0.000" in lines[2]  # as printed
    shipped = Path(__file__).resolve().parents[2] / "docs" / "results" / "paper_table1.csv"
    assert "VM (AS+ATC)" in shipped.read_text()
