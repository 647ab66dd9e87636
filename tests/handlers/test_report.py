"""RegistrationReportHandler on tiny engines with known per-pair rows: the CSV, the mean ± std strings, errors."""

from __future__ import annotations

import csv
import logging
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor

from mtreg_monai.engines import RegistrationEvaluator
from mtreg_monai.handlers import (
    RegistrationMetricsHandler,
    RegistrationReportHandler,
    format_mean_std,
    summarise_columns,
)

COLUMNS = ["dice_liver", "dice_mean", "asd_liver", "asd_mean", "folding_percent", "jacobian_std"]
NAN, INF = float("nan"), float("inf")
# three pairs; the liver is absent from pair 2 (NaN Dice and ASD)
ROWS = [
    [0.8, 0.8, 2.0, 2.0, 0.0, 0.1],
    [0.9, 0.9, 4.0, 4.0, 1.0, 0.3],
    [NAN, NAN, NAN, NAN, 2.0, 0.2],
]
SECONDS = [0.5, 1.5, 1.0]
# sample std (n - 1): Dice (80, 90) % -> 85 ± 7.07; ASD (2, 4) -> 3 ± 1.41; folding (0, 1, 2) -> 1 ± 1; ...
EXPECTED = {
    "Dice liver (%)": ("85.00 ± 7.07", 2, 1),
    "Dice mean (%)": ("85.00 ± 7.07", 2, 1),
    "ASD liver (mm)": ("3.00 ± 1.41", 2, 1),
    "ASD mean (mm)": ("3.00 ± 1.41", 2, 1),
    "% \\|J\\| <= 0": ("1.000 ± 1.000", 3, 0),
    "std \\|J\\|": ("0.200 ± 0.100", 3, 0),
    "time (s)": ("1.000 ± 0.500", 3, 0),
}


def _image(names: list[str]) -> MetaTensor:
    return MetaTensor(torch.zeros(len(names), 1, 2, 2, 2), meta={"filename_or_obj": names})


class ZeroField(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 3, *x.shape[2:])


def _engine(rows: list[list[float]], name: str = "val_mean_dice") -> Engine:
    """An engine whose step returns the batch's seconds and which leaves ``rows`` in ``metric_details[name]``."""
    engine = Engine(lambda e, batch: {"seconds": batch["seconds"]})

    @engine.on(Events.EPOCH_COMPLETED)
    def _metric(e):
        e.state.metric_details = {name: torch.tensor(rows)}

    return engine


def _pairs(n: int) -> list[dict]:
    return [
        {
            "fixed_image": _image([f"/data/imagesTr/case_{i}_0000.nii.gz"]),
            "moving_image": _image([f"/data/imagesTr/case_{i}_0001.nii.gz"]),
            "seconds": SECONDS[i],
        }
        for i in range(n)
    ]


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_and_summary(tmp_path, caplog):
    engine = _engine(ROWS)
    info = {"checkpoint": "m/model.pt", "section": "test"}
    handler = RegistrationReportHandler(tmp_path / "eval", columns=COLUMNS, info=info)
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="mtreg_monai.handlers.report"):
        engine.run(_pairs(3))
    rows = _read_csv(tmp_path / "eval" / "metrics.csv")
    assert list(rows[0]) == ["fixed", "moving", *COLUMNS, "seconds"]
    names = [(f"case_{i}_0000.nii.gz", f"case_{i}_0001.nii.gz") for i in range(3)]
    assert [(r["fixed"], r["moving"]) for r in rows] == names
    for row, want, sec in zip(rows, ROWS, SECONDS):
        got = [float(row[c]) for c in COLUMNS]
        np.testing.assert_allclose(got, want, rtol=1e-6)  # NaN == NaN here
        assert float(row["seconds"]) == pytest.approx(sec)
    summary = (tmp_path / "eval" / "summary.md").read_text()
    for label, (text, used, nan) in EXPECTED.items():
        assert f"| {label} | {text} | {used} | {nan} | 0 |" in summary
    assert "| " + " | ".join(v[0] for v in EXPECTED.values()) + " |" in summary  # the one-row Table-1 table
    assert "| pairs | 3 |" in summary and "| checkpoint | `m/model.pt` |" in summary
    assert "| section | `test` |" in summary
    assert "Evaluation summary" in caplog.text and "85.00 ± 7.07" in caplog.text
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.csv", "summary.md"]  # no temp files


def test_batches_of_two_and_rerun(tmp_path):
    """Two pairs per batch: names per item, the batch time split between them; a second run rewrites the files."""
    batches = [
        {"fixed_image": _image(["f0.nii", "f1.nii"]), "moving_image": _image(["m0.nii", "m1.nii"]), "seconds": 2.0},
        {"fixed_image": _image(["f2.nii", "f3.nii"]), "moving_image": _image(["m2.nii", "m3.nii"]), "seconds": 4.0},
    ]
    engine = _engine([[0.5]] * 4)
    RegistrationReportHandler(str(tmp_path), columns=["dice_mean"]).attach(engine)
    engine.run(batches)
    engine.run(batches, max_epochs=1)
    rows = _read_csv(tmp_path / "metrics.csv")
    assert [r["fixed"] for r in rows] == ["f0.nii", "f1.nii", "f2.nii", "f3.nii"]
    assert [float(r["seconds"]) for r in rows] == [1.0, 1.0, 2.0, 2.0]
    assert "| Dice mean (%) | 50.00 ± 0.00 | 4 | 0 | 0 |" in (tmp_path / "summary.md").read_text()


