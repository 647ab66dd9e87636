"""FailureReportHandler: one CSV row per failed pair, written atomically at COMPLETED, even when empty."""

from __future__ import annotations

import csv
import logging
import os

import pytest
from ignite.engine import Engine

from mtreg_monai.data import failure_marker
from mtreg_monai.handlers import FAILURE_COLUMNS, FailureReportHandler, record_failure


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_per_failure(tmp_path, caplog):
    outputs = {
        1: {"ddf": 0},
        2: {"failed": [failure_marker({"fixed_image": "f2", "moving_image": "m2"}, "ValueError: 'm2' is 2-D")]},
        3: {"failed": [failure_marker({"fixed_image": "f3", "moving_image": "m3"}, "EOFError: 'm3', truncated")]},
    }

    def step(engine, batch):
        if batch == 4:  # another handler records a write failure
            record_failure(engine, "f4", "m4", "write", "OSError: disk full")
        return outputs.get(batch, {})

    engine = Engine(step)
    handler = FailureReportHandler(tmp_path / "out")
    handler.attach(engine)
    handler.attach(engine)  # attaching twice registers once
    with caplog.at_level(logging.WARNING):
        engine.run([1, 2, 3, 4], max_epochs=1)
    rows = _read(handler.path)
    assert [r["moving_image"] for r in rows] == ["m2", "m3", "m4"]
    assert [r["stage"] for r in rows] == ["load", "load", "write"]
    assert rows[0] == {"fixed_image": "f2", "moving_image": "m2", "stage": "load", "reason": "ValueError: 'm2' is 2-D"}
    assert list(rows[0]) == list(FAILURE_COLUMNS)
    assert sum("pair failed" in r.message for r in caplog.records) == 3
    assert os.listdir(tmp_path / "out") == ["failures.csv"]  # no hidden .failures.csv.<hex>.tmp left
    # a second run starts a fresh list and overwrites the report
    engine.run([1], max_epochs=1)
    assert _read(handler.path) == [] and engine.state.failures == []


def test_written_when_empty(tmp_path):
    engine = Engine(lambda e, b: {})
    FailureReportHandler(str(tmp_path), filename="bad.csv").attach(engine)
    engine.run([0, 1], max_epochs=1)
    assert (tmp_path / "bad.csv").read_text().splitlines() == [",".join(FAILURE_COLUMNS)]


def test_reason_with_commas_and_quotes_round_trips(tmp_path):
    reason = 'ValueError: \'x, "y".nii.gz\' has shape (1, 2, 3)'
    engine = Engine(lambda e, b: {"failed": [failure_marker({"fixed_image": "a,b", "moving_image": "c"}, reason)]})
    handler = FailureReportHandler(tmp_path)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    (row,) = _read(handler.path)
    assert row["reason"] == reason and row["fixed_image"] == "a,b"


def test_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
    """A write that fails (here at the rename) keeps the previous report and leaves no temporary file."""
    engine = Engine(lambda e, b: {"failed": [failure_marker({"fixed_image": "f", "moving_image": "m"}, "EOFError")]})
    handler = FailureReportHandler(tmp_path)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    before = (tmp_path / "failures.csv").read_text()

    def no_rename(src, dst):
        assert os.path.basename(src).startswith(".failures.csv.") and src.endswith(".tmp")  # the real temporary
        raise OSError("rename refused")

    monkeypatch.setattr(os, "replace", no_rename)
    engine.state.failures = []
    with pytest.raises(OSError, match="rename refused"):
        handler.completed(engine)  # would write a header-only report
    assert (tmp_path / "failures.csv").read_text() == before
    assert os.listdir(tmp_path) == ["failures.csv"]


@pytest.mark.parametrize("filename", ["", "a/b.csv", None])
def test_ill_opts(tmp_path, filename):
    with pytest.raises(ValueError, match="filename"):
        FailureReportHandler(tmp_path, filename=filename)
