"""The benchmark's own logic that needs no optional tool: the classical-row wrappers' contract, the docs section
writer and the orderings it reports (benchmarks/classical.py and benchmarks/table1.py)."""

from __future__ import annotations

import importlib.util
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