def test_with_registration_evaluator(tmp_path):
    """Column names found on the attached RegistrationMetricsHandler; plain tensors (no metadata) -> pair_<n>."""
    fixed = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    fixed[..., 4:10, 4:10, 4:10] = 1
    pair = {"fixed_image": fixed.float(), "moving_image": fixed.float(), "fixed_label": fixed, "moving_label": fixed}
    evaluator = RegistrationEvaluator(
        "cpu",
        [pair, pair],
        ZeroField(),
        key_val_metric={"val_mean_dice": RegistrationMetricsHandler(label_names={1: "liver"})},
        val_handlers=[RegistrationReportHandler(tmp_path, metric_name="val_mean_dice")],
    )
    evaluator.run()
    rows = _read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["fixed", "moving", *COLUMNS, "seconds"]
    assert [r["fixed"] for r in rows] == ["pair_0", "pair_1"]
    for r in rows:
        assert float(r["dice_liver"]) == 1.0 and float(r["asd_liver"]) == 0.0 and float(r["seconds"]) > 0
    assert "| Dice liver (%) | 100.00 ± 0.00 | 2 | 0 | 0 |" in (tmp_path / "summary.md").read_text()


def test_column_names_from_state(tmp_path):
    """Without ``columns``, the names come from ``engine.state.metric_columns[metric_name]`` (where
    RegistrationMetricsHandler puts them), not from the handlers attached to the engine."""
    engine = _engine(ROWS)

    @engine.on(Events.EPOCH_COMPLETED)
    def _columns(e):
        e.state.metric_columns = {"val_mean_dice": COLUMNS}

    RegistrationReportHandler(tmp_path).attach(engine)
    engine.run(_pairs(3))
    assert list(_read_csv(tmp_path / "metrics.csv")[0]) == ["fixed", "moving", *COLUMNS, "seconds"]


def test_info_columns_on_every_row(tmp_path):
    """``info_columns`` copies info items, read when the run completes, into every row of metrics.csv."""
    engine = _engine(ROWS)
    report = RegistrationReportHandler(
        tmp_path, columns=COLUMNS, info={"checkpoint": "m/model.pt"}, info_columns=["checkpoint", "epoch"]
    )
    report.attach(engine)
    report.info["epoch"] = 7  # as a checkpoint loader's ``record`` (the evaluate config's) fills it in at STARTED
    engine.run(_pairs(3))
    rows = _read_csv(tmp_path / "metrics.csv")
    assert list(rows[0])[:4] == ["fixed", "moving", "checkpoint", "epoch"]
    assert [(r["checkpoint"], r["epoch"]) for r in rows] == [("m/model.pt", "7")] * 3
    with pytest.raises(TypeError, match="info_columns"):
        RegistrationReportHandler(tmp_path, info_columns="checkpoint")


def test_summarise_columns_counts_inf_and_single_value():
    stats = summarise_columns(np.array([[0.0, 1.0], [INF, NAN]]), ["asd_liver", "jacobian_std"])
    assert (stats[0]["text"], stats[0]["n"], stats[0]["inf"], stats[0]["nan"]) == ("0.00 ± –", 1, 1, 0)
    assert (stats[1]["text"], stats[1]["n"], stats[1]["nan"]) == ("1.000 ± –", 1, 1)
    assert format_mean_std(NAN, NAN, 2) == "n/a"
    assert math.isnan(summarise_columns(np.full((2, 1), NAN), ["dice_mean"])[0]["mean"])
    with pytest.raises(ValueError, match="shape"):
        summarise_columns(np.zeros((2, 3)), ["a", "b"])


def test_ill_opts(tmp_path):
    with pytest.raises(ValueError, match="image_keys"):
        RegistrationReportHandler(tmp_path, image_keys="fixed_image")
    with pytest.raises(ValueError, match="csv_name"):
        RegistrationReportHandler(tmp_path, csv_name="sub/metrics.csv")
    with pytest.raises(ValueError, match="metric_name"):
        RegistrationReportHandler(tmp_path, metric_name="")
    with pytest.raises(TypeError, match="info"):
        RegistrationReportHandler(tmp_path, info=["checkpoint"])


def test_missing_or_mismatched_metric(tmp_path):
    engine = _engine(ROWS[:2], name="other")
    RegistrationReportHandler(tmp_path, columns=COLUMNS).attach(engine)
    with pytest.raises(ValueError, match="val_mean_dice"):
        engine.run(_pairs(2))
    engine = _engine(ROWS[:2])
    RegistrationReportHandler(tmp_path, columns=COLUMNS[:3]).attach(engine)
    with pytest.raises(ValueError, match="3 names"):
        engine.run(_pairs(2))
    assert not (tmp_path / "metrics.csv").exists()
