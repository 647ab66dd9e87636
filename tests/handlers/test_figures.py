"""Figures are written atomically: a complete PNG under the final name, no temporary file, the figure closed."""

from __future__ import annotations

import os

import pytest

from mtreg_monai.handlers import save_pair_figure, save_weight_curves

plt = pytest.importorskip("matplotlib.pyplot", reason="matplotlib is an optional dependency (the bundle extra)")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["weights.png", "weights"])  # without an extension: PNG all the same
def test_weight_curves_png(tmp_path, name):
    path = tmp_path / "figs" / name
    save_weight_curves({"lambda_phi": [1.0, 2.0, 3.0], "lambda_c": []}, [1, 2, 3], str(path))
    assert path.read_bytes().startswith(PNG)
    assert os.listdir(path.parent) == [name] and plt.get_fignums() == []


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    """A figure that cannot be drawn (here: savefig raises) leaves neither a file nor an open figure."""

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer failed")

    monkeypatch.setattr(plt.Figure, "savefig", broken)
    with pytest.raises(RuntimeError, match="renderer failed"):
        save_pair_figure({"fixed": [[0.0, 1.0], [1.0, 0.0]]}, str(tmp_path / "pair.png"))
    assert os.listdir(tmp_path) == [] and plt.get_fignums() == []
