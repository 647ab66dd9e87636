"""atomic_path / atomic_write: the destination holds the old or the whole new content, no temporary file is left."""

from __future__ import annotations

import os
import re

import pytest

from mtreg_monai.utils import atomic_path, atomic_write, write_text_atomic

TMP_NAME = re.compile(r"^\.report\.csv\.[0-9a-f]{32}\.tmp$")


def test_write_and_replace(tmp_path):
    path = tmp_path / "sub" / "report.csv"  # the missing folder is created
    write_text_atomic(path, "a,b\n")
    write_text_atomic(path, "c,d\n")
    assert path.read_text() == "c,d\n"
    assert os.listdir(path.parent) == ["report.csv"]


def test_temporary_name_and_failed_write(tmp_path):
    path = tmp_path / "report.csv"
    write_text_atomic(path, "old\n")
    seen = []

    def write(f):
        seen.append(os.path.basename(f.name))
        f.write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write)
    assert TMP_NAME.match(seen[0]), seen  # the hidden temporary file beside the destination ...
    assert path.read_text() == "old\n"  # ... is removed, and the old content kept
    assert os.listdir(tmp_path) == ["report.csv"]


def test_atomic_path_keeps_the_suffix(tmp_path):
    path = tmp_path / "ddf.nii.gz"
    with atomic_path(path, suffix=".nii.gz") as tmp:
        assert re.match(r"^\.ddf\.nii\.gz\.[0-9a-f]{32}\.tmp\.nii\.gz$", os.path.basename(tmp))
        assert os.path.dirname(tmp) == str(tmp_path) and os.path.isfile(tmp)  # reserved (created empty)
        with open(tmp, "wb") as f:  # a writer that wants a file name, e.g. SimpleITK
            f.write(b"image")
        assert not path.exists()
    assert path.read_bytes() == b"image" and os.listdir(tmp_path) == ["ddf.nii.gz"]


def test_binary(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(path, lambda f: f.write(b"\x00\x01"), binary=True)
    assert path.read_bytes() == b"\x00\x01"


def test_fast_mixed_precision_by_device(monkeypatch):
    """amp is on for CUDA and for a CPU with AMX tiles, off for any other CPU or device."""
    import torch

    from mtreg_monai.utils import fast_mixed_precision

    assert fast_mixed_precision("cuda") is True
    assert fast_mixed_precision(torch.device("cuda:1")) is True
    assert fast_mixed_precision("meta") is False
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast_mixed_precision("cpu") is True
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert fast_mixed_precision(torch.device("cpu")) is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)  # a build without the query
    assert fast_mixed_precision("cpu") is False
    with pytest.raises(RuntimeError):
        fast_mixed_precision("not-a-device")
