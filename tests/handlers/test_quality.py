"""QualityControlHandler: one CSV row per pair with known Jacobian and uncertainty figures."""

from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from mtreg_monai.handlers import QC_COLUMNS, QC_MC_COLUMNS, QualityControlHandler, uncertain_fraction

SHAPE = (8, 8, 8)


def _image(names: list[str]) -> MetaTensor:
    return MetaTensor(torch.zeros(len(names), 1, *SHAPE), meta={"filename_or_obj": names})


def _fold() -> torch.Tensor:
    """ddf_0(x) = -2 x_0: d(x + ddf)_0 / dx_0 = -1, so the determinant is -1 everywhere (100 % folding, std 0)."""
    ddf = torch.zeros(3, *SHAPE)
    ddf[0] = -2.0 * torch.arange(SHAPE[0], dtype=torch.float32)[:, None, None]
    return ddf


def _u_phi() -> torch.Tensor:
    """0.3 on a quarter of the elements, 0.05 elsewhere: median 0.05, fraction above 0.1 = 0.25."""
    u = torch.full((3, *SHAPE), 0.05)
    u[:, :2] = 0.3
    return u


def _run(tmp_path, batches: list[dict], **kwargs) -> tuple[QualityControlHandler, Engine, list[dict]]:
    def step(engine, batch):
        return dict(batch)

    engine = Engine(step)
    handler = QualityControlHandler(tmp_path, **kwargs)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    with open(handler.path, newline="") as f:
        rows = list(csv.DictReader(f))
    return handler, engine, rows


def test_known_values_with_uncertainty(tmp_path):
    batch = {
        "fixed_image": _image(["f0.nii.gz", "f1.nii.gz"]),
        "moving_image": _image(["m0.nii.gz", "m1.nii.gz"]),
        "ddf": torch.stack([torch.zeros(3, *SHAPE), _fold()]),
        "u_phi": torch.stack([torch.zeros(3, *SHAPE), _u_phi()]),
        "seconds": 0.5,
    }
    handler, engine, rows = _run(tmp_path, [batch], tau=0.1)
    assert handler.path == str(tmp_path / "quality_control.csv")
    assert list(rows[0]) == list(QC_COLUMNS)
    assert [(r["fixed_image"], r["moving_image"]) for r in rows] == [
        ("f0.nii.gz", "m0.nii.gz"),
        ("f1.nii.gz", "m1.nii.gz"),
    ]
    zero, fold = engine.state.quality_control
    assert zero["folding_percent"] == 0.0 and zero["jacobian_std"] == 0.0
    assert zero["median_u_phi"] == 0.0 and zero["uncertain_fraction_phi"] == 0.0
    assert fold["folding_percent"] == 100.0 and fold["jacobian_std"] == pytest.approx(0.0, abs=1e-6)
    assert fold["median_u_phi"] == pytest.approx(0.05) and fold["uncertain_fraction_phi"] == pytest.approx(0.25)
    # the same definition as the training-time weight: AdaptiveWeightHandler's fraction of u_phi above tau1
    assert fold["uncertain_fraction_phi"] == pytest.approx(uncertain_fraction(_u_phi()[None], 0.1).item())
    assert zero["seconds"] == fold["seconds"] == 0.25  # the batch's 0.5 s shared by its 2 pairs
    assert fold["total_seconds"] >= 0
    assert float(rows[1]["folding_percent"]) == 100.0 and float(rows[1]["uncertain_fraction_phi"]) == 0.25


def test_without_uncertainty(tmp_path):
    batches = [
        {
            "fixed_image": _image([f"f{i}.nii.gz"]),
            "moving_image": _image([f"m{i}.nii.gz"]),
            "ddf": torch.zeros(1, 3, *SHAPE),
            "seconds": 0.1,
        }
        for i in range(3)
    ]
    batches.insert(1, {"failed": [{"fixed_image": "bad.nii.gz", "moving_image": "m.nii.gz"}]})  # no row
    _, _, rows = _run(tmp_path, batches)
    assert [r["moving_image"] for r in rows] == ["m0.nii.gz", "m1.nii.gz", "m2.nii.gz"]
    for row in rows:
        assert all(row[c] == "" for c in QC_MC_COLUMNS)
        assert float(row["folding_percent"]) == 0.0 and float(row["jacobian_std"]) == 0.0
        assert float(row["seconds"]) == pytest.approx(0.1)


def test_non_finite_and_header_only(tmp_path):
    ddf = torch.zeros(1, 3, *SHAPE)
    ddf[0, 0, 1, 1, 1] = float("nan")
    _, _, rows = _run(tmp_path, [{"ddf": ddf}])  # no file names, no seconds: empty columns
    assert rows[0]["folding_percent"] == "nan" and rows[0]["fixed_image"] == "" and rows[0]["seconds"] == ""
    _, _, rows = _run(tmp_path / "empty", [{"failed": [{"stage": "load"}]}])
    assert rows == [] and (tmp_path / "empty" / "quality_control.csv").read_text().strip() == ",".join(QC_COLUMNS)


def test_ill_opts(tmp_path):
    with pytest.raises(ValueError, match="tau"):
        QualityControlHandler(tmp_path, tau=-0.1)
    with pytest.raises(ValueError, match="tau"):
        QualityControlHandler(tmp_path, tau=True)
    with pytest.raises(ValueError, match="filename"):
        QualityControlHandler(tmp_path, filename="sub/qc.csv")
