"""The benchmark's own logic that needs no optional tool: the classical-row wrappers' contract, the docs section
writer and the orderings it reports (benchmarks/classical.py and benchmarks/table1.py)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

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


class _Shift(classical.ClassicalRegistration):
    """A fake tool that returns a constant field in mm along one axis (tests the base class and the check)."""

    def __init__(self, mm, axis=0, spacing=2.0):
        super().__init__(spacing=spacing)
        self.mm, self.axis = mm, axis

    def register(self, moving, fixed):
        field = torch.zeros(*moving.shape, 3)
        field[..., self.axis] = self.mm
        return self._mm_to_voxels(field.numpy())


def test_base_class_converts_mm_to_voxels_and_check_catches_wrong_conventions():
    assert classical.check_displacement_convention(_Shift(4.0, spacing=2.0), size=(16, 16, 16)) == pytest.approx(2.0)
    for wrong in (_Shift(-4.0), _Shift(4.0, axis=1), _Shift(4.0 * 2.0, spacing=1.0)):  # sign, axis, unit
        with pytest.raises(RuntimeError, match="axis order, sign and units"):
            classical.check_displacement_convention(wrong, size=(16, 16, 16))
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


def _row(dice, std_j=0.1, seconds=60.0):
    return {"dice_mean_mean": dice, "jacobian_std_mean": std_j, "train_seconds": seconds, "label": f"row{dice}"}


def test_orderings_report_reproduced_and_not_reproduced():
    by = {f"vm_l{i}": _row(80.0 + i, 0.2, 100.0) for i in range(1, 6)}
    by["as_atc"] = _row(84.0, 0.1, 150.0)  # below the best VM (85), smoother, 500 s / 150 s = 3.33x
    text = "\n".join(table1.orderings_markdown(by, []))
    assert "best fixed-lambda VM of the grid (row85.0) | **not reproduced** | 84.00 vs 85.00" in text
    assert "smoother than that VM" in text and "| reproduced | 0.100 vs 0.200" in text
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
    method = getattr(classical, tool)(spacing=2.75, num_threads=1)
    assert classical.check_displacement_convention(method, size=(32, 32, 32)) > 0.5
